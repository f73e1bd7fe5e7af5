import assert from 'node:assert/strict';
import { chmod, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SetupError } from '../../cli/setup/config-file.js';
import { planDaemonJson } from '../../cli/setup/daemon-json.js';
import { DEFAULT_MIRROR_URL, parseMirrorUrl } from '../../cli/setup/mirror-url.js';
import { DEV_BIN, runToEnd } from './lcfs-process.js';

const MIRROR = 'http://127.0.0.1:7351';
const EXISTING = `{
    "log-driver": "journald",
    "registry-mirrors": ["https://mirror.gcr.io"],
    "default-ulimits": { "nofile": { "Name": "nofile", "Hard": 64000, "Soft": 64000 } }
}
`;

function refusal(existing: string, opts: Parameters<typeof planDaemonJson>[1]): SetupError {
  try {
    planDaemonJson(existing, opts);
  } catch (err) {
    assert.ok(err instanceof SetupError, `not a SetupError: ${String(err)}`);
    return err;
  }
  assert.fail('expected the plan to be refused');
}

describe('lcfs setup docker', () => {
  describe('planning daemon.json (pure)', () => {
    it('the default mirror is the agent config default', () => {
      assert.equal(DEFAULT_MIRROR_URL, MIRROR);
    });

    it('creates a file with experimental and the storage driver', () => {
      const plan = planDaemonJson(null, { storageDriver: 'lcfs' });
      assert.equal(plan.apply, 'restart');
      assert.deepEqual(JSON.parse(plan.text!), { experimental: true, 'storage-driver': 'lcfs' });
      assert.equal(plan.text, '{\n  "experimental": true,\n  "storage-driver": "lcfs"\n}\n');
    });

    it('keeps every other key, their order and the indentation, and is idempotent', () => {
      const plan = planDaemonJson(EXISTING, { storageDriver: 'lcfs', mirror: MIRROR });
      const settings = JSON.parse(plan.text!) as Record<string, unknown>;
      assert.deepEqual(Object.keys(settings), [
        'log-driver',
        'registry-mirrors',
        'default-ulimits',
        'experimental',
        'storage-driver',
      ]);
      assert.deepEqual(settings['default-ulimits'], {
        nofile: { Name: 'nofile', Hard: 64000, Soft: 64000 },
      });
      assert.deepEqual(settings['registry-mirrors'], [MIRROR, 'https://mirror.gcr.io']);
      assert.match(plan.text!, /^ {4}"log-driver"/m, 'four-space indentation kept');
      assert.equal(plan.apply, 'restart');

      const again = planDaemonJson(plan.text, { storageDriver: 'lcfs', mirror: MIRROR });
      assert.deepEqual(again.changes, []);
      assert.equal(again.text, plan.text);
      assert.equal(again.apply, 'nothing');
    });

    it('switches another storage driver, and says the old one is hidden, not lost', () => {
      const plan = planDaemonJson('{"storage-driver": "overlay2", "experimental": false}', {
        storageDriver: 'lcfs',
      });
      assert.match(plan.changes.join('\n'), /from "overlay2" to "lcfs".*hidden until you switch/);
      assert.match(plan.changes.join('\n'), /"experimental": true \(was false\)/);
    });

    it('with only the mirror, leaves the storage driver and asks for a reload', () => {
      const text = '{"storage-driver": "overlay2"}';
      const plan = planDaemonJson(text, { mirror: MIRROR });
      assert.deepEqual(JSON.parse(plan.text!), {
        'storage-driver': 'overlay2',
        'registry-mirrors': [MIRROR],
      });
      assert.equal(plan.apply, 'reload');
      // The same server, written with a trailing slash, is already there.
      const listed = '{"registry-mirrors": ["http://127.0.0.1:7351/"]}';
      assert.deepEqual(planDaemonJson(listed, { mirror: MIRROR }).changes, []);
    });

    it('refuses what is not a JSON object, or mirrors that are not a list', () => {
      for (const bad of ['[1, 2]', '"lcfs"', 'null', '{"experimental": true,}', '{']) {
        const err = refusal(bad, { storageDriver: 'lcfs' });
        assert.equal(err.code, 'LCFS_EDOCKER_CONFIG', bad);
        assert.match(err.message, /not changed/);
      }
      const mirrors = refusal('{"registry-mirrors": "http://x"}', { mirror: MIRROR });
      assert.match(mirrors.message, /"registry-mirrors" "http:\/\/x", which is not a list/);
    });

    it('takes a mirror URL only as scheme://host[:port]', () => {
      assert.equal(parseMirrorUrl('http://127.0.0.1:7351/'), MIRROR);
      for (const bad of ['127.0.0.1:7351', 'ftp://h', 'http://h/v2', 'http://h?x=1', 'http://u@h'])
        assert.throws(() => parseMirrorUrl(bad), SetupError, bad);
    });
  });

  describe('the command (real process, temp files)', () => {
    let dir: string;
    let daemonJson: string;

    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), 'lcfs-setup-docker-'));
      daemonJson = join(dir, 'daemon.json');
    });
    afterEach(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    const setup = (...args: string[]): ReturnType<typeof runToEnd> =>
      runToEnd(DEV_BIN, ['setup', 'docker', '--daemon-json', daemonJson, ...args]);
    const backups = async (): Promise<string[]> =>
      (await readdir(dir)).filter((f) => f.includes('.lcfs-backup-')).sort();

    it('edits once with one backup and the file mode kept; a second run changes nothing', async () => {
      await writeFile(daemonJson, EXISTING);
      await chmod(daemonJson, 0o600);
      const first = await setup('--mirror');
      assert.equal(first.code, 0, first.stderr);
      assert.match(first.stdout, /daemon\.json changed:/);
      assert.match(first.stdout, /set "storage-driver": "lcfs"/);
      assert.match(first.stdout, /added http:\/\/127\.0\.0\.1:7351 to "registry-mirrors"/);
      assert.match(first.stdout, /dockerd must be restarted/);
      const text = await readFile(daemonJson, 'utf8');
      const settings = JSON.parse(text) as Record<string, unknown>;
      assert.equal(settings['log-driver'], 'journald');
      assert.equal(settings.experimental, true);
      assert.equal((await stat(daemonJson)).mode & 0o777, 0o600);
      const [backup, ...more] = await backups();
      assert.deepEqual(more, []);
      assert.equal(await readFile(join(dir, backup), 'utf8'), EXISTING);
      assert.match(first.stdout, new RegExp(`kept as ${join(dir, backup)}`));

      const second = await setup('--mirror');
      assert.equal(second.code, 0, second.stderr);
      assert.match(second.stdout, /nothing changed/);
      assert.doesNotMatch(second.stdout, /restart/);
      assert.equal(await readFile(daemonJson, 'utf8'), text);
      assert.equal((await backups()).length, 1);
    });

    it('creates a missing file; --no-storage-driver --mirror only adds the mirror', async () => {
      const created = await setup(
        '--no-storage-driver',
        '--mirror',
        '--mirror-url',
        'http://10.0.0.5:5000',
      );
      assert.equal(created.code, 0, created.stderr);
      assert.match(created.stdout, /daemon\.json created:/);
      assert.match(created.stdout, /systemctl reload docker/);
      assert.deepEqual(JSON.parse(await readFile(daemonJson, 'utf8')), {
        'registry-mirrors': ['http://10.0.0.5:5000'],
      });
      assert.deepEqual(await backups(), []);
    });

    it('refuses a file that is not a JSON object and leaves it untouched', async () => {
      await writeFile(daemonJson, '["storage-driver", "lcfs"]\n');
      const r = await setup();
      assert.equal(r.code, 1);
      assert.match(r.stderr, /holds an array, not a JSON object/);
      assert.equal(await readFile(daemonJson, 'utf8'), '["storage-driver", "lcfs"]\n');
      assert.deepEqual(await backups(), []);

      const url = await setup('--mirror', '--mirror-url', 'http://127.0.0.1:7351/v2');
      assert.equal(url.code, 1);
      assert.match(url.stderr, /no path/);
    });

    it('--dry-run prints the new file and writes nothing; --no-storage-driver needs --mirror', async () => {
      await writeFile(daemonJson, '{}');
      const r = await setup('--dry-run');
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /dry run: .*daemon\.json would change/);
      assert.match(r.stdout, /"storage-driver": "lcfs"/);
      assert.match(r.stdout, /nothing was written/);
      assert.equal(await readFile(daemonJson, 'utf8'), '{}');

      const nothing = await setup('--no-storage-driver');
      assert.equal(nothing.code, 2);
      assert.match(nothing.stderr, /nothing to do/);
    });
  });
});
