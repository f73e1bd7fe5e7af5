/**
 * Layer store benchmark: `npm run bench -- store`.
 *
 * 1. createLayer latency against the parent's size: parents holding 0, 1,000 and 100,000 (empty)
 *    files in directories of 100 (built by applyDiff, not measured). The first child of each parent also freezes it, so only
 *    the creates of further children are measured. Baseline: create.parent_0files (ratio ~1 is
 *    the target: creating a child costs the same whatever the parent holds).
 * 2. applyDiff throughput on a ~1 GiB mixed tar (small 1-64 KiB, medium 1-8 MiB, a few large
 *    64-256 MiB files; seeded incompressible content) written to a temp dir first; baseline: GNU
 *    tar -x of the same tar onto the native disk followed by `sync -f`, in the same run. Throughput
 *    is tar bytes / seconds. A fresh store directory per run, so no run deduplicates against
 *    another.
 * 3. Bytes written when re-applying a diff the store produced: after applying the tar into layer
 *    A (child of an empty base P), `diff(A, P)` is piped into `applyDiff` of a fresh sibling B.
 *    Reported as % of the layer size (sum of entry sizes), from store.bytesWritten and from
 *    /proc/self/io write_bytes.
 *
 * Env: LCFS_BENCH_RUNS (default 3), LCFS_BENCH_TAR_MIB (default 1024), LCFS_BENCH_BIG_FILES
 * (parent size of the large create case, default 100000; the metric name stays the same),
 * LCFS_BENCH_DIR (where temp dirs go, default os.tmpdir()), LCFS_BENCH_ONLY (`create` or `apply`:
 * run one part, for investigation; the JSON then lacks the other part's rows).
 */
import { spawn } from 'node:child_process';
import { createReadStream, readFileSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openLayerStore } from '../../fs/index.js';
import type { LayerStore } from '../../fs/layer-store.js';
import { type BenchRow, median, timeNs } from './report.js';
import { TarFileWriter } from './tar-file.js';

const MiB = 1 << 20;
const KiB = 1 << 10;
const RUNS = Number(process.env.LCFS_BENCH_RUNS ?? 3);
const TAR_BYTES = Number(process.env.LCFS_BENCH_TAR_MIB ?? 1024) * MiB;
const BIG_FILES = Number(process.env.LCFS_BENCH_BIG_FILES ?? 100_000);
const CREATE_SAMPLES = 101;
/** For investigating one part: `create` or `apply` (the rows of the other part are then absent). */
const ONLY = process.env.LCFS_BENCH_ONLY;

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = mulberry32(0x1cf5);
const between = (lo: number, hi: number): number => lo + Math.floor(rand() * (hi - lo + 1));

function log(msg: string): void {
  process.stdout.write(`[store bench] ${msg}\n`);
}

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', reject);
    p.on('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err}`)),
    );
  });
}

function ioWriteBytes(): number {
  const m = /^write_bytes:\s*(\d+)$/m.exec(readFileSync('/proc/self/io', 'utf8'));
  return m ? Number(m[1]) : Number.NaN;
}

/** Samples RSS while `fn` runs; returns the peak growth in bytes. */
async function peakRss<T>(fn: () => Promise<T>): Promise<{ result: T; growth: number }> {
  const start = process.memoryUsage.rss();
  let peak = start;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 50);
  try {
    const result = await fn();
    peak = Math.max(peak, process.memoryUsage.rss());
    return { result, growth: peak - start };
  } finally {
    clearInterval(timer);
  }
}

/**
 * `count` empty files in directories of 100. Empty, because what a parent holds for createLayer
 * is nodes, and applying 100,000 files with content costs minutes of setup (about 1-7 ms a file
 * on a 2-core machine), which would break the benchmark's time budget.
 */
async function emptyFilesTar(path: string, count: number, tag: string): Promise<void> {
  const w = await TarFileWriter.create(path);
  for (let i = 0; i < count; i++) {
    if (i % 100 === 0) await w.dir(`d${Math.floor(i / 100)}`);
    await w.file(`d${Math.floor(i / 100)}/f${i}`, 0, `${tag}:${i}`);
  }
  await w.close();
}

interface MixedTar {
  bytes: number;
  files: number;
  contentBytes: number;
  small: number;
  medium: number;
  large: number;
}

/** About `total` bytes: ~30% in a few 64-256 MiB files, ~30% in 1-8 MiB files, the rest 1-64 KiB. */
async function mixedTar(path: string, total: number): Promise<MixedTar> {
  const sizes: Array<{ size: number; kind: 'small' | 'medium' | 'large' }> = [];
  let sum = 0;
  const largeMin = Math.min(64 * MiB, Math.max(MiB, Math.floor(total / 16)));
  const largeMax = Math.min(256 * MiB, Math.max(largeMin, Math.floor(total / 4)));
  while (sum < total * 0.3) {
    const s = between(largeMin, largeMax);
    sizes.push({ size: s, kind: 'large' });
    sum += s;
  }
  while (sum < total * 0.6) {
    const s = between(MiB, 8 * MiB);
    sizes.push({ size: s, kind: 'medium' });
    sum += s;
  }
  while (sum < total) {
    const s = between(KiB, 64 * KiB);
    sizes.push({ size: s, kind: 'small' });
    sum += s;
  }
  for (let i = sizes.length - 1; i > 0; i--) {
    const j = between(0, i);
    [sizes[i], sizes[j]] = [sizes[j], sizes[i]];
  }
  const w = await TarFileWriter.create(path);
  for (let i = 0; i < sizes.length; i++) {
    const dir = `m${Math.floor(i / 200)}`;
    if (i % 200 === 0) await w.dir(dir);
    await w.file(`${dir}/file${i}.bin`, sizes[i].size, `mixed:${i}`);
  }
  await w.close();
  const count = (k: string): number => sizes.filter((s) => s.kind === k).length;
  return {
    bytes: w.bytes,
    files: w.files,
    contentBytes: w.contentBytes,
    small: count('small'),
    medium: count('medium'),
    large: count('large'),
  };
}

async function createBench(work: string): Promise<BenchRow[]> {
  const store = await openLayerStore({ dir: join(work, 'create-store') });
  try {
    const parents: Array<{ id: string; files: number; metric: string }> = [
      { id: 'p0', files: 0, metric: 'create.parent_0files' },
      { id: 'p1k', files: 1000, metric: 'create.parent_1kfiles' },
      { id: 'p100k', files: BIG_FILES, metric: 'create.parent_100kfiles' },
    ];
    for (const p of parents) {
      await store.createLayer(p.id, null);
      if (p.files > 0) {
        const tarPath = join(work, `${p.id}.tar`);
        await emptyFilesTar(tarPath, p.files, p.id);
        const { ns, result } = await timeNs(() =>
          store.applyDiff(p.id, null, createReadStream(tarPath)),
        );
        log(
          `setup: applyDiff of ${p.files} files into ${p.id}: ${(ns / 1e9).toFixed(2)} s (${result} bytes)`,
        );
        await rm(tarPath);
      }
      const first = await timeNs(() => store.createLayer(`${p.id}-c0`, p.id));
      log(`setup: first child of ${p.id} (freezes it): ${(first.ns / 1e3).toFixed(0)} µs`);
    }
    const samples = new Map<string, number[]>(parents.map((p) => [p.id, []]));
    for (let k = 1; k <= CREATE_SAMPLES; k++) {
      // Rotate the order so no parent always goes first after a pause.
      for (let i = 0; i < parents.length; i++) {
        const p = parents[(i + k) % parents.length];
        const { ns } = await timeNs(() => store.createLayer(`${p.id}-c${k}`, p.id));
        samples.get(p.id)!.push(ns / 1e3);
      }
    }
    const base = median(samples.get('p0')!);
    for (const p of parents) {
      const s = samples.get(p.id)!;
      log(
        `create under ${p.id}: median ${median(s).toFixed(0)} µs, min ${Math.min(...s).toFixed(0)}, max ${Math.max(...s).toFixed(0)}`,
      );
    }
    return parents.map((p) => ({
      metric: p.metric,
      unit: 'µs',
      value: median(samples.get(p.id)!),
      baseline: 'create.parent_0files',
      baselineValue: base,
      better: 'closer to 1' as const,
    }));
  } finally {
    await store.close();
  }
}

async function applyBench(work: string): Promise<BenchRow[]> {
  const tarPath = join(work, 'mixed.tar');
  const gen = await timeNs(() => mixedTar(tarPath, TAR_BYTES));
  const t = gen.result;
  log(
    `setup: wrote ${tarPath}: ${(t.bytes / MiB).toFixed(0)} MiB, ${t.files} files ` +
      `(${t.small} small, ${t.medium} medium, ${t.large} large) in ${(gen.ns / 1e9).toFixed(1)} s`,
  );
  const tarBytes = statSync(tarPath).size;

  const tarRates: number[] = [];
  const storeRates: number[] = [];
  const storePct: number[] = [];
  const ioPct: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    const order = r % 2 === 0 ? ['tar', 'store'] : ['store', 'tar'];
    for (const which of order) {
      if (which === 'tar') {
        const dir = join(work, `tar-x-${r}`);
        await mkdir(dir);
        await run('sync', []);
        const { ns } = await timeNs(async () => {
          await run('/usr/bin/tar', ['-xf', tarPath, '-C', dir]);
          await run('sync', ['-f', dir]);
        });
        const rate = tarBytes / (ns / 1e9) / 1e6;
        tarRates.push(rate);
        log(`run ${r}: tar -x + sync -f: ${(ns / 1e9).toFixed(2)} s, ${rate.toFixed(1)} MB/s`);
        await rm(dir, { recursive: true, force: true });
      } else {
        const dir = join(work, `store-${r}`);
        const store: LayerStore = await openLayerStore({ dir });
        try {
          await store.createLayer('P', null);
          await store.createLayer('A', 'P');
          await run('sync', []);
          const { ns, result } = await timeNs(() =>
            peakRss(() => store.applyDiff('A', 'P', createReadStream(tarPath))),
          );
          const layerSize = result.result;
          const rate = tarBytes / (ns / 1e9) / 1e6;
          storeRates.push(rate);
          log(
            `run ${r}: store applyDiff: ${(ns / 1e9).toFixed(2)} s, ${rate.toFixed(1)} MB/s, layer size ${layerSize} ` +
              `(tar content ${t.contentBytes}), peak RSS growth ${(result.growth / MiB).toFixed(0)} MiB`,
          );

          await store.createLayer('B', 'P');
          const bw0 = store.bytesWritten;
          const io0 = ioWriteBytes();
          const re = await timeNs(() => store.applyDiff('B', 'P', store.diff('A', 'P')));
          const bw = store.bytesWritten - bw0;
          const io = ioWriteBytes() - io0;
          storePct.push((bw / layerSize) * 100);
          ioPct.push((io / layerSize) * 100);
          log(
            `run ${r}: re-apply diff(A,P) into B: ${(re.ns / 1e9).toFixed(2)} s, entry bytes ${re.result}, ` +
              `store.bytesWritten +${bw} (${((bw / layerSize) * 100).toFixed(3)}%), /proc/self/io write_bytes +${io} ` +
              `(${((io / layerSize) * 100).toFixed(3)}%)`,
          );
        } finally {
          await store.close();
          await rm(dir, { recursive: true, force: true });
        }
      }
    }
  }
  return [
    {
      metric: 'applyDiff.throughput',
      unit: 'MB/s',
      value: median(storeRates),
      baseline: 'tar-x.native',
      baselineValue: median(tarRates),
      better: 'higher',
    },
    {
      metric: 'reapply.bytes_written_pct',
      unit: '%',
      value: median(storePct),
      baseline: 'layer.size',
      baselineValue: 100,
      better: 'lower',
    },
    {
      metric: 'reapply.io_write_bytes_pct',
      unit: '%',
      value: median(ioPct),
      baseline: 'layer.size',
      baselineValue: 100,
      better: 'lower',
    },
  ];
}

export default async function storeBench(): Promise<BenchRow[]> {
  const work = await mkdtemp(join(process.env.LCFS_BENCH_DIR ?? tmpdir(), 'lcfs-bench-store-'));
  const cleanup = (): void => {
    void rm(work, { recursive: true, force: true }).finally(() => process.exit(130));
  };
  process.once('SIGINT', cleanup);
  process.once('SIGTERM', cleanup);
  log(
    `work dir ${work}, ${RUNS} runs, tar ${(TAR_BYTES / MiB).toFixed(0)} MiB, large parent ${BIG_FILES} files`,
  );
  try {
    const rows: BenchRow[] = [];
    if (ONLY !== 'apply') rows.push(...(await createBench(work)));
    if (ONLY !== 'create') rows.push(...(await applyBench(work)));
    return rows;
  } finally {
    process.off('SIGINT', cleanup);
    process.off('SIGTERM', cleanup);
    await rm(work, { recursive: true, force: true });
  }
}
