import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ContainerdConfigError,
  planCriRegistryConfigPath,
} from '../../cli/setup/containerd-config.js';
import { planHostsToml, registryServer } from '../../cli/setup/hosts-toml.js';
import { scanToml } from '../../cli/setup/toml-scan.js';
import { Containerd } from '../containerd/helpers/containerd.js';
import { DEV_BIN, runToEnd } from './lcfs-process.js';

const MIRROR = 'http://127.0.0.1:7351';
const CERTS = '/etc/containerd/certs.d';

/** The hosts a hosts.toml lists, in file order, with their capabilities. */
function hostsOf(text: string): Array<[string, string]> {
  const { assignments } = scanToml(text);
  return assignments
    .filter((a) => a.path[0] === 'host' && a.path[2] === 'capabilities')
    .map((a) => [a.path[1], a.raw]);
}

const CRI_V2 = `version = 2
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.6"
    # Where registries are configured.
    [plugins."io.containerd.grpc.v1.cri".registry]
      [plugins."io.containerd.grpc.v1.cri".registry.auths]
`;

describe('lcfs setup containerd --mirror', () => {
  describe('planning hosts.toml and config_path (pure)', () => {
    it('writes a new hosts.toml with the server and the mirror host', () => {
      const plan = planHostsToml(null, { mirror: MIRROR, server: registryServer('docker.io') });
      assert.match(plan.text, /^server = "https:\/\/registry-1\.docker\.io"$/m);
      assert.match(
        plan.text,
        /^\[host\."http:\/\/127\.0\.0\.1:7351"\]\n {2}capabilities = \["pull", "resolve"\]$/m,
      );
      assert.deepEqual(hostsOf(plan.text), [[MIRROR, '["pull", "resolve"]']]);
      assert.deepEqual(planHostsToml(plan.text, { mirror: MIRROR }).changes, []);
      assert.equal(registryServer('ghcr.io'), 'https://ghcr.io');
      // _default takes no server: each registry is its own.
      assert.doesNotMatch(planHostsToml(null, { mirror: MIRROR }).text, /^server/m);
    });

    it('puts the mirror before existing hosts, above their comments, keeping the rest', () => {
      const existing =
        `server = "https://registry-1.docker.io"\n\n` +
        `# the office cache\n[host."https://cache.example:5000"]\n  capabilities = ["pull"]\n` +
        `  skip_verify = true\n`;
      const plan = planHostsToml(existing, { mirror: MIRROR, file: 'hosts.toml' });
      assert.deepEqual(
        hostsOf(plan.text).map(([host]) => host),
        [MIRROR, 'https://cache.example:5000'],
      );
      assert.ok(plan.text.startsWith(`server = "https://registry-1.docker.io"\n\n# The lcfs`));
      assert.ok(plan.text.endsWith(existing.slice(existing.indexOf('# the office cache'))));
      assert.match(plan.changes[0], /before the other hosts \(line 4\)/);
      assert.deepEqual(planHostsToml(plan.text, { mirror: MIRROR }).changes, []);
    });

    it('leaves a host block for the mirror however it is written', () => {
      for (const text of [
        `[host."http://127.0.0.1:7351/"]\n  capabilities = ["pull"]\n`,
        `host."http://127.0.0.1:7351".capabilities = ["pull", "resolve"]\n`,
      ]) {
        const plan = planHostsToml(text, { mirror: MIRROR });
        assert.equal(plan.text, text);
        assert.deepEqual(plan.changes, []);
      }
    });

    it('refuses a hosts.toml it cannot parse or edit', () => {
      assert.throws(
        () => planHostsToml('[host."x"\n', { mirror: MIRROR, file: 'h.toml' }),
        (err: unknown) =>
          err instanceof ContainerdConfigError &&
          err.code === 'LCFS_ECONTAINERD_PARSE' &&
          /h\.toml is not valid TOML \(line 1/.test(err.message),
      );
      assert.throws(
        () =>
          planHostsToml('host = { "https://a" = { capabilities = ["pull"] } }\n', {
            mirror: MIRROR,
          }),
        (err: unknown) =>
          err instanceof ContainerdConfigError && err.code === 'LCFS_ECONTAINERD_UNSUPPORTED',
      );
    });

    it('sets config_path in an existing CRI registry table, once', () => {
      const plan = planCriRegistryConfigPath(CRI_V2, { certsDir: CERTS });
      assert.equal(
        plan.text,
        CRI_V2.replace(`registry]\n`, `registry]\n  config_path = "/etc/containerd/certs.d"\n`),
      );
      assert.match(plan.changes[0], /line 6/);
      assert.deepEqual(plan.advice, []);
      const again = planCriRegistryConfigPath(plan.text, { certsDir: CERTS });
      assert.deepEqual([again.changes, again.advice], [[], []]);
    });

    it('advises, and changes nothing, where it would have to guess', () => {
      const cases: Array<[string, RegExp]> = [
        [
          `version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n`,
          /has no \[plugins\."io\.containerd\.grpc\.v1\.cri"\.registry\] table.*\n\n\[plugins/s,
        ],
        [
          `version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/other"\n`,
          /line 3 sets config_path = "\/etc\/other"/,
        ],
        [
          `version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n  endpoint = ["https://x"]\n`,
          /refuses next to config_path/,
        ],
        [
          `version = 3\n[plugins."io.containerd.cri.v1.images".registry]\nconfig_path = "/a:/etc/containerd/certs.d"\n`,
          /^$/,
        ],
      ];
      for (const [text, advice] of cases) {
        const plan = planCriRegistryConfigPath(text, { certsDir: CERTS });
        assert.equal(plan.text, text);
        assert.match(plan.advice.join('\n'), advice, text);
      }
    });
  });

  describe('the command (real process, temp files)', () => {
    let dir: string;
    let config: string;
    let certs: string;

    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), 'lcfs-setup-mirror-'));
      config = join(dir, 'config.toml');
      certs = join(dir, 'certs.d');
    });
    afterEach(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    const setup = (...args: string[]): ReturnType<typeof runToEnd> =>
      runToEnd(DEV_BIN, ['setup', 'containerd', '--config', config, '--certs-dir', certs, ...args]);
    const backups = async (): Promise<string[]> =>
      (await readdir(dir, { recursive: true })).filter((f) => f.includes('.lcfs-backup-')).sort();

    it('writes the plugin, config_path and hosts.toml files, then changes nothing', async () => {
      await writeFile(config, CRI_V2);
      const args = ['--mirror', '--mirror-registry', 'docker.io', '--mirror-registry', 'ghcr.io'];
      const first = await setup(...args);
      assert.equal(first.code, 0, first.stderr);
      const text = await readFile(config, 'utf8');
      assert.match(text, /^\[proxy_plugins\.lcfs\]$/m);
      assert.match(text, new RegExp(`^ {2}config_path = "${certs}"$`, 'm'));
      assert.match(first.stdout, /Restart containerd/);
      assert.match(first.stdout, /--hosts-dir/);
      const hub = await readFile(join(certs, 'docker.io', 'hosts.toml'), 'utf8');
      assert.match(hub, /^server = "https:\/\/registry-1\.docker\.io"$/m);
      assert.deepEqual(hostsOf(hub), [[MIRROR, '["pull", "resolve"]']]);
      const ghcr = await readFile(join(certs, 'ghcr.io', 'hosts.toml'), 'utf8');
      assert.match(ghcr, /^server = "https:\/\/ghcr\.io"$/m);
      const fallback = await readFile(join(certs, '_default', 'hosts.toml'), 'utf8');
      assert.deepEqual(hostsOf(fallback), [[MIRROR, '["pull", "resolve"]']]);
      assert.equal((await backups()).length, 1, 'config.toml backed up once for both edits');

      const second = await setup(...args);
      assert.equal(second.code, 0, second.stderr);
      assert.match(second.stdout, /already declares \[proxy_plugins\.lcfs\]/);
      assert.match(second.stdout, /_default\/hosts\.toml already lists the mirror/);
      assert.doesNotMatch(second.stdout, /Restart/);
      assert.equal(await readFile(config, 'utf8'), text);
      assert.equal(await readFile(join(certs, 'docker.io', 'hosts.toml'), 'utf8'), hub);
      assert.equal((await backups()).length, 1);
    });

    it('--no-snapshotter edits hosts.toml only, backing up an existing one once', async () => {
      const hosts = join(certs, 'docker.io', 'hosts.toml');
      await mkdir(join(certs, 'docker.io'), { recursive: true });
      const existing = `server = "https://registry-1.docker.io"\n[host."https://cache:5000"]\n  capabilities = ["pull"]\n`;
      await writeFile(hosts, existing);
      const r = await setup('--no-snapshotter', '--mirror', '--mirror-registry', 'docker.io');
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /there is no .*config\.toml/);
      await assert.rejects(readFile(config), { code: 'ENOENT' });
      assert.deepEqual(
        hostsOf(await readFile(hosts, 'utf8')).map(([h]) => h),
        [MIRROR, 'https://cache:5000'],
      );
      const [backup, ...more] = await backups();
      assert.deepEqual(more, []);
      assert.equal(await readFile(join(dir, backup), 'utf8'), existing);
      const again = await setup('--no-snapshotter', '--mirror', '--mirror-registry', 'docker.io');
      assert.equal(again.code, 0, again.stderr);
      assert.equal((await backups()).length, 1);
    });

    it('refuses a bad hosts.toml before writing any file', async () => {
      await writeFile(config, CRI_V2);
      await mkdir(join(certs, '_default'), { recursive: true });
      await writeFile(join(certs, '_default', 'hosts.toml'), 'server = \n');
      const r = await setup('--mirror', '--mirror-registry', 'docker.io');
      assert.equal(r.code, 1);
      assert.match(r.stderr, /_default\/hosts\.toml is not valid TOML/);
      assert.equal(await readFile(config, 'utf8'), CRI_V2);
      await assert.rejects(readFile(join(certs, 'docker.io', 'hosts.toml')), { code: 'ENOENT' });
      assert.deepEqual(await backups(), []);

      const flags = await setup('--mirror-registry', 'docker.io');
      assert.notEqual(flags.code, 0, 'the --mirror-* flags need --mirror');
      const name = await setup('--mirror', '--mirror-registry', 'not a/host');
      assert.equal(name.code, 1);
      assert.match(name.stderr, /not a registry host name/);
    });
  });

  describe('containerd 1.6 pulls through the mirror it was given', () => {
    let dir: string;
    let containerd: Containerd | undefined;
    let mirror: Server;
    const requests: string[] = [];

    before(async () => {
      dir = await mkdtemp(join(tmpdir(), 'lcfs-setup-mirror-ctd-'));
      // A stand-in mirror that records what it is asked, and has nothing.
      mirror = createServer((req, res) => {
        requests.push(`${req.method} ${req.url}`);
        res.writeHead(404, { 'Content-Type': 'application/json' }).end('{"errors":[]}');
      });
      await new Promise<void>((resolve) => mirror.listen(0, '127.0.0.1', resolve));
    });
    after(async () => {
      await containerd?.dispose();
      await new Promise((resolve) => mirror.close(resolve));
      await rm(dir, { recursive: true, force: true });
    });

    it('asks the mirror first, with ?ns=<registry>', async () => {
      const { port } = mirror.address() as AddressInfo;
      const certs = join(dir, 'certs.d');
      containerd = await Containerd.start();
      const r = await runToEnd(DEV_BIN, [
        'setup',
        'containerd',
        '--no-snapshotter',
        '--config',
        join(dir, 'none.toml'),
        '--certs-dir',
        certs,
        '--mirror',
        '--mirror-url',
        `http://127.0.0.1:${port}`,
      ]);
      assert.equal(r.code, 0, r.stderr);
      // A registry no host serves: after the mirror, containerd tries it at https and fails.
      const image = '127.0.0.1:9/lcfs/absent:v1';
      const pull = await containerd.ctr(['images', 'pull', '--hosts-dir', certs, image], 60_000);
      assert.notEqual(pull.code, 0);
      assert.ok(
        requests.some(
          (line) =>
            line.startsWith('HEAD /v2/lcfs/absent/manifests/v1?ns=127.0.0.1%3A9') ||
            line.startsWith('GET /v2/lcfs/absent/manifests/v1?ns=127.0.0.1%3A9'),
        ),
        `mirror requests: ${JSON.stringify(requests)}`,
      );
    });
  });
});
