import assert from 'node:assert/strict';
import {
  chmod,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ContainerdConfigError,
  planContainerdConfig,
  pluginBlock,
  type ConfigPlan,
} from '../../cli/setup/containerd-config.js';
import { tomlString } from '../../cli/setup/toml-edit.js';
import { scanToml, TomlScanError } from '../../cli/setup/toml-scan.js';
import { DEV_BIN, runToEnd } from '../cli/lcfs-process.js';
import { Containerd } from './helpers/containerd.js';

const SOCK = '/run/lcfs/snapshotter.sock';

/** The address and type `[proxy_plugins.lcfs]` ends up with, read back by the scanner. */
function declared(text: string): { address?: string; type?: string } {
  const { assignments } = scanToml(text);
  const get = (key: string): string | undefined =>
    assignments.find(
      (a) =>
        a.path.length === 3 &&
        a.path[0] === 'proxy_plugins' &&
        a.path[1] === 'lcfs' &&
        a.path[2] === key,
    )?.value;
  return { address: get('address'), type: get('type') };
}

function plan(existing: string | null, socket = SOCK, force = false): ConfigPlan {
  return planContainerdConfig(existing, { socket, force, file: 'config.toml' });
}

function planError(existing: string, socket = SOCK): ContainerdConfigError {
  try {
    plan(existing, socket);
  } catch (err) {
    assert.ok(err instanceof ContainerdConfigError, `not a ContainerdConfigError: ${String(err)}`);
    return err;
  }
  assert.fail('expected the plan to be refused');
}

const V2 = `version = 2
root = "/var/lib/containerd"
state = "/run/containerd"

# The CRI plugin, as Debian ships it.
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.6"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
`;

const V1 = `root = "/var/lib/containerd"
state = "/run/containerd"
oom_score = 0

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins.cri]
  stream_server_address = "127.0.0.1"
`;

describe('lcfs setup containerd', () => {
  describe('planning the edit (pure)', () => {
    it('creates a version 2 file that declares the plugin', () => {
      const p = plan(null);
      assert.equal(p.action, 'create');
      assert.equal(p.version, 2);
      assert.match(p.text, /^version = 2$/m);
      assert.deepEqual(declared(p.text), { address: SOCK, type: 'snapshot' });
      assert.equal(plan(p.text).action, 'unchanged');
    });

    it('appends the block to a version 2 file, keeping every byte of it, and is idempotent', () => {
      const p = plan(V2);
      assert.equal(p.action, 'append');
      assert.equal(p.version, 2);
      assert.ok(p.text.startsWith(V2), 'the original text is kept as it was');
      assert.equal(p.text.slice(V2.length), '\n' + pluginBlock(SOCK));
      assert.deepEqual(declared(p.text), { address: SOCK, type: 'snapshot' });
      const again = plan(p.text);
      assert.equal(again.action, 'unchanged');
      assert.equal(again.text, p.text);
    });

    it('handles a version 1 file (no version key) alike', () => {
      const p = plan(V1);
      assert.equal(p.action, 'append');
      assert.equal(p.version, 1);
      assert.ok(p.text.startsWith(V1));
      assert.deepEqual(declared(p.text), { address: SOCK, type: 'snapshot' });
      assert.equal(plan(p.text).action, 'unchanged');
    });

    it('adds lcfs next to other proxy plugins', () => {
      const text = `version = 2\n[proxy_plugins]\n  [proxy_plugins.stargz]\n    type = "snapshot"\n    address = "/run/stargz.sock"\n`;
      const p = plan(text);
      assert.equal(p.action, 'append');
      const { assignments } = scanToml(p.text);
      assert.equal(
        assignments.find((a) => a.path.join('.') === 'proxy_plugins.stargz.address')?.value,
        '/run/stargz.sock',
      );
      assert.deepEqual(declared(p.text), { address: SOCK, type: 'snapshot' });
    });

    it('sees the plugin however the file spells it, and then changes nothing', () => {
      const spellings = [
        `[proxy_plugins."lcfs"]\ntype = 'snapshot'\naddress = "${SOCK}"\n`,
        `[ proxy_plugins . lcfs ]  # ours\n  address = "unix://${SOCK}" # same socket\n  type = "snapshot"\n`,
        `[proxy_plugins]\nlcfs.type = "snapshot"\nlcfs.address = "${SOCK}"\n`,
        `proxy_plugins.lcfs.type = "snapshot"\nproxy_plugins.lcfs.address = "${SOCK}"\n`,
        `version = 2\nproxy_plugins = { lcfs = { type = "snapshot", address = "${SOCK}" } }\n`,
        `[proxy_plugins]\nlcfs = { type = "snapshot", address = "${SOCK}" }\n`,
      ];
      for (const text of spellings) {
        const p = plan(text);
        assert.equal(p.action, 'unchanged', text);
        assert.equal(p.text, text);
      }
    });

    it('is not fooled by the block in comments and multi-line strings', () => {
      const text =
        `version = 2\n` +
        `# [proxy_plugins.lcfs]\n# address = "/old"\n` +
        `[plugins.x]\n  doc = """\n[proxy_plugins.lcfs]\naddress = "/in/a/string"\n"""\n` +
        `  lit = '''\n[proxy_plugins.lcfs]\n'''\n` +
        `  arr = [\n    "[proxy_plugins.lcfs]", # a comment ]\n    { a = 1 },\n  ]\n` +
        `  q = "a \\" [proxy_plugins.lcfs] \\\\"\n`;
      const p = plan(text);
      assert.equal(p.action, 'append');
      assert.deepEqual(declared(p.text), { address: SOCK, type: 'snapshot' });
    });

    it('refuses another address or type, naming the file, the value and its line', () => {
      const text = `version = 2\n\n[proxy_plugins.lcfs]\n  type = "snapshot"\n  address = "/var/run/other.sock"\n`;
      const err = planError(text);
      assert.equal(err.code, 'LCFS_ECONTAINERD_CONFLICT');
      assert.match(err.message, /config\.toml already declares \[proxy_plugins\.lcfs\]/);
      assert.match(err.message, /address "\/var\/run\/other\.sock" \(line 5\)/);
      assert.match(err.message, new RegExp(`address ${SOCK}`));
      assert.match(err.message, /--force/);
      assert.match(err.message, /not changed/);

      const typed = planError(`[proxy_plugins.lcfs]\ntype = "content"\naddress = "${SOCK}"\n`);
      assert.equal(typed.code, 'LCFS_ECONTAINERD_CONFLICT');
      assert.match(typed.message, /type "content" \(line 2\)/);
      const inline = planError(
        `proxy_plugins = { lcfs = { type = "snapshot", address = "/x" } }\n`,
      );
      assert.equal(inline.code, 'LCFS_ECONTAINERD_CONFLICT');
      assert.match(inline.message, /address "\/x" \(line 1\)/);
    });

    it('with --force, replaces only the conflicting values, in place', () => {
      const text = `version = 2\n[proxy_plugins.lcfs]\n  type = "snapshot"   # keep me\n  address = '/old.sock'  # and me\n  platform = "linux/amd64"\n`;
      const p = plan(text, SOCK, true);
      assert.equal(p.action, 'update');
      assert.equal(p.text, text.replace(`'/old.sock'`, `"${SOCK}"`));
      assert.match(
        p.changes.join('\n'),
        /replaced address '\/old\.sock' with \/run\/lcfs\/snapshotter\.sock/,
      );
      const inline = `proxy_plugins = { lcfs = { type = "x", address = "/x" } } # end\n`;
      const q = plan(inline, SOCK, true);
      assert.equal(
        q.text,
        `proxy_plugins = { lcfs = { type = "snapshot", address = "${SOCK}" } } # end\n`,
      );
    });

    it('completes a [proxy_plugins.lcfs] table that lacks keys', () => {
      const p = plan(`[proxy_plugins.lcfs]\n  platform = "linux/amd64"\n`);
      assert.equal(p.action, 'update');
      assert.equal(
        p.text,
        `[proxy_plugins.lcfs]\n  type = "snapshot"\n  address = "${SOCK}"\n  platform = "linux/amd64"\n`,
      );
      // A header on the file's last line, with no newline after it.
      const q = plan(`version = 2\n[proxy_plugins.lcfs]`);
      assert.deepEqual(declared(q.text), { address: SOCK, type: 'snapshot' });
      assert.equal(plan(q.text).action, 'unchanged');
    });

    it('refuses what it cannot edit safely, and a file that is not TOML', () => {
      const inline = planError(
        `proxy_plugins = { other = { type = "snapshot", address = "/o" } }\n`,
      );
      assert.equal(inline.code, 'LCFS_ECONTAINERD_UNSUPPORTED');
      assert.match(inline.message, /line 1 defines proxy_plugins as an inline table/);
      const dotted = planError(`[proxy_plugins]\nlcfs.type = "snapshot"\n`);
      assert.equal(dotted.code, 'LCFS_ECONTAINERD_UNSUPPORTED');
      assert.match(dotted.message, /without address/);
      const twice = planError(`[proxy_plugins.lcfs]\naddress = "${SOCK}"\naddress = "${SOCK}"\n`);
      assert.equal(twice.code, 'LCFS_ECONTAINERD_PARSE');
      for (const [bad, where] of [
        [`version = 2\n[plugins\n`, /line 2/],
        [`version = 2\nroot = "/var/lib/containerd\n`, /line 2, column 8: unterminated string/],
        [`x = """never closed\n`, /line 1.*unterminated multi-line string/],
        [`a = 1 b = 2\n`, /line 1/],
        [`= 3\n`, /line 1/],
        [`k = [1, 2\n`, /line 2/],
      ] as const) {
        const err = planError(bad);
        assert.equal(err.code, 'LCFS_ECONTAINERD_PARSE', bad);
        assert.match(err.message, /config\.toml is not valid TOML/);
        assert.match(err.message, where, bad);
      }
    });

    it('keeps CRLF line ends, and quotes a socket path for TOML', () => {
      const crlf = 'version = 2\r\nroot = "/x"\r\n';
      const p = plan(crlf);
      assert.ok(p.text.startsWith(crlf));
      assert.ok(!/[^\r]\n/.test(p.text), 'every line ends with CRLF');
      const odd = '/run/odd "dir"\\x\tz/s.sock';
      assert.equal(tomlString(odd), '"/run/odd \\"dir\\"\\\\x\\tz/s.sock"');
      const q = plan(V2, odd);
      assert.equal(declared(q.text).address, odd);
      assert.equal(plan(q.text, odd).action, 'unchanged');
    });

    it('reports scan errors with line and column', () => {
      assert.throws(
        () => scanToml('a = 1\nb = "x\n'),
        (err: unknown) => err instanceof TomlScanError && err.line === 2 && err.column === 5,
      );
      const scan = scanToml('a = 1979-05-27 07:32:00Z\n[t]\nb = [ [1, 2], ["x]"] ]\nc = {}\n');
      assert.deepEqual(
        scan.assignments.filter((a) => !a.nested).map((a) => a.path.join('.')),
        ['a', 't.b', 't.c'],
      );
    });
  });

  describe('the command (real process, temp files)', () => {
    let dir: string;

    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), 'lcfs-setup-ctd-'));
    });
    afterEach(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    const setup = (...args: string[]): ReturnType<typeof runToEnd> =>
      runToEnd(DEV_BIN, ['setup', 'containerd', ...args]);
    const backups = async (): Promise<string[]> =>
      (await readdir(dir, { recursive: true })).filter((f) => f.includes('.lcfs-backup-')).sort();

    it('creates a missing file and its folder, then changes nothing on a second run', async () => {
      const config = join(dir, 'etc', 'containerd', 'config.toml');
      const first = await setup('--config', config, '--socket', '/run/x/snap.sock');
      assert.equal(first.code, 0, first.stderr);
      assert.match(first.stdout, /config\.toml \(containerd config version 2\) created/);
      assert.match(first.stdout, /Restart containerd/);
      const text = await readFile(config, 'utf8');
      assert.deepEqual(declared(text), { address: '/run/x/snap.sock', type: 'snapshot' });
      assert.equal((await stat(config)).mode & 0o777, 0o644);
      const mtime = (await stat(config)).mtimeMs;

      const second = await setup('--config', config, '--socket', '/run/x/snap.sock');
      assert.equal(second.code, 0, second.stderr);
      assert.match(second.stdout, /already declares \[proxy_plugins\.lcfs\].*nothing changed/);
      assert.doesNotMatch(second.stdout, /Restart/);
      assert.equal(await readFile(config, 'utf8'), text);
      assert.equal((await stat(config)).mtimeMs, mtime);
      assert.deepEqual(await backups(), []);
    });

    it('keeps a timestamped backup when it changes a file, and keeps its mode', async () => {
      const config = join(dir, 'config.toml');
      await writeFile(config, V1);
      await chmod(config, 0o600);
      const r = await setup('--config', config);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /containerd config version 1\) changed/);
      assert.match(
        r.stdout,
        /added \[proxy_plugins\.lcfs\] \(type "snapshot", address \/run\/lcfs\/snapshotter\.sock\)/,
      );
      const [backup, ...more] = await backups();
      assert.deepEqual(more, []);
      assert.match(backup, /^config\.toml\.lcfs-backup-\d{8}-\d{6}$/);
      assert.match(r.stdout, new RegExp(`kept as ${join(dir, backup)}`));
      assert.equal(await readFile(join(dir, backup), 'utf8'), V1);
      const text = await readFile(config, 'utf8');
      assert.ok(text.startsWith(V1));
      assert.deepEqual(declared(text), { address: SOCK, type: 'snapshot' });
      assert.equal((await stat(config)).mode & 0o777, 0o600);

      const again = await setup('--config', config);
      assert.equal(again.code, 0, again.stderr);
      assert.equal(await readFile(config, 'utf8'), text);
      assert.equal((await backups()).length, 1, 'no new backup when nothing changes');
    });

    it('refuses a conflicting address with a clear error, and replaces it with --force', async () => {
      const config = join(dir, 'config.toml');
      const original = `version = 2\n[proxy_plugins.lcfs]\n  type = "snapshot"\n  address = "/run/someone-else.sock"\n`;
      await writeFile(config, original);
      const r = await setup('--config', config);
      assert.equal(r.code, 1);
      assert.match(
        r.stderr,
        /already declares \[proxy_plugins\.lcfs\] with address "\/run\/someone-else\.sock" \(line 4\)/,
      );
      assert.match(r.stderr, /--force/);
      assert.equal(await readFile(config, 'utf8'), original);
      assert.deepEqual(await backups(), []);

      const forced = await setup('--config', config, '--force');
      assert.equal(forced.code, 0, forced.stderr);
      assert.match(forced.stdout, /replaced address "\/run\/someone-else\.sock"/);
      assert.equal(
        await readFile(config, 'utf8'),
        original.replace('/run/someone-else.sock', SOCK),
      );
      const [backup] = await backups();
      assert.equal(await readFile(join(dir, backup), 'utf8'), original);
    });

    it('--dry-run prints the change and writes nothing', async () => {
      const absent = join(dir, 'absent.toml');
      const r = await setup('--config', absent, '--dry-run');
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /dry run: .* would change/);
      assert.match(
        r.stdout,
        /\[proxy_plugins\.lcfs\]\n {2}type = "snapshot"\n {2}address = "\/run\/lcfs\/snapshotter\.sock"/,
      );
      assert.match(r.stdout, /nothing was written/);
      await assert.rejects(stat(absent), { code: 'ENOENT' });

      const config = join(dir, 'config.toml');
      await writeFile(config, V2);
      const d = await setup('--config', config, '--dry-run');
      assert.equal(d.code, 0, d.stderr);
      assert.equal(await readFile(config, 'utf8'), V2);
      assert.deepEqual(await backups(), []);
    });

    it('edits the target of a symlinked config and keeps the link', async () => {
      await mkdir(join(dir, 'real'));
      const target = join(dir, 'real', 'config.toml');
      await writeFile(target, V2);
      const link = join(dir, 'config.toml');
      await symlink(target, link);
      const r = await setup('--config', link);
      assert.equal(r.code, 0, r.stderr);
      assert.ok((await lstat(link)).isSymbolicLink());
      assert.deepEqual(declared(await readFile(target, 'utf8')), {
        address: SOCK,
        type: 'snapshot',
      });
    });

    it('refuses a file that is not TOML, naming the line', async () => {
      const config = join(dir, 'config.toml');
      await writeFile(config, 'version = 2\n[plugins\n');
      const r = await setup('--config', config);
      assert.equal(r.code, 1);
      assert.match(
        r.stderr,
        /config\.toml is not valid TOML \(line 2, column 9: expected "\]" to close a table header\)/,
      );
      assert.equal(await readFile(config, 'utf8'), 'version = 2\n[plugins\n');
    });
  });

  describe('containerd 1.6 reads what it writes', () => {
    const instances: Containerd[] = [];
    after(async () => {
      for (const c of instances.splice(0)) await c.dispose();
    });

    for (const version of [1, 2] as const) {
      it(`registers the proxy plugin from a version ${version} file`, async () => {
        const c = await Containerd.create({
          label: `setup-v${version}`,
          configText: (c) =>
            version === 2
              ? `version = 2\nroot = "${c.root}"\nstate = "${c.state}"\n` +
                `disabled_plugins = ["io.containerd.grpc.v1.cri"]\n` +
                `[grpc]\n  address = "${c.address}"\n[ttrpc]\n  address = "${c.address}.ttrpc"\n` +
                `[plugins]\n  [plugins."io.containerd.internal.v1.opt"]\n    path = "${c.root}/opt"\n`
              : `root = "${c.root}"\nstate = "${c.state}"\ndisabled_plugins = ["cri"]\n` +
                `[grpc]\n  address = "${c.address}"\n[ttrpc]\n  address = "${c.address}.ttrpc"\n` +
                `[plugins.opt]\n  path = "${c.root}/opt"\n`,
        });
        instances.push(c);
        const socket = join(c.dir, 'lcfs.sock');
        const r = await setup('--config', c.configPath, '--socket', socket);
        assert.equal(r.code, 0, r.stderr);
        await c.start();
        const plugins = await c.ctrOk(['plugins', 'ls']);
        assert.match(plugins, /^io\.containerd\.snapshotter\.v1\s+lcfs\s+-\s+ok\s*$/m, plugins);
        await c.dispose();
      });
    }

    function setup(...args: string[]): ReturnType<typeof runToEnd> {
      return runToEnd(DEV_BIN, ['setup', 'containerd', ...args]);
    }
  });
});
