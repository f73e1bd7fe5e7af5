/**
 * Real workloads through the LCFS mount: a busybox rootfs plus a generated 10,000-file tree
 * unpacked with tar into a layer, checked byte for byte; a child layer modified and checked
 * against the same modifications done on the local disk; and stat latency in one layer while a
 * large write runs in another.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdir, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SeededRandom } from '../fs/helpers/prng.js';
import { ChangeKind, type Change } from '../../fs/index.js';
import { disposeAll, makeTempRoot, startVolume, type Volume } from './helpers/volume-process.js';
import { q, shOk, sleep, USER } from './helpers/shell.js';
import {
  buildBusyboxRootfs,
  buildGeneratedTree,
  manifest,
  manifestDiff,
  type GeneratedTree,
} from './helpers/trees.js';

const SEED = Number(process.env.LCFS_TEST_SEED ?? 20_240_601);
/** 10,000 by default; LCFS_TEST_FUSE_FILES changes it (for debugging only). */
const FILES = Number(process.env.LCFS_TEST_FUSE_FILES ?? 10_000);

describe('FUSE volume: real workloads', function () {
  this.timeout(120_000);
  let vol: Volume;
  let mnt: string;
  let work: string;

  before(async function () {
    this.timeout(60_000);
    work = await makeTempRoot('lcfs-fuse-work-');
    vol = await startVolume();
    mnt = vol.mountpoint;
  });
  after(async function () {
    this.timeout(60_000);
    await disposeAll();
    if (work) await rm(work, { recursive: true, force: true });
  });

  describe('a busybox rootfs and a 10,000-file tree, unpacked with tar', () => {
    let src: string;
    let tree: GeneratedTree;
    let srcManifest: string[];
    let base: string;
    let child: string;

    before(async function () {
      this.timeout(120_000);
      const rng = new SeededRandom(SEED);
      console.log(`      seed ${SEED} (set LCFS_TEST_SEED to replay)`);
      src = join(work, 'src');
      await mkdir(src);
      const t0 = performance.now();
      const applets = await buildBusyboxRootfs(src, rng);
      tree = await buildGeneratedTree(src, 'data', FILES, rng);
      await utimes(src, 1_111_111_111.25, 1_111_111_111.25);
      console.log(
        `      built ${applets} applet links + ${tree.files} files (${(tree.bytes / 2 ** 20).toFixed(1)} MiB, ` +
          `${tree.dirs.length} dirs) in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
      );
      await shOk(
        `tar --format=posix --numeric-owner --xattrs --xattrs-include='user.*' -C ${q(src)} -cf ${q(join(work, 'rootfs.tar'))} .`,
      );
      srcManifest = await manifest(src);
      assert.ok(srcManifest.length > FILES + 269, `manifest has ${srcManifest.length} lines`);
    });

    it('tar -x into a layer through the mount reproduces the tree byte for byte', async () => {
      await vol.call('createLayer', 'base', null);
      base = join(mnt, 'base');
      const t0 = performance.now();
      await shOk(
        `tar --numeric-owner --same-owner -p --xattrs --xattrs-include='user.*' -C ${q(base)} -xf ${q(join(work, 'rootfs.tar'))}`,
        { timeoutMs: 110_000 },
      );
      console.log(
        `      tar -x through the mount: ${((performance.now() - t0) / 1000).toFixed(1)} s`,
      );
      const got = await manifest(base);
      assert.ok(
        got.length === srcManifest.length && got.every((l, i) => l === srcManifest[i]),
        manifestDiff(srcManifest, got),
      );
    });

    it('the unpacked busybox runs from the layer, chrooted, as root and as another user', async () => {
      const out = await shOk(
        `chroot ${q(base)} /bin/sh -c 'echo $((6*7)); ls /bin | wc -l; cat /etc/passwd | wc -l; echo hello | /usr/bin/md5sum; id -u'`,
      );
      assert.equal(
        out,
        `42\n${(await readdir(join(work, 'src', 'bin'))).length}\n2\nb1946ac92492d2347c6235b4d2611184  -\n0\n`,
      );
      const asUser = await shOk(
        `chroot --userspec=${USER.uid}:${USER.gid} ${q(base)} /bin/sh -c 'id -u; echo $HOME; ls /root 2>&1; true'`,
      );
      assert.match(asUser, /^1000\n/);
      assert.match(asUser, /Permission denied/);
    });

    it('creating a child freezes the tree; the child takes changes, deletions and additions', async () => {
      const t0freeze = performance.now();
      await withTimeout(
        vol.call('createLayer', 'child', 'base'),
        30_000,
        'createLayer child of the unpacked tree (freezes it)',
      );
      console.log(
        `      createLayer child (freezing ${FILES} files): ${(performance.now() - t0freeze).toFixed(0)} ms`,
      );
      assert.equal((await vol.call('layer', 'base')).state, 'frozen');
      child = join(mnt, 'child');

      // The same modifications, on a local copy (the expectation) and in the child layer.
      const expected = join(work, 'expected');
      await shOk(`cp -a ${q(src)} ${q(expected)}`);
      const plan = planModifications(tree);
      const t0 = Math.floor(Date.now() / 1000) - 2;
      for (const dir of [expected, child]) {
        await shOk(plan.script, { cwd: dir });
        // Times the script set to "now" differ between the two runs: pin them.
        await shOk(`find . -newermt @${t0} -exec touch -h -d @1600000000.5 {} +`, { cwd: dir });
      }

      const [want, got] = await Promise.all([manifest(expected), manifest(child)]);
      assert.ok(
        got.length === want.length && got.every((l, i) => l === want[i]),
        manifestDiff(want, got),
      );

      // The parent is untouched.
      const baseNow = await manifest(base);
      assert.ok(
        baseNow.length === srcManifest.length && baseNow.every((l, i) => l === srcManifest[i]),
        manifestDiff(srcManifest, baseNow),
      );

      // And the engine's change list says exactly what the script did.
      const changes = await vol.call('changes', 'child', 'base');
      assert.deepEqual(formatChanges(changes), formatChanges(await plan.changes(expected)));
    });
  });

  it('freezing a layer that 3000 files were written into through the mount is quick and bounded in memory', async function () {
    this.timeout(120_000);
    await vol.call('createLayer', 'many', null);
    const dir = join(mnt, 'many');
    await shOk(`cd ${q(dir)} && for i in $(seq 1 3000); do echo "file $i" > f$i; done`);
    const rss = async () => Number((await shOk(`ps -o rss= -p ${vol.pid}`)).trim()) * 1024;
    const before = await rss();
    let peak = before;
    const sampler = setInterval(
      () =>
        void rss().then(
          (r) => (peak = Math.max(peak, r)),
          () => undefined,
        ),
      100,
    );
    const t0 = performance.now();
    try {
      await withTimeout(
        vol.call('createLayer', 'many-child', 'many'),
        60_000,
        'createLayer many-child',
      );
    } finally {
      clearInterval(sampler);
    }
    const ms = performance.now() - t0;
    peak = Math.max(peak, await rss());
    const grewMiB = (peak - before) / 2 ** 20;
    console.log(
      `      createLayer over 3000 FUSE-written files: ${ms.toFixed(0)} ms, RSS grew ${grewMiB.toFixed(0)} MiB`,
    );
    assert.equal((await vol.call('layer', 'many')).state, 'frozen');
    assert.equal(await readFile(join(mnt, 'many-child', 'f3000'), 'utf8'), 'file 3000\n');
    assert.ok(ms < 3000, `createLayer (freezing the parent) took ${ms.toFixed(0)} ms`);
    assert.ok(grewMiB < 256, `the volume process grew by ${grewMiB.toFixed(0)} MiB while freezing`);
  });

  it('stat in one layer stays responsive while a 512 MiB write runs in another', async function () {
    this.timeout(120_000);
    await vol.call('createLayer', 'writer', null);
    await vol.call('createLayer', 'reader', null);
    const reader = join(mnt, 'reader');
    const names = Array.from({ length: 2000 }, (_, i) => `f${i}`);
    await shOk(`cd ${q(reader)} && touch ${names.join(' ')}`);
    await sleep(1100); // past the entry timeout: every stat below goes to the volume

    const started = performance.now();
    const dd = spawn(
      'dd',
      ['if=/dev/zero', `of=${join(mnt, 'writer', 'big')}`, 'bs=1M', 'count=512'],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    let ddErr = '';
    dd.stderr.setEncoding('utf8').on('data', (c: string) => (ddErr += c));
    const ddExit = once(dd, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
    let running = true;
    void ddExit.then(() => (running = false));

    await sleep(200); // let the write get going
    const samples: number[] = [];
    let i = 0;
    while (running) {
      const t = performance.now();
      await stat(join(reader, names[i++ % names.length]));
      samples.push(performance.now() - t);
      await sleep(2);
    }
    const [code] = await ddExit;
    const ddSeconds = (performance.now() - started) / 1000;
    assert.equal(code, 0, `dd failed: ${ddErr}`);
    assert.equal((await stat(join(mnt, 'writer', 'big'))).size, 512 * 2 ** 20);

    samples.sort((a, b) => a - b);
    const pct = (p: number) =>
      samples[Math.min(samples.length - 1, Math.floor((p / 100) * samples.length))];
    console.log(
      `      dd 512 MiB: ${ddSeconds.toFixed(1)} s (${(512 / ddSeconds).toFixed(0)} MiB/s); ` +
        `stat during it: n=${samples.length} p50=${pct(50).toFixed(2)} ms p99=${pct(99).toFixed(2)} ms max=${samples[samples.length - 1].toFixed(2)} ms`,
    );
    assert.ok(samples.length >= 20, `only ${samples.length} stat samples while dd ran`);
    assert.ok(
      pct(99) < 100,
      `stat p99 ${pct(99).toFixed(1)} ms while a large write runs (limit 100 ms)`,
    );
    await writeFile(join(mnt, 'writer', 'big'), ''); // give the space back early
  });
});

/** Rejects if `p` does not settle within `ms`: fail fast instead of hanging the suite. */
async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

interface Plan {
  script: string;
  changes(modifiedRoot: string): Promise<Change[]>;
}

/**
 * Shell commands (run with the tree root as cwd) that change, delete and add files, and the
 * change list a Docker-style comparison of the result against the original gives.
 */
function planModifications(tree: GeneratedTree): Plan {
  const rng = new SeededRandom(SEED + 1);
  // Two directories to delete and rename whole, with no other target inside them.
  const leafy = tree.dirs.filter((d) => d.split('/').length >= 3);
  const delDir = rng.pick(leafy);
  const movDir = rng.pick(
    leafy.filter((d) => !d.startsWith(delDir + '/') && !delDir.startsWith(d + '/') && d !== delDir),
  );
  const outside = (p: string) => !p.startsWith(delDir + '/') && !p.startsWith(movDir + '/');
  const pool = rng.shuffle(tree.plainFiles.filter(outside));
  const big = tree.bigFiles.filter(outside)[0] ?? pool.pop()!;
  const [fAppend, fOver, fPatch, fChmod, fChown, fTouch, fXattr, fRm, fLinkSrc, fMove] = pool;
  const chmodDir = rng.pick(
    tree.dirs.filter((d) => outside(d + '/') && d !== 'data' && d !== delDir && d !== movDir),
  );
  const moveTo = rng.pick(
    tree.dirs.filter((d) => outside(d + '/') && d !== delDir && d !== movDir),
  );

  const lines = [
    `echo changed >> ${q(fAppend)}`,
    `printf new > ${q(fOver)}`,
    `truncate -s 1000 ${q(big)}`,
    `printf PATCH | dd of=${q(fPatch)} bs=1 seek=3 conv=notrunc status=none`,
    `chmod 600 ${q(fChmod)}`,
    `chown 4242:4242 ${q(fChown)}`,
    `touch -d @1500000000 ${q(fTouch)}`,
    `setfattr -n user.mod -v yes ${q(fXattr)}`,
    `rm ${q(fRm)}`,
    `rm -rf ${q(delDir)}`,
    `rm bin/ls`,
    `rm bin/cat && printf '#!/bin/sh\\necho not cat\\n' > bin/cat && chmod 755 bin/cat`,
    `mkdir -p data/newdir/sub && echo added > data/newdir/sub/f && seq 1 300000 > data/newdir/big`,
    `ln ${q(fLinkSrc)} data/newdir/hardlink`,
    `ln -s ../../bin/busybox data/newdir/sym`,
    `mkfifo data/newdir/fifo`,
    `mv ${q(fMove)} ${q(`${moveTo}/moved-file`)}`,
    `mv ${q(movDir)} data/renamed-dir`,
    `chmod 700 ${q(chmodDir)}`,
  ];

  const kinds = new Map<string, ChangeKind>();
  const set = (p: string, k: ChangeKind) => kinds.set(`/${p}`, k);
  for (const p of [
    fAppend,
    fOver,
    big,
    fPatch,
    fChmod,
    fChown,
    fTouch,
    fXattr,
    'bin/cat',
    chmodDir,
  ])
    set(p, ChangeKind.Modify);
  for (const p of [fRm, delDir, 'bin/ls', fMove, movDir]) set(p, ChangeKind.Delete);
  for (const p of [
    'data/newdir',
    'data/newdir/sub',
    'data/newdir/sub/f',
    'data/newdir/big',
    'data/newdir/hardlink',
    'data/newdir/sym',
    'data/newdir/fifo',
    `${moveTo}/moved-file`,
  ]) {
    set(p, ChangeKind.Add);
  }
  return {
    script: `${lines.join('\n')}\n`,
    /** Completes the list from the modified local copy: everything under the renamed directory, and the directories above each change. */
    async changes(modifiedRoot: string): Promise<Change[]> {
      const under = (await shOk('find data/renamed-dir -print0', { cwd: modifiedRoot }))
        .split('\0')
        .filter(Boolean);
      for (const p of under) set(p, ChangeKind.Add);
      for (const path of [...kinds.keys()]) {
        const parts = path.split('/').slice(1, -1);
        for (let i = 1; i <= parts.length; i++) {
          const dir = `/${parts.slice(0, i).join('/')}`;
          if (!kinds.has(dir)) kinds.set(dir, ChangeKind.Modify);
        }
      }
      return [...kinds].map(([path, kind]) => ({ path, kind }));
    },
  };
}

function formatChanges(changes: readonly Change[]): string[] {
  const name = ['C', 'A', 'D'];
  return changes.map((c) => `${name[c.kind]} ${c.path}`).sort();
}
