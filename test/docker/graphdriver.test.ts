/**
 * lcfs as a graph driver plugin under a real dockerd 20.10 (Debian's docker.io), driven with the
 * docker client. One agent and one dockerd serve the whole file; the tests run in order and
 * some build on images an earlier one made (each says so). A second dockerd on the built-in vfs
 * driver is the reference for save/load.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import {
  access,
  chmod,
  copyFile,
  mkdir,
  mkdtemp,
  readFile,
  readdir,
  rm,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildTar, type TarEntrySpec } from '../fs/helpers/tar.js';
import { LcfsAgent } from '../helpers/lcfs-agent.js';
import {
  APP,
  GROUP,
  PASSWD,
  appletPaths,
  importImage,
  makeBusyboxRootfs,
  tarRootfs,
} from './helpers/busybox-image.js';
import { DOCKER_CLI_20, Dockerd } from './helpers/dockerd.js';
import { exec, execOk } from './helpers/exec.js';
import { sleep } from '../helpers/cleanup.js';
import { errOf, pluginPost } from './helpers/plugin-client.js';
import { scanTar, type ScannedEntry } from './helpers/tar-scan.js';

const NET = ['--network', 'none'];
/** The capability set with the host's setfattr: v2, permitted CAP_KILL, effective bit. */
const CAP_B64 = 'AQAAAgAgAAAAAAAAAAAAAAAAAAA=';
const CAP_VALUE = Buffer.from(CAP_B64, 'base64');
const BIG_BYTES = 64 * 1024 * 1024;

function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function lines(text: string): string[] {
  return text.split('\n').filter((l) => l !== '');
}

interface DriverData {
  Dir: string;
  LayerId: string;
  Parent: string;
  State: string;
}

/** Image or container names are passed with their kind: a bare `inspect` may match another object by id prefix. */
async function driverData(
  d: Dockerd,
  kind: 'image' | 'container',
  ref: string,
): Promise<DriverData> {
  return JSON.parse(
    await d.docker([kind, 'inspect', '-f', '{{json .GraphDriver.Data}}', ref]),
  ) as DriverData;
}

async function driverStatus(d: Dockerd): Promise<Record<string, string>> {
  const rows = JSON.parse(await d.docker(['info', '--format', '{{json .DriverStatus}}'])) as Array<
    [string, string]
  >;
  return Object.fromEntries(rows);
}

/** `getfattr` on the host: the value of security.capability, base64 as getfattr prints it. */
async function capabilityOf(path: string): Promise<string> {
  const r = await exec([
    'getfattr',
    '--absolute-names',
    '-n',
    'security.capability',
    '-e',
    'base64',
    path,
  ]);
  if (r.code !== 0) return `getfattr failed (${r.code}): ${r.stderr.trim()}`;
  const m = /^security\.capability=0s(.*)$/m.exec(r.stdout);
  return m ? m[1] : `unexpected getfattr output: ${r.stdout}`;
}

/** `docker diff` as a sorted list of lines. */
async function dockerDiff(d: Dockerd, container: string): Promise<string[]> {
  return lines(await d.docker(['diff', container])).sort();
}

const PRUNE = String.raw`find / -xdev \( -path /proc -o -path /sys -o -path /dev \) -prune -o`;
/** Files dockerd bind-mounts into every container, which differ by nature. */
const DOCKERD_FILES = new Set(['/etc/hosts', '/etc/hostname', '/etc/resolv.conf']);

interface RootfsListing {
  /** `path sha256` of every regular file. */
  hashes: string[];
  /** Type, mode, owner and size of every entry, and the mtime of every non-directory. */
  metadata: string[];
}

/**
 * Lists a container's root filesystem (one container run): the sha256 of every regular file,
 * and the metadata of every entry, leaving out what dockerd makes per container (the files
 * it bind-mounts, and the times of /.dockerenv and of directories).
 */
async function listRootfs(d: Dockerd, image: string): Promise<RootfsListing> {
  const out = await d.docker([
    'run',
    '--rm',
    ...NET,
    image,
    'sh',
    '-c',
    `${PRUNE} -type f -exec sha256sum {} + && echo === && ${PRUNE} -exec stat -c '%n|%f|%u|%g|%s|%Y' {} +`,
  ]);
  const [hashPart, statPart] = out.split('===\n');
  const hashes = lines(hashPart)
    .map((l) => {
      const m = /^([0-9a-f]{64}) {2}(.*)$/.exec(l);
      assert.ok(m, `sha256sum line: ${l}`);
      return `${m[2]} ${m[1]}`;
    })
    .filter((l) => !DOCKERD_FILES.has(l.slice(0, l.lastIndexOf(' '))))
    .sort();
  const metadata = lines(statPart)
    .map((l) => {
      const [name, rawMode, uid, gid, size, mtime] = l.split('|');
      const mode = parseInt(rawMode, 16);
      const type = mode & 0o170000;
      const perm = (mode & 0o7777).toString(8);
      if (type === 0o040000) return `${name} dir ${perm} ${uid}:${gid}`;
      const time = name === '/.dockerenv' || name === '/etc/mtab' ? '' : ` mtime=${mtime}`;
      return `${name} type=${type.toString(8)} ${perm} ${uid}:${gid} ${size}${time}`;
    })
    .filter((l) => !DOCKERD_FILES.has(l.slice(0, l.indexOf(' '))))
    .sort();
  return { hashes, metadata };
}

describe('docker: dockerd 20.10 on the lcfs graph driver plugin', function () {
  this.timeout(180_000);

  let work: string;
  let agent: LcfsAgent;
  let d: Dockerd;
  let baseTar: string;
  /** Agent runs that started after a SIGKILL: each logs the two crash-recovery warnings. */
  const crashRuns: number[] = [];
  /** dockerd log lines at level error that a test provoked on purpose (by line number). */
  const provokedErrors = new Set<number>();

  /** Runs `fn`; the error lines dockerd logs meanwhile are the expected outcome of the test. */
  async function provoking<T>(fn: () => Promise<T>): Promise<T> {
    const before = lines(await d.logText()).length;
    try {
      return await fn();
    } finally {
      await sleep(200); // dockerd logs the handler's error just after its reply
      lines(await d.logText()).forEach((l, i) => {
        if (i >= before && isErrorLine(l)) provokedErrors.add(i);
      });
    }
  }

  before(async function () {
    this.timeout(240_000);
    work = await mkdtemp(join(tmpdir(), 'lcfs-docker-work-'));
    const rootfs = join(work, 'rootfs');
    await makeBusyboxRootfs(rootfs);
    // A file carrying a file capability, set by the host's setfattr before the import.
    await copyFile('/bin/busybox', join(rootfs, 'usr/bin/capbin'));
    await chmod(join(rootfs, 'usr/bin/capbin'), 0o755);
    await execOk([
      'setfattr',
      '-n',
      'security.capability',
      '-v',
      `0s${CAP_B64}`,
      join(rootfs, 'usr/bin/capbin'),
    ]);
    baseTar = join(work, 'rootfs.tar');
    await tarRootfs(rootfs, baseTar);
    agent = await LcfsAgent.start();
    d = await Dockerd.start({ storageDriver: agent.pluginName, experimental: true, label: 'lcfs' });
  });

  afterEach(async function () {
    if (this.currentTest?.state !== 'failed') return;
    console.log(`--- agent log (last lines)\n${agent?.logText(40) ?? ''}\n${agent?.stderr ?? ''}`);
    if (d) console.log(await d.logTail(40));
  });

  after(async function () {
    this.timeout(180_000);
    const failures: unknown[] = [];
    const attempt = async (fn: () => Promise<unknown>): Promise<void> => {
      try {
        await fn();
      } catch (err) {
        failures.push(err);
      }
    };
    const keep = process.env.LCFS_TEST_KEEP_LOGS;
    if (keep) {
      await mkdir(keep, { recursive: true });
      if (agent) await writeFile(join(keep, 'agent.jsonl'), agent.logText(1e9) + '\n');
      if (d) await writeFile(join(keep, 'dockerd-lcfs.log'), await d.logText());
    }
    // dockerd first: the agent must outlive it.
    if (d) await attempt(() => d.dispose());
    if (agent?.running) await attempt(() => agent.stop());
    if (agent) await attempt(() => agent.dispose());
    if (work) await attempt(() => rm(work, { recursive: true, force: true }));
    if (failures.length > 0) throw failures[0];
  });

  describe('import and run', function () {
    it('imports a busybox rootfs tar, and dockerd reports the plugin as its storage driver', async () => {
      await importImage(d, baseTar, 'bbox:latest');
      assert.equal((await d.docker(['info', '--format', '{{.Driver}}'])).trim(), agent.pluginName);
      assert.equal(
        (await d.docker(['image', 'inspect', '-f', '{{.GraphDriver.Name}}', 'bbox'])).trim(),
        agent.pluginName,
      );
      const data = await driverData(d, 'image', 'bbox');
      assert.equal(data.Dir, join(agent.mountpoint, data.LayerId));
      assert.equal(data.Parent, '', 'an imported image is a single base layer');
      const out = await d.docker([
        'run',
        '--rm',
        ...NET,
        'bbox',
        'sh',
        '-c',
        'cat /etc/passwd /etc/group; id -u; stat -c "%a %u:%g" /root /home/app /tmp',
      ]);
      assert.equal(out, `${PASSWD}${GROUP}0\n700 0:0\n755 1000:1000\n1777 0:0\n`);
    });

    it('run writes files; docker diff lists exactly the changes; SizeRw is the bytes written', async () => {
      await d.docker([
        'run',
        '--name',
        'w1',
        ...NET,
        'bbox',
        'sh',
        '-c',
        [
          'mkdir -p /data/sub',
          'printf hello > /data/a.txt',
          'ln /data/a.txt /data/hard',
          'head -c 5000 /dev/zero > /data/sub/b.bin',
          'ln -s a.txt /data/link',
          'rm /bin/vi',
          'rm -r /usr/sbin',
          'echo x >> /etc/group',
          'chmod 600 /etc/passwd',
        ].join(' && '),
      ]);
      assert.deepEqual(await dockerDiff(d, 'w1'), [
        'A /data',
        'A /data/a.txt',
        'A /data/hard',
        'A /data/link',
        'A /data/sub',
        'A /data/sub/b.bin',
        'C /bin',
        'C /etc',
        'C /etc/group',
        'C /etc/passwd',
        'C /usr',
        'D /bin/vi',
        'D /usr/sbin',
      ]);
      // Added or changed non-directories by Lstat size, a hard-linked file once: a.txt (5),
      // b.bin (5000), the symlink (5, its target's length), /etc/group, /etc/passwd (mode only).
      const expected = 5 + 5000 + 5 + Buffer.byteLength(GROUP + 'x\n') + Buffer.byteLength(PASSWD);
      const sizeRw = Number(
        await d.docker(['container', 'inspect', '--size', '-f', '{{.SizeRw}}', 'w1']),
      );
      assert.equal(sizeRw, expected);
    });

    it('commit carries exactly the changes; a container of the committed image sees them', async () => {
      // Uses the container w1 of the previous test.
      await d.docker(['commit', 'w1', 'img-w1']);
      const out = await d.docker([
        'run',
        '--rm',
        ...NET,
        'img-w1',
        'sh',
        '-c',
        [
          'cat /data/a.txt; echo',
          'stat -c "%h %i" /data/a.txt | cut -d" " -f1',
          '[ "$(stat -c %i /data/a.txt)" = "$(stat -c %i /data/hard)" ] && echo same-inode',
          'readlink /data/link',
          'sha256sum /data/sub/b.bin | cut -d" " -f1',
          'tail -n1 /etc/group',
          'stat -c %a /etc/passwd',
          'ls /bin/vi /usr/sbin 2>&1 || true',
        ].join('; '),
      ]);
      assert.equal(
        out,
        [
          'hello',
          '2',
          'same-inode',
          'a.txt',
          sha256(Buffer.alloc(5000)),
          'x',
          '600',
          'ls: /bin/vi: No such file or directory',
          'ls: /usr/sbin: No such file or directory',
          '',
        ].join('\n'),
      );

      // The new layer is the tar the plugin's Diff gave dockerd at commit: save shows it as is.
      const saved = join(work, 'img-w1.tar');
      await d.docker(['save', '-o', saved, 'img-w1']);
      const layers = await savedLayers(saved, 'img-w1:latest');
      assert.equal(layers.length, 2);
      const entries = scanTar(layers[1]).map((e) => ({ ...e, name: e.name.replace(/^\.\//, '') }));
      const names = entries.map((e) => e.name);
      assert.deepEqual([...names].sort(), [
        'bin/',
        'bin/.wh.vi',
        'data/',
        'data/a.txt',
        'data/hard',
        'data/link',
        'data/sub/',
        'data/sub/b.bin',
        'etc/',
        'etc/group',
        'etc/passwd',
        'usr/',
        'usr/.wh.sbin',
      ]);
      for (const [i, name] of names.entries()) {
        const parent = name.replace(/\/?[^/]+\/?$/, '');
        if (parent !== '')
          assert.ok(names.indexOf(`${parent}/`) < i, `${parent}/ comes before ${name}`);
      }
      const byName = new Map(entries.map((e) => [e.name, e]));
      const pick = (n: string): ScannedEntry => byName.get(n) as ScannedEntry;
      // One of the two names of the hard-linked file carries the data, the other links to it.
      const [first, second] = ['data/a.txt', 'data/hard']
        .map(pick)
        .sort((a, b) => (a.typeflag === '0' ? -1 : b.typeflag === '0' ? 1 : 0));
      assert.equal(first.typeflag, '0');
      assert.equal(first.sha256, sha256('hello'));
      assert.equal(second.typeflag, '1');
      assert.equal(second.linkname.replace(/^\.?\//, ''), first.name);
      assert.equal(pick('data/link').typeflag, '2');
      assert.equal(pick('data/link').linkname, 'a.txt');
      assert.equal(pick('data/sub/b.bin').sha256, sha256(Buffer.alloc(5000)));
      assert.equal(pick('etc/group').sha256, sha256(GROUP + 'x\n'));
      assert.equal(pick('etc/passwd').mode & 0o7777, 0o600);
      assert.equal(pick('bin/.wh.vi').size, 0);
    });

    it('a directory removed and made again commits as the new directory only', async () => {
      await d.docker([
        'run',
        '--name',
        'r1',
        ...NET,
        'bbox',
        'sh',
        '-c',
        'rm -r /home && mkdir -p /home/new && echo n > /home/new/f',
      ]);
      assert.deepEqual(await dockerDiff(d, 'r1'), [
        'A /home/new',
        'A /home/new/f',
        'C /home',
        'D /home/app',
      ]);
      await d.docker(['commit', 'r1', 'img-r1']);
      const out = await d.docker([
        'run',
        '--rm',
        ...NET,
        'img-r1',
        'sh',
        '-c',
        'ls -a /home; cat /home/new/f',
      ]);
      assert.equal(out, '.\n..\nnew\nn\n');
    });

    it('docker cp into a created container and out of it', async () => {
      await d.docker(['create', '--name', 'cp1', ...NET, 'bbox', 'cat', '/cp-in.txt']);
      const hostIn = join(work, 'cp-in.txt');
      await writeFile(hostIn, 'copied in\n');
      await d.docker(['cp', hostIn, 'cp1:/cp-in.txt']);
      assert.deepEqual(await dockerDiff(d, 'cp1'), ['A /cp-in.txt']);
      assert.equal(await d.docker(['start', '-a', 'cp1']), 'copied in\n');
      const hostOut = join(work, 'cp-out');
      await mkdir(hostOut);
      await d.docker(['cp', 'cp1:/etc/passwd', join(hostOut, 'passwd')]);
      assert.equal(await readFile(join(hostOut, 'passwd'), 'utf8'), PASSWD);
    });

    it('a container running as the non-root user app writes its home and is refused /root and /etc', async () => {
      const out = await d.docker([
        'run',
        '--name',
        'u1',
        '--user',
        'app',
        ...NET,
        'bbox',
        'sh',
        '-c',
        [
          'echo hi > /home/app/f && mkdir /home/app/d && id -u && id -g',
          'touch /root/x 2>&1; echo "root:$?"',
          '(echo y > /etc/evil) 2>&1; echo "etc:$?"',
          '(echo y > /etc/passwd) 2>&1; echo "passwd:$?"',
        ].join('; '),
      ]);
      assert.equal(
        out,
        [
          '1000',
          '1000',
          'touch: /root/x: Permission denied',
          'root:1',
          "sh: can't create /etc/evil: Permission denied",
          'etc:1',
          "sh: can't create /etc/passwd: Permission denied",
          'passwd:1',
          '',
        ].join('\n'),
      );
      assert.deepEqual(await dockerDiff(d, 'u1'), [
        'A /home/app/d',
        'A /home/app/f',
        'C /home',
        'C /home/app',
      ]);
      await d.docker(['commit', 'u1', 'img-u1']);
      const owners = await d.docker([
        'run',
        '--rm',
        ...NET,
        'img-u1',
        'stat',
        '-c',
        '%n %u:%g %a',
        '/home/app',
        '/home/app/f',
        '/home/app/d',
        '/etc/passwd',
      ]);
      assert.equal(
        owners,
        `/home/app ${APP.uid}:${APP.gid} 755\n/home/app/f 1000:1000 644\n/home/app/d 1000:1000 755\n/etc/passwd 0:0 644\n`,
      );
    });

    const LOOP =
      'mkdir /data; i=0; while true; do echo $i > /data/counter.tmp && mv /data/counter.tmp /data/counter; echo $i >> /data/log; i=$((i+1)); done';

    /**
     * Checks an image committed from the LOOP container: the log holds every iteration in
     * order with no torn line, the counter is the last one logged or the next, and a
     * counter.tmp left over is empty or holds the next value. Resolves to the files of /data.
     */
    async function checkLoopImage(image: string): Promise<string[]> {
      const out = await d.docker([
        'run',
        '--rm',
        ...NET,
        image,
        'sh',
        '-c',
        'ls /data; echo ---; cat /data/counter; echo ---; cat /data/log; echo ---; cat /data/counter.tmp 2>/dev/null; true',
      ]);
      const [listing, counter, log, tmp] = out.split('---\n');
      const files = lines(listing);
      const logged = lines(log);
      assert.ok(logged.length > 20, `the loop ran: ${logged.length} iterations logged`);
      assert.deepEqual(
        logged,
        logged.map((_, i) => String(i)),
        'the log holds every iteration in order, no gap and no torn line',
      );
      const last = logged.length - 1;
      const c = counter.trim();
      assert.ok(
        c === String(last) || c === String(last + 1),
        `counter ${c} vs last logged ${last}`,
      );
      if (files.includes('counter.tmp')) {
        assert.equal(c, String(last), 'counter.tmp exists only when stopped before its mv');
        assert.ok(
          tmp === '' || tmp === `${last + 1}\n`,
          `counter.tmp holds ${JSON.stringify(tmp)}`,
        );
        assert.deepEqual(files, ['counter', 'counter.tmp', 'log']);
      } else {
        assert.deepEqual(files, ['counter', 'log']);
      }
      return files;
    }

    it('docker stop of a container writing in a loop leaves a consistent layer that commits', async () => {
      await d.docker(['run', '-d', '--name', 'looper', ...NET, 'bbox', 'sh', '-c', LOOP]);
      await sleep(2000);
      // sh as pid 1 ignores SIGTERM: after 1 s dockerd sends SIGKILL, mid-write.
      await d.docker(['stop', '-t', '1', 'looper']);
      assert.equal(
        (await d.docker(['container', 'inspect', '-f', '{{.State.ExitCode}}', 'looper'])).trim(),
        '137',
      );
      const diff = await dockerDiff(d, 'looper');
      await d.docker(['commit', 'looper', 'img-looper']);
      const files = await checkLoopImage('img-looper');
      assert.deepEqual(
        diff,
        ['A /data', ...files.map((f) => `A /data/${f}`)].sort(),
        'docker diff of the stopped container matches the committed image',
      );
    });

    it('docker commit of a running container writing in a loop (paused meanwhile) is consistent', async () => {
      await d.docker(['run', '-d', '--name', 'looper2', ...NET, 'bbox', 'sh', '-c', LOOP]);
      try {
        await sleep(1500);
        await d.docker(['commit', 'looper2', 'img-looper2']);
        assert.equal(
          (await d.docker(['container', 'inspect', '-f', '{{.State.Status}}', 'looper2'])).trim(),
          'running',
          'unpaused after the commit',
        );
      } finally {
        await d.docker(['rm', '-f', 'looper2']);
      }
      await checkLoopImage('img-looper2');
    });

    it('two containers of one image write the same file: each has its own, the image is unchanged', async () => {
      for (const [name, word] of [
        ['iso1', 'one'],
        ['iso2', 'two'],
      ])
        await d.docker([
          'run',
          '-d',
          '--name',
          name,
          ...NET,
          'bbox',
          'sh',
          '-c',
          `echo ${word} > /etc/group; sleep 2; cat /etc/group`,
        ]);
      assert.equal(await d.docker(['wait', 'iso1', 'iso2']), '0\n0\n');
      assert.equal(await d.docker(['logs', 'iso1']), 'one\n');
      assert.equal(await d.docker(['logs', 'iso2']), 'two\n');
      assert.equal(await d.docker(['run', '--rm', ...NET, 'bbox', 'cat', '/etc/group']), GROUP);
      await d.docker(['rm', 'iso1', 'iso2']);
    });

    it('four containers writing at once each keep their own data', async function () {
      this.timeout(180_000);
      const names = Array.from({ length: 4 }, (_, i) => `par${i}`);
      const script =
        'dd if=/dev/urandom of=/data.bin bs=64k count=64 2>/dev/null && i=0; while [ $i -lt 100 ]; do echo $i > /f$i; i=$((i+1)); done; sha256sum /data.bin > /data.sha';
      await Promise.all(
        names.map((n) => d.docker(['run', '-d', '--name', n, ...NET, 'bbox', 'sh', '-c', script])),
      );
      assert.equal(await d.docker(['wait', ...names]), '0\n'.repeat(names.length));
      const hashes = new Set<string>();
      for (const n of names) {
        const out = join(work, `${n}-out`);
        await mkdir(out);
        await d.docker(['cp', `${n}:/data.bin`, join(out, 'data.bin')]);
        await d.docker(['cp', `${n}:/data.sha`, join(out, 'data.sha')]);
        const data = await readFile(join(out, 'data.bin'));
        assert.equal(data.length, 64 * 65536, n);
        const hash = sha256(data);
        assert.equal(await readFile(join(out, 'data.sha'), 'utf8'), `${hash}  /data.bin\n`, n);
        hashes.add(hash);
        assert.equal((await dockerDiff(d, n)).length, 102, `${n}: /data.bin, /data.sha, 100 files`);
      }
      assert.equal(hashes.size, names.length, 'each container wrote its own data');
      await d.docker(['rm', ...names]);
    });

    it('a directory renamed in a container commits as its deletion and the new tree', async () => {
      await d.docker(['run', '--name', 'mv1', ...NET, 'bbox', 'sh', '-c', 'mv /usr/bin /usr/bin2']);
      const inUsrBin = [
        ...(await appletPaths())
          .filter((p) => p.startsWith('usr/bin/'))
          .map((p) => p.slice('usr/bin/'.length)),
        'capbin',
      ];
      assert.deepEqual(
        await dockerDiff(d, 'mv1'),
        ['C /usr', 'D /usr/bin', 'A /usr/bin2', ...inUsrBin.map((f) => `A /usr/bin2/${f}`)].sort(),
      );
      await d.docker(['commit', 'mv1', 'img-mv1']);
      const out = await d.docker([
        'run',
        '--rm',
        ...NET,
        'img-mv1',
        'sh',
        '-c',
        'ls /usr/bin 2>&1; ls /usr/bin2 | wc -l; readlink /usr/bin2/awk',
      ]);
      assert.equal(
        out,
        `ls: /usr/bin: No such file or directory\n${inUsrBin.length}\n/bin/busybox\n`,
      );
    });

    it('fifos, device nodes, setuid, setgid and sticky modes, and a directory chmod survive commit', async () => {
      await d.docker([
        'run',
        '--name',
        'sp1',
        ...NET,
        'bbox',
        'sh',
        '-c',
        [
          'mkdir /sp',
          'mkfifo /sp/fifo',
          'mknod /sp/chr c 1 3',
          'mknod /sp/blk b 7 0',
          'echo x > /sp/suid && chmod 4755 /sp/suid',
          'mkdir /sp/sticky && chmod 1777 /sp/sticky',
          'echo y > /sp/sgid && chmod 2711 /sp/sgid',
          'chmod 750 /home/app',
        ].join(' && '),
      ]);
      assert.deepEqual(await dockerDiff(d, 'sp1'), [
        'A /sp',
        'A /sp/blk',
        'A /sp/chr',
        'A /sp/fifo',
        'A /sp/sgid',
        'A /sp/sticky',
        'A /sp/suid',
        'C /home',
        'C /home/app',
      ]);
      await d.docker(['commit', 'sp1', 'img-sp']);
      const out = await d.docker([
        'run',
        '--rm',
        ...NET,
        'img-sp',
        'sh',
        '-c',
        "stat -c '%n|%F|%a|%t|%T' /sp/* && stat -c '%n|%F|%a|%u:%g' /home/app",
      ]);
      assert.equal(
        out,
        [
          '/sp/blk|block special file|644|7|0',
          '/sp/chr|character special file|644|1|3',
          '/sp/fifo|fifo|644|0|0',
          '/sp/sgid|regular file|2711|0|0',
          '/sp/sticky|directory|1777|0|0',
          '/sp/suid|regular file|4755|0|0',
          '/home/app|directory|750|1000:1000',
          '',
        ].join('\n'),
      );
    });

    it('a hard link to a file of the image commits as a self-contained layer tar (loads on overlay2)', async function () {
      this.timeout(180_000);
      await d.docker([
        'run',
        '--name',
        'hl1',
        ...NET,
        'bbox',
        'ln',
        '/etc/passwd',
        '/etc/passwd.hard',
      ]);
      assert.deepEqual(await dockerDiff(d, 'hl1'), ['A /etc/passwd.hard', 'C /etc']);
      await d.docker(['commit', 'hl1', 'img-hl1']);
      assert.equal(
        await d.docker(['run', '--rm', ...NET, 'img-hl1', 'cat', '/etc/passwd.hard']),
        PASSWD,
      );
      const saved = join(work, 'img-hl1.tar');
      await d.docker(['save', '-o', saved, 'img-hl1']);
      // What another host does with the image: overlay2 applies each layer tar into an empty
      // folder, so a hard link must point at an entry of the same tar.
      const overlay = await Dockerd.start({ storageDriver: 'overlay2', label: 'overlay2' });
      try {
        const loaded = await overlay.dockerRaw(['load', '-i', saved]);
        assert.equal(
          loaded.code,
          0,
          `docker load of the lcfs-committed image into an overlay2 dockerd:\n${loaded.stderr}`,
        );
        assert.equal(
          await overlay.docker(['run', '--rm', ...NET, 'img-hl1', 'cat', '/etc/passwd.hard']),
          PASSWD,
        );
      } finally {
        await overlay.dispose();
      }
      const layers = await savedLayers(saved, 'img-hl1:latest');
      const entries = scanTar(layers[layers.length - 1]);
      const seen = new Set<string>();
      for (const e of entries) {
        const name = e.name.replace(/^\.\//, '');
        if (e.typeflag === '1')
          assert.ok(
            seen.has(e.linkname.replace(/^\.?\//, '')),
            `hard link ${name} -> ${e.linkname}: its target is not an earlier entry of the layer tar`,
          );
        seen.add(name);
      }
    });
  });

  describe('builds', function () {
    let ctx: string;
    const ctxFiles: Record<string, { content: Buffer; mode: number }> = {
      'one.txt': { content: Buffer.from('one\n'), mode: 0o644 },
      'run.sh': { content: Buffer.from('#!/bin/sh\necho run\n'), mode: 0o755 },
      'sub/blob': {
        content: Buffer.from(Array.from({ length: 100_000 }, (_, i) => (i * 7919) % 251)),
        mode: 0o600,
      },
      'sub/deeper/empty': { content: Buffer.alloc(0), mode: 0o644 },
    };

    before(async () => {
      ctx = join(work, 'build');
      for (const [name, f] of Object.entries(ctxFiles)) {
        const path = join(ctx, 'ctx', name);
        await mkdir(join(path, '..'), { recursive: true });
        await writeFile(path, f.content);
        await chmod(path, f.mode);
      }
      await symlink('one.txt', join(ctx, 'ctx', 'link'));
    });

    /** The checks shared by the classic and the BuildKit builds; `many` files were made. */
    async function checkBuilt(image: string, many: number, bigBytes: number): Promise<void> {
      const out = await d.docker([
        'run',
        '--rm',
        ...NET,
        image,
        'sh',
        '-c',
        [
          'ls /many | wc -l',
          `cat /many/f0 /many/f${many - 1}`,
          'ls /many/f1 /many/f2 2>&1 || true',
          'stat -c %s /big',
          'sha256sum -c /big.sha256',
          'ls /usr/sbin /etc/group 2>&1 || true',
          'cd /copied && find . | sort',
          'readlink /copied/link',
          "find /copied -type f | sort | xargs stat -c '%n %a %u:%g %s'",
          'find /copied -type f | sort | xargs sha256sum',
        ].join('; '),
      ]);
      const files = Object.keys(ctxFiles).sort();
      const expected = [
        String(many - 2),
        'file 0',
        `file ${many - 1}`,
        'ls: /many/f1: No such file or directory',
        'ls: /many/f2: No such file or directory',
        String(bigBytes),
        '/big: OK',
        'ls: /usr/sbin: No such file or directory',
        'ls: /etc/group: No such file or directory',
        [
          '.',
          './link',
          './one.txt',
          './run.sh',
          './sub',
          './sub/blob',
          './sub/deeper',
          './sub/deeper/empty',
        ].join('\n'),
        'one.txt',
        ...files.map(
          (f) => `/copied/${f} ${ctxFiles[f].mode.toString(8)} 0:0 ${ctxFiles[f].content.length}`,
        ),
        ...files.map((f) => `${sha256(ctxFiles[f].content)}  /copied/${f}`),
        '',
      ].join('\n');
      assert.equal(out, expected);
    }

    function dockerfile(many: number, bigMiB: number): string {
      return [
        'FROM bbox',
        `RUN mkdir /many && i=0; while [ $i -lt ${many} ]; do echo "file $i" > /many/f$i; i=$((i+1)); done`,
        `RUN dd if=/dev/urandom of=/big bs=1M count=${bigMiB} 2>/dev/null && sha256sum /big > /big.sha256`,
        'RUN rm /many/f1 /many/f2 && rm -r /usr/sbin && rm /etc/group',
        'COPY ctx/ /copied/',
        '',
      ].join('\n');
    }

    it('classic build (DOCKER_BUILDKIT=0): 500 small files, a 64 MiB file, deletions, a COPY', async function () {
      this.timeout(240_000);
      await writeFile(join(ctx, 'Dockerfile'), dockerfile(500, 64));
      await d.docker(['build', ...NET, '-t', 'classic', ctx], { env: { DOCKER_BUILDKIT: '0' } });
      assert.equal(
        (await d.docker(['image', 'inspect', '-f', '{{len .RootFS.Layers}}', 'classic'])).trim(),
        '5',
      );
      await checkBuilt('classic', 500, BIG_BYTES);
    });

    it('a one-byte write into the 64 MiB file: SizeRw is the whole file, commit keeps every other byte', async function () {
      this.timeout(240_000);
      // Uses the image classic of the classic build.
      const probe =
        'head -c 1000 /big | sha256sum; tail -c +1002 /big | sha256sum; head -c 1001 /big | tail -c 1 | od -An -tx1; stat -c %s /big';
      const before = lines(await d.docker(['run', '--rm', ...NET, 'classic', 'sh', '-c', probe]));
      await d.docker([
        'run',
        '--name',
        'big1',
        ...NET,
        'classic',
        'sh',
        '-c',
        'printf X | dd of=/big bs=1 seek=1000 conv=notrunc 2>/dev/null',
      ]);
      assert.deepEqual(await dockerDiff(d, 'big1'), ['C /big']);
      assert.equal(
        Number(await d.docker(['container', 'inspect', '--size', '-f', '{{.SizeRw}}', 'big1'])),
        BIG_BYTES,
      );
      await d.docker(['commit', 'big1', 'img-big1']);
      const after = lines(await d.docker(['run', '--rm', ...NET, 'img-big1', 'sh', '-c', probe]));
      assert.equal(after[0], before[0], 'bytes before the write');
      assert.equal(after[1], before[1], 'bytes after the write');
      assert.equal(after[2].trim(), '58', 'the byte written');
      assert.equal(after[3], String(BIG_BYTES));
    });

    it("BuildKit build (DOCKER_BUILDKIT=1) with Debian's 20.10 client", async function () {
      this.timeout(240_000);
      // The v28 client needs the buildx plugin for BuildKit, and this machine has none (no
      // package ships it offline); Debian's own 20.10 client carries BuildKit's client itself.
      try {
        await access(DOCKER_CLI_20, constants.X_OK);
      } catch {
        console.log(
          `      skipped: ${DOCKER_CLI_20} (Debian's docker.io client) is missing, and the v28 client needs buildx for BuildKit`,
        );
        this.skip();
      }
      const dir = join(work, 'buildkit');
      await mkdir(dir);
      await execOk(['cp', '-a', join(ctx, 'ctx'), join(dir, 'ctx')]);
      await writeFile(join(dir, 'Dockerfile'), dockerfile(200, 8));
      await d.docker(['build', ...NET, '--progress', 'plain', '-t', 'kit', dir], {
        cli: DOCKER_CLI_20,
        env: { DOCKER_BUILDKIT: '1' },
      });
      assert.equal(
        (await d.docker(['image', 'inspect', '-f', '{{len .RootFS.Layers}}', 'kit'])).trim(),
        '5',
      );
      await checkBuilt('kit', 200, 8 * 1024 * 1024);
    });
  });

  describe('--storage-opt size (layer quota)', function () {
    it('writes fit up to the quota, beyond it fail with ENOSPC, and removing files frees it', async () => {
      const out = await d.docker([
        'run',
        '--name',
        'q1',
        '--storage-opt',
        'size=16M',
        ...NET,
        'bbox',
        'sh',
        '-c',
        [
          'dd if=/dev/zero of=/f1 bs=1M count=8 2>/dev/null && echo f1-ok',
          'dd if=/dev/zero of=/f2 bs=1M count=16 2>&1 | grep -o "No space left on device" | head -n1',
          'echo $(( $(stat -c %s /f1) + $(stat -c %s /f2) ))',
          'rm /f1 /f2 && dd if=/dev/zero of=/f3 bs=1M count=12 2>/dev/null && echo f3-ok',
        ].join('; '),
      ]);
      const [f1, enospc, total, f3] = lines(out);
      assert.equal(f1, 'f1-ok');
      assert.equal(enospc, 'No space left on device');
      assert.ok(Number(total) <= 16 * 1024 * 1024, `f1 + f2 = ${total} bytes, over the quota`);
      assert.ok(Number(total) >= 15 * 1024 * 1024, `f1 + f2 = ${total} bytes, far under the quota`);
      assert.equal(f3, 'f3-ok');
      assert.deepEqual(await dockerDiff(d, 'q1'), ['A /f3']);
      assert.equal(
        Number(await d.docker(['container', 'inspect', '--size', '-f', '{{.SizeRw}}', 'q1'])),
        12 * 1024 * 1024,
      );
    });

    it("an unsupported storage option fails docker run with the plugin's reason and leaves no layer", async () => {
      const layersBefore = (await driverStatus(d)).Layers;
      const r = await provoking(() =>
        d.dockerRaw(['run', '--rm', '--storage-opt', 'foo=bar', ...NET, 'bbox', 'true']),
      );
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /storage option foo is not supported/);
      assert.equal((await driverStatus(d)).Layers, layersBefore);
    });
  });

  describe('security.capability', function () {
    it('survives import, a rename in a container, and commit (checked on the mount with getfattr)', async () => {
      const base = await driverData(d, 'image', 'bbox');
      assert.equal(await capabilityOf(join(base.Dir, 'usr/bin/capbin')), CAP_B64);
      await d.docker([
        'run',
        '--name',
        'capc',
        ...NET,
        'bbox',
        'sh',
        '-c',
        'mv /usr/bin/capbin /usr/bin/capbin2 && echo m > /marker',
      ]);
      assert.deepEqual(await dockerDiff(d, 'capc'), [
        'A /marker',
        'A /usr/bin/capbin2',
        'C /usr',
        'C /usr/bin',
        'D /usr/bin/capbin',
      ]);
      const ctr = await driverData(d, 'container', 'capc');
      assert.equal(await capabilityOf(join(ctr.Dir, 'usr/bin/capbin2')), CAP_B64);
      await d.docker(['commit', 'capc', 'capimg']);
      const top = await driverData(d, 'image', 'capimg');
      assert.notEqual(top.LayerId, ctr.LayerId);
      assert.equal(await capabilityOf(join(top.Dir, 'usr/bin/capbin2')), CAP_B64);
      // The commit's layer tar (the plugin's Diff, kept by dockerd) carries it as a PAX record.
      const saved = join(work, 'capimg.tar');
      await d.docker(['save', '-o', saved, 'capimg']);
      const layers = await savedLayers(saved, 'capimg:latest');
      const entry = scanTar(layers[layers.length - 1]).find(
        (e) => e.name.replace(/^\.\//, '') === 'usr/bin/capbin2',
      );
      assert.ok(entry, 'usr/bin/capbin2 is in the committed layer');
      assert.deepEqual(entry.pax.get('SCHILY.xattr.security.capability'), CAP_VALUE);
    });
  });

  describe('save from lcfs, load into a vfs dockerd', function () {
    let vfs: Dockerd;

    before(async function () {
      this.timeout(120_000);
      vfs = await Dockerd.start({ storageDriver: 'vfs', label: 'vfs' });
    });

    after(async function () {
      this.timeout(120_000);
      if (vfs) await vfs.dispose();
    });

    it('classic, capimg and img-sp load into vfs with the same ids, every file identical', async function () {
      this.timeout(300_000);
      // Uses the images classic (classic build), capimg (security.capability) and img-sp
      // (device nodes, fifo, setuid) made above.
      const archive = join(work, 'save.tar');
      await d.docker(['save', '-o', archive, 'classic', 'capimg', 'img-sp']);
      await vfs.docker(['load', '-i', archive]);
      for (const [image, minFiles] of [
        ['classic', 500],
        ['capimg', 5],
        ['img-sp', 5],
      ] as const) {
        const fmt = '{{.Id}} {{json .RootFS.Layers}}';
        assert.equal(
          await vfs.docker(['image', 'inspect', '-f', fmt, image]),
          await d.docker(['image', 'inspect', '-f', fmt, image]),
          `${image}: image id and diff ids`,
        );
        const [onLcfs, onVfs] = [await listRootfs(d, image), await listRootfs(vfs, image)];
        assert.ok(onLcfs.hashes.length > minFiles, `${image}: ${onLcfs.hashes.length} files`);
        assert.deepEqual(
          onLcfs.hashes,
          onVfs.hashes,
          `${image}: sha256 of every file, lcfs vs vfs`,
        );
        assert.deepEqual(
          onLcfs.metadata,
          onVfs.metadata,
          `${image}: type, mode, owner, size (and file mtimes), lcfs vs vfs`,
        );
      }
    });

    it('security.capability arrives on vfs from the lcfs-saved image', async () => {
      const dirs = join(vfs.dataRoot, 'vfs', 'dir');
      const copies: string[] = [];
      for (const layer of await readdir(dirs)) {
        const path = join(dirs, layer, 'usr/bin/capbin2');
        if ((await exec(['test', '-f', path])).code === 0) copies.push(path);
      }
      assert.ok(copies.length >= 1, 'capimg has a layer on vfs holding usr/bin/capbin2');
      for (const path of copies) assert.equal(await capabilityOf(path), CAP_B64, path);
    });

    it("an image built on vfs (moby's own layer tars: whiteouts, hard links, xattrs) loads into lcfs identical", async function () {
      this.timeout(240_000);
      await vfs.docker(['import', baseTar, 'bbox:latest']);
      const dir = join(work, 'vfs-build');
      await mkdir(dir);
      await writeFile(
        join(dir, 'Dockerfile'),
        [
          'FROM bbox',
          'RUN mkdir /many && i=0; while [ $i -lt 100 ]; do echo "v $i" > /many/f$i; i=$((i+1)); done && ln /many/f0 /many/hard0 && mkfifo /many/fifo',
          'RUN dd if=/dev/urandom of=/big bs=1M count=4 2>/dev/null && ln /big /big.hard',
          'RUN rm -r /usr/sbin /many/f5 /home && mkdir -p /home/x && echo x > /home/x/f && mv /usr/bin/capbin /capbin2 && echo z >> /etc/passwd',
          '',
        ].join('\n'),
      );
      await vfs.docker(['build', ...NET, '-t', 'vfs-built', dir], {
        env: { DOCKER_BUILDKIT: '0' },
      });
      const archive = join(work, 'vfs-built.tar');
      await vfs.docker(['save', '-o', archive, 'vfs-built']);
      await d.docker(['load', '-i', archive]);
      const fmt = '{{.Id}} {{json .RootFS.Layers}}';
      assert.equal(
        await d.docker(['image', 'inspect', '-f', fmt, 'vfs-built']),
        await vfs.docker(['image', 'inspect', '-f', fmt, 'vfs-built']),
      );
      const [onLcfs, onVfs] = [
        await listRootfs(d, 'vfs-built'),
        await listRootfs(vfs, 'vfs-built'),
      ];
      assert.deepEqual(onLcfs.hashes, onVfs.hashes, 'sha256 of every file, lcfs vs vfs');
      assert.deepEqual(onLcfs.metadata, onVfs.metadata, 'metadata of every entry, lcfs vs vfs');
      const links = 'stat -c "%n %h %i" /many/f0 /many/hard0 /big /big.hard';
      const inodes = lines(await d.docker(['run', '--rm', ...NET, 'vfs-built', 'sh', '-c', links]));
      assert.deepEqual(
        inodes.map((l) => l.split(' ')[1]),
        ['2', '2', '2', '2'],
        `hard links kept: ${inodes.join(', ')}`,
      );
      assert.equal(inodes[0].split(' ')[2], inodes[1].split(' ')[2]);
      assert.equal(inodes[2].split(' ')[2], inodes[3].split(' ')[2]);
      const top = await driverData(d, 'image', 'vfs-built');
      assert.equal(await capabilityOf(join(top.Dir, 'capbin2')), CAP_B64);
    });
  });

  describe('malformed requests, unknown layers and hostile tars', function () {
    let errorLinesBefore: number;

    before(() => {
      errorLinesBefore = agent.logs.filter((l) => (l.level ?? 0) >= 50).length;
    });

    async function assertAgentServes(): Promise<void> {
      assert.ok(agent.running, 'the agent still runs');
      const status = await pluginPost(agent.socketPath, '/GraphDriver.Status', '{}');
      assert.equal(status.status, 200);
      await d.docker(['run', '--rm', ...NET, 'bbox', 'true']);
    }

    it('malformed JSON and ill-typed fields: 400 with an Err naming the problem', async () => {
      const cases: Array<[string, string, RegExp]> = [
        ['/GraphDriver.Create', '{not json', /JSON/],
        ['/GraphDriver.Get', '{"ID": "abc"', /JSON/],
        ['/GraphDriver.Create', '[1, 2]', /JSON object/],
        ['/GraphDriver.Get', '{"ID": 5}', /ID/],
        ['/GraphDriver.Remove', '{}', /ID/],
        ['/GraphDriver.Create', '{"ID": "x", "Parent": 7}', /Parent/],
      ];
      for (const [path, body, problem] of cases) {
        const reply = await pluginPost(agent.socketPath, path, body);
        const err = errOf(reply);
        assert.equal(reply.status, 400, `${path} ${body}: ${reply.body.toString()}`);
        assert.ok(
          err && problem.test(err),
          `${path} ${body}: Err ${JSON.stringify(err)} should match ${problem}`,
        );
      }
      await assertAgentServes();
    });

    it('unknown layer ids: an error status with an Err naming the layer', async () => {
      const ghost = 'no-such-layer-0123456789';
      const calls: Array<[string, Record<string, unknown>]> = [
        ['/GraphDriver.Get', { ID: ghost }],
        ['/GraphDriver.Put', { ID: ghost }],
        ['/GraphDriver.GetMetadata', { ID: ghost }],
        ['/GraphDriver.Changes', { ID: ghost }],
        ['/GraphDriver.DiffSize', { ID: ghost }],
        ['/GraphDriver.Diff', { ID: ghost }],
        ['/GraphDriver.Create', { ID: 'child-of-a-ghost', Parent: ghost }],
      ];
      for (const [path, body] of calls) {
        const reply = await pluginPost(agent.socketPath, path, body);
        const err = errOf(reply);
        assert.ok(reply.status >= 400, `${path}: status ${reply.status}: ${reply.body.toString()}`);
        assert.ok(err?.includes(ghost), `${path}: Err ${JSON.stringify(err)} should name ${ghost}`);
        assert.match(err ?? '', /not found/);
      }
      const applied = await pluginPost(
        agent.socketPath,
        `/GraphDriver.ApplyDiff?id=${ghost}&parent=`,
        await buildTar([{ name: 'f', content: 'x' }]),
      );
      assert.ok(applied.status >= 400, `ApplyDiff onto ${ghost}: ${applied.status}`);
      assert.ok(errOf(applied)?.includes(ghost), `ApplyDiff Err: ${applied.body.toString()}`);
      const exists = await pluginPost(agent.socketPath, '/GraphDriver.Exists', { ID: ghost });
      assert.equal(exists.status, 200);
      assert.deepEqual(exists.json, { Exists: false });
      const created = await pluginPost(agent.socketPath, '/GraphDriver.Exists', {
        ID: 'child-of-a-ghost',
      });
      assert.deepEqual(created.json, { Exists: false }, 'a refused Create leaves no layer');
      await assertAgentServes();
    });

    it('hostile tars posted to ApplyDiff are refused, naming the entry, and leave the layer untouched', async () => {
      const parent = (await driverData(d, 'image', 'bbox')).LayerId;
      const hostile: Array<[string, TarEntrySpec[], string]> = [
        ['a name climbing out', [{ name: '../../etc/evil', content: 'evil' }], '../../etc/evil'],
        ['an absolute name', [{ name: '/etc/evil', content: 'evil' }], '/etc/evil'],
        [
          'a write through a symlink to /etc',
          [
            { name: 'link', type: 'symlink', linkname: '/etc' },
            { name: 'link/evil', content: 'evil' },
          ],
          'link/evil',
        ],
        ['a hard link out', [{ name: 'hl', type: 'link', linkname: '../../etc/passwd' }], 'hl'],
      ];
      for (const [i, [what, evil, entryName]] of hostile.entries()) {
        const id = `hostile-${i}-${agent.pluginName}`;
        const created = await pluginPost(agent.socketPath, '/GraphDriver.Create', {
          ID: id,
          Parent: parent,
        });
        assert.equal(created.status, 200, created.body.toString());
        const tar = await buildTar([
          { name: 'ok.txt', content: 'harmless, before the bad entry' },
          { name: 'bin/.wh.ls' },
          ...evil,
          { name: 'trailer', content: 'after the bad entry' },
        ]);
        const reply = await pluginPost(
          agent.socketPath,
          `/GraphDriver.ApplyDiff?id=${id}&parent=${parent}`,
          tar,
        );
        const err = errOf(reply);
        assert.ok(reply.status >= 400, `${what}: status ${reply.status}: ${reply.body.toString()}`);
        assert.ok(
          err?.includes(entryName),
          `${what}: Err ${JSON.stringify(err)} should name ${entryName}`,
        );
        assert.match(err ?? '', /LCFS_ETAR_UNSAFE/, what);
        const changes = await pluginPost(agent.socketPath, '/GraphDriver.Changes', {
          ID: id,
          Parent: parent,
        });
        assert.equal(changes.status, 200);
        assert.deepEqual(changes.json, { Changes: [] }, `${what}: nothing half-applied`);
        const removed = await pluginPost(agent.socketPath, '/GraphDriver.Remove', { ID: id });
        assert.equal(removed.status, 200, removed.body.toString());
      }
      for (const path of [
        '/etc/evil',
        join(agent.dataDir, 'etc/evil'),
        join(agent.dataDir, 'evil'),
        join(agent.mountpoint, 'evil'),
      ])
        assert.equal((await exec(['test', '-e', path])).code, 1, `${path} must not exist`);
      await assertAgentServes();
    });

    it("docker import of a hostile tar fails with the plugin's reason and leaves no layer", async () => {
      const layersBefore = (await driverStatus(d)).Layers;
      const tarPath = join(work, 'hostile.tar');
      await writeFile(
        tarPath,
        await buildTar([
          { name: 'ok.txt', content: 'fine' },
          { name: '../../etc/evil', content: 'evil' },
        ]),
      );
      const r = await provoking(() => d.dockerRaw(['import', tarPath, 'evil:latest']));
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /LCFS_ETAR_UNSAFE: unsafe tar entry "\.\.\/\.\.\/etc\/evil"/);
      assert.equal(
        (await d.dockerRaw(['image', 'inspect', 'evil:latest'])).code,
        1,
        'no image evil',
      );
      assert.equal((await driverStatus(d)).Layers, layersBefore, 'no layer left behind');
      await assertAgentServes();
    });

    it('the agent logged no error for any of these refusals', () => {
      const errors = agent.logs.filter((l) => (l.level ?? 0) >= 50).slice(errorLinesBefore);
      assert.deepEqual(errors, []);
    });
  });

  describe('a Remove whose reply dockerd never saw', function () {
    it("docker rm succeeds when the container's layer is already gone (Remove is idempotent, as in vfs and overlay2)", async () => {
      // dockerd retries a plugin call whose connection broke, and a dockerd that crashed
      // after Remove retries it at the next rm: either way Remove comes again for a layer the
      // store already removed. vfs and overlay2 answer success for a missing layer.
      const layersBefore = (await driverStatus(d)).Layers;
      await d.docker(['run', '--name', 'gone1', ...NET, 'bbox', 'true']);
      const rw = await driverData(d, 'container', 'gone1');
      const removed = await pluginPost(agent.socketPath, '/GraphDriver.Remove', { ID: rw.LayerId });
      assert.equal(removed.status, 200, removed.body.toString());
      const r = await provoking(() => d.dockerRaw(['rm', 'gone1']));
      try {
        assert.equal(r.code, 0, `docker rm of the container whose layer is gone:\n${r.stderr}`);
        assert.equal((await driverStatus(d)).Layers, layersBefore, 'its init layer went too');
      } finally {
        if ((await d.dockerRaw(['container', 'inspect', 'gone1'])).code === 0) {
          // Give dockerd its layer back so that the container can go and later tests start clean.
          await pluginPost(agent.socketPath, '/GraphDriver.Create', {
            ID: rw.LayerId,
            Parent: rw.Parent,
          });
          await provoking(() => d.docker(['rm', 'gone1']));
        }
      }
    });
  });

  describe('a crash right after a reply', function () {
    let parent: string;
    let layersBefore: string;
    const id = (): string => `crash-applied-${agent.pluginName}`;

    before(async () => {
      parent = (await driverData(d, 'image', 'bbox')).LayerId;
      layersBefore = (await driverStatus(d)).Layers;
    });

    /** SIGKILL at once, then start again on the same data dir. */
    async function crashAndRestart(): Promise<void> {
      await agent.kill();
      crashRuns.push(agent.runCount + 1);
      await agent.start();
    }

    it('a layer whose Create and ApplyDiff were answered is whole after a SIGKILL', async function () {
      this.timeout(120_000);
      const big = Buffer.from(Array.from({ length: 1 << 20 }, (_, i) => (i * 131) % 256));
      const entries: TarEntrySpec[] = [
        { name: 'crash/', type: 'directory' },
        ...Array.from({ length: 40 }, (_, i) => ({
          name: `crash/f${i}`,
          content: Buffer.alloc(65536, i),
        })),
        { name: 'crash/big', content: big },
        { name: 'bin/.wh.ls' },
      ];
      const created = await pluginPost(agent.socketPath, '/GraphDriver.Create', {
        ID: id(),
        Parent: parent,
      });
      assert.equal(created.status, 200, created.body.toString());
      const applied = await pluginPost(
        agent.socketPath,
        `/GraphDriver.ApplyDiff?id=${id()}&parent=${parent}`,
        await buildTar(entries),
      );
      await crashAndRestart();
      assert.equal(applied.status, 200, applied.body.toString());
      assert.deepEqual(applied.json, { Size: 40 * 65536 + big.length });

      const exists = await pluginPost(agent.socketPath, '/GraphDriver.Exists', { ID: id() });
      assert.deepEqual(exists.json, { Exists: true });
      const changes = await pluginPost(agent.socketPath, '/GraphDriver.Changes', {
        ID: id(),
        Parent: parent,
      });
      assert.equal(changes.status, 200, changes.body.toString());
      const list = (changes.json as { Changes: Array<{ Path: string; Kind: number }> }).Changes.map(
        (c) => `${c.Kind} ${c.Path}`,
      ).sort();
      assert.deepEqual(
        list,
        [
          '0 /bin',
          '2 /bin/ls',
          '1 /crash',
          '1 /crash/big',
          ...Array.from({ length: 40 }, (_, i) => `1 /crash/f${i}`),
        ].sort(),
      );
      const size = await pluginPost(agent.socketPath, '/GraphDriver.DiffSize', {
        ID: id(),
        Parent: parent,
      });
      assert.deepEqual(size.json, { Size: 40 * 65536 + big.length });
      assert.equal(sha256(await readFile(join(agent.mountpoint, id(), 'crash/big'))), sha256(big));
      assert.equal(
        sha256(await readFile(join(agent.mountpoint, id(), 'crash/f39'))),
        sha256(Buffer.alloc(65536, 39)),
      );
    });

    it('a layer whose Remove was answered stays removed after a SIGKILL', async function () {
      this.timeout(120_000);
      const removed = await pluginPost(agent.socketPath, '/GraphDriver.Remove', { ID: id() });
      await crashAndRestart();
      assert.equal(removed.status, 200, removed.body.toString());
      const exists = await pluginPost(agent.socketPath, '/GraphDriver.Exists', { ID: id() });
      assert.deepEqual(exists.json, { Exists: false });
      assert.equal((await driverStatus(d)).Layers, layersBefore);
      // dockerd, which ran throughout, still gets containers from the new agent.
      assert.equal(await d.docker(['run', '--rm', ...NET, 'bbox', 'cat', '/etc/group']), GROUP);
    });
  });

  describe('restarts', function () {
    const persistScript =
      'if [ -f /data/p.txt ]; then cat /data/p.txt; else mkdir /data && echo persisted > /data/p.txt && echo wrote; fi';

    async function snapshot(): Promise<{ images: string; containers: string }> {
      const images = lines(
        await d.docker(['images', '--no-trunc', '--format', '{{.ID}} {{.Repository}}:{{.Tag}}']),
      )
        .sort()
        .join('\n');
      const containers = lines(
        await d.docker(['ps', '-a', '--no-trunc', '--format', '{{.ID}} {{.Names}} {{.Image}}']),
      )
        .sort()
        .join('\n');
      return { images, containers };
    }

    /** After a restart: everything is listed as before, and the containers see their files. */
    async function checkAfterRestart(
      before: { images: string; containers: string },
      boots: number,
    ): Promise<void> {
      assert.deepEqual(await snapshot(), before);
      assert.equal(await d.docker(['start', '-a', 'persist1']), 'persisted\n');
      assert.deepEqual(await dockerDiff(d, 'persist1'), ['A /data', 'A /data/p.txt']);
      assert.equal(
        await d.docker(['diff', 'w1']).then((t) => lines(t).length),
        13,
        'w1 keeps its changes',
      );
      const always = await waitRunning('always1');
      assert.ok(always, 'the --restart always container is running again');
      assert.equal(await d.docker(['exec', 'always1', 'cat', '/data/boots']), 'up\n'.repeat(boots));
      assert.equal(
        await d.docker(['run', '--rm', ...NET, 'classic', 'sha256sum', '-c', '/big.sha256']),
        '/big: OK\n',
      );
    }

    async function waitRunning(name: string): Promise<boolean> {
      for (let i = 0; i < 100; i++) {
        const state = (
          await d.docker(['container', 'inspect', '-f', '{{.State.Running}}', name])
        ).trim();
        if (state === 'true') return true;
        await sleep(100);
      }
      return false;
    }

    before(async () => {
      assert.equal(
        await d.docker(['run', '--name', 'persist1', ...NET, 'bbox', 'sh', '-c', persistScript]),
        'wrote\n',
      );
      await d.docker([
        'run',
        '-d',
        '--name',
        'always1',
        '--restart',
        'always',
        '--stop-timeout',
        '1',
        ...NET,
        'bbox',
        'sh',
        '-c',
        'mkdir -p /data && echo up >> /data/boots && exec sleep 100000',
      ]);
      assert.ok(await waitRunning('always1'));
    });

    it('dockerd restarts while the agent keeps running: images and containers persist', async function () {
      this.timeout(240_000);
      const before = await snapshot();
      const stopped = await d.stop();
      assert.deepEqual(stopped, { code: 0, signal: null }, 'dockerd exits 0 on SIGTERM');
      assert.ok(agent.running);
      await d.start();
      await checkAfterRestart(before, 2);
    });

    it('the agent restarts (SIGTERM, exit 0, start again) between two dockerd runs', async function () {
      this.timeout(240_000);
      const before = await snapshot();
      assert.deepEqual(await d.stop(), { code: 0, signal: null });
      await agent.stop();
      await agent.start();
      await d.start();
      await checkAfterRestart(before, 3);
    });

    it('the agent is killed (SIGKILL) with dockerd stopped: the next start clears the stale mount and has everything', async function () {
      this.timeout(240_000);
      const before = await snapshot();
      assert.deepEqual(await d.stop(), { code: 0, signal: null });
      await agent.kill();
      assert.equal((await agent.exited()).signal, 'SIGKILL');
      crashRuns.push(agent.runCount + 1);
      await agent.start();
      await d.start();
      await checkAfterRestart(before, 4);
    });
  });

  describe('rm and rmi', function () {
    it('after removing every container, image and build cache, the store holds no layer and no chunk file', async function () {
      this.timeout(240_000);
      const containers = lines(await d.docker(['ps', '-aq']));
      if (containers.length > 0) await d.docker(['rm', '-f', ...containers]);
      // Tags first, so that untagged parents (the classic builder's steps) go with their child.
      const tags = lines(await d.docker(['images', '--format', '{{.Repository}}:{{.Tag}}']));
      if (tags.length > 0) await d.docker(['rmi', ...tags]);
      const untagged = [...new Set(lines(await d.docker(['images', '-aq', '--no-trunc'])))];
      if (untagged.length > 0) await d.docker(['rmi', ...untagged]);
      await d.docker(['builder', 'prune', '-af']);
      assert.deepEqual(lines(await d.docker(['ps', '-aq'])), []);
      assert.deepEqual(lines(await d.docker(['images', '-aq'])), []);
      const status = await driverStatus(d);
      assert.equal(status.Layers, '0', JSON.stringify(status));
      assert.equal(status['Frozen Layers'], '0', JSON.stringify(status));
      let chunks = await agent.chunkFiles();
      for (let i = 0; i < 50 && chunks.length > 0; i++) {
        await sleep(200);
        chunks = await agent.chunkFiles();
      }
      assert.deepEqual(
        chunks,
        [],
        'store/chunks/sealed and mutable hold no files 10 s after the last rmi',
      );
    });
  });

  describe('logs', function () {
    it('the agent warned only about the crash it recovered from, and logged no error', () => {
      const problems = agent.problems().map((l) => `run ${l.run} level ${l.level}: ${l.msg}`);
      assert.ok(crashRuns.length >= 1);
      assert.deepEqual(
        problems,
        crashRuns.flatMap((run) => [
          `run ${run} level 40: took over the lock of an agent that is no longer running`,
          `run ${run} level 40: cleared a stale FUSE mount left by a crash`,
        ]),
      );
    });

    it('dockerd logged no error but those the tests provoked on purpose', async () => {
      const unexpected = lines(await d.logText()).filter(
        (l, i) => isErrorLine(l) && !provokedErrors.has(i) && !isContainerdReconnect(l),
      );
      assert.deepEqual(unexpected, []);
    });
  });
});

/**
 * dockerd's event stream from its own containerd breaks when that containerd stops, as in the
 * restart tests, and dockerd logs it at error level whatever the storage driver.
 */
function isContainerdReconnect(line: string): boolean {
  return line.includes('module=libcontainerd') && line.includes('transport is closing');
}

function isErrorLine(line: string): boolean {
  return line.includes('level=error') || line.includes('level=fatal');
}

/** The layer tars of `tag` in a `docker save` archive, bottom first. */
async function savedLayers(archive: string, tag: string): Promise<Buffer[]> {
  const dir = await mkdtemp(join(tmpdir(), 'lcfs-docker-save-'));
  try {
    await execOk(['tar', '-C', dir, '-xf', archive]);
    const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as Array<{
      RepoTags: string[] | null;
      Layers: string[];
    }>;
    const image = manifest.find((m) => m.RepoTags?.includes(tag));
    assert.ok(image, `${tag} in the saved manifest`);
    return await Promise.all(image.Layers.map((l) => readFile(join(dir, l))));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
