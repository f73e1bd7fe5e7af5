/**
 * `npm run bench -- fuse`: the FUSE volume against the native disk (ext4), same operations,
 * same run. A child process serves the mount (test/fuse/helpers); this process only drives
 * shell tools, as a container would.
 *
 * Every ratio is lcfs / native for a "higher is better" figure (MB/s, files/s, ops/s).
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { SeededRandom } from '../fs/helpers/prng.js';
import { PYTHON, shOk } from '../fuse/helpers/shell.js';
import { buildGeneratedTree } from '../fuse/helpers/trees.js';
import { makeTempRoot, startVolume } from '../fuse/helpers/volume-process.js';
import { median, type BenchRow } from './report.js';

const FILE_MIB = 1024;
const TREE_FILES = 10_000;
const RUNS = 3;
const NATIVE = 'native ext4';

async function dropCaches(): Promise<void> {
  await shOk('sync; echo 3 > /proc/sys/vm/drop_caches');
}

/** Seconds a shell command takes. */
async function timed(script: string): Promise<number> {
  const t0 = process.hrtime.bigint();
  await shOk(script);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

async function mbps(script: string, mib: number, before?: () => Promise<void>): Promise<number> {
  const samples: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    await before?.();
    samples.push(mib / (await timed(script)));
  }
  return median(samples);
}

/** Random 4 KiB preads per second over a file, after dropping caches. */
async function randomReads(path: string): Promise<number> {
  const out = await shOk(
    `${PYTHON} -c '
import os, random, time
fd = os.open("${path}", os.O_RDONLY)
size = os.fstat(fd).st_size
rng = random.Random(7)
t = time.perf_counter()
for _ in range(3000):
    os.pread(fd, 4096, rng.randrange(0, size // 4096) * 4096)
print(3000 / (time.perf_counter() - t))'`,
  );
  return Number(out.trim());
}

/** stat() per second over every file of a tree, on its second pass (kernel caches warm). */
async function statRate(root: string): Promise<number> {
  const out = await shOk(
    `${PYTHON} -c '
import os, time
paths = [os.path.join(d, f) for d, _, fs in os.walk("${root}") for f in fs]
for p in paths: os.lstat(p)
t = time.perf_counter()
for p in paths: os.lstat(p)
print(len(paths) / (time.perf_counter() - t))'`,
  );
  return Number(out.trim());
}

export default async function fuseBench(): Promise<BenchRow[]> {
  const root = await makeTempRoot('lcfs-bench-fuse-');
  const native = join(root, 'native');
  await mkdir(native);
  const vol = await startVolume({ dir: join(root, 'store'), mountpoint: join(root, 'mnt') });
  const rows: BenchRow[] = [];
  const row = (metric: string, unit: string, value: number, baselineValue: number): void => {
    rows.push({ metric, unit, value, baseline: NATIVE, baselineValue, better: 'higher' });
  };
  try {
    const mnt = vol.mountpoint;
    await vol.call('createLayer', 'data', null);

    // Sequential write of 1 GiB, made durable, into a writable layer.
    const write = (dir: string): string =>
      `dd if=/dev/zero of=${dir}/zeros bs=1M count=${FILE_MIB} conv=fsync status=none && rm ${dir}/zeros`;
    row(
      'write.seq_1GiB',
      'MB/s',
      await mbps(write(`${mnt}/data`), FILE_MIB),
      await mbps(write(native), FILE_MIB),
    );

    // One incompressible 1 GiB file, in a frozen layer and on disk.
    await shOk(
      `head -c ${FILE_MIB}M /dev/urandom > ${native}/big && cp ${native}/big ${mnt}/data/big`,
    );
    await vol.call('createLayer', 'reader', 'data'); // freezes `data`
    const read = (file: string): string => `dd if=${file} of=/dev/null bs=1M status=none`;
    const lcfsBig = `${mnt}/reader/big`;
    row(
      'read.seq_1GiB_cold',
      'MB/s',
      await mbps(read(lcfsBig), FILE_MIB, dropCaches),
      await mbps(read(`${native}/big`), FILE_MIB, dropCaches),
    );
    // Warm: the kernel keeps a frozen layer's pages, so a second read never reaches the agent.
    await shOk(read(lcfsBig));
    await shOk(read(`${native}/big`));
    row(
      'read.seq_1GiB_warm',
      'MB/s',
      await mbps(read(lcfsBig), FILE_MIB),
      await mbps(read(`${native}/big`), FILE_MIB),
    );

    await dropCaches();
    const lcfsRandom = await randomReads(lcfsBig);
    await dropCaches();
    row('read.random_4KiB_cold', 'ops/s', lcfsRandom, await randomReads(`${native}/big`));

    // tar -x of a 10,000-file tree, into a fresh writable layer and a fresh folder.
    const src = join(root, 'src');
    await mkdir(src);
    await buildGeneratedTree(src, 'tree', TREE_FILES, new SeededRandom(42));
    const tarFile = join(root, 'tree.tar');
    await shOk(`tar -C ${src} -cf ${tarFile} tree`);
    const extractions: { lcfs: number[]; native: number[] } = { lcfs: [], native: [] };
    for (let i = 0; i < RUNS; i++) {
      await vol.call('createLayer', `untar${i}`, null);
      await mkdir(join(native, `untar${i}`));
      extractions.lcfs.push(TREE_FILES / (await timed(`tar -C ${mnt}/untar${i} -xf ${tarFile}`)));
      extractions.native.push(
        TREE_FILES / (await timed(`tar -C ${native}/untar${i} -xf ${tarFile}`)),
      );
    }
    row('tar_x.10k_files', 'files/s', median(extractions.lcfs), median(extractions.native));

    row(
      'stat.10k_files_warm',
      'stats/s',
      await statRate(`${mnt}/untar0`),
      await statRate(`${native}/untar0`),
    );
  } finally {
    await vol.stop();
    await rm(root, { recursive: true, force: true });
  }
  return rows;
}
