/**
 * `npm run bench -- containerd`: one private containerd 1.6 with three snapshotters, the same
 * image unpacked into each, in the same run: lcfs (the agent, over the proxy plugin), and
 * containerd's built-in overlayfs and native (both on the same ext4 disk as the agent's data).
 *
 * - The image: busybox plus 4 layers of seeded incompressible files (a few large, many small),
 *   about 80 MiB in 5 layers, pushed to a loopback docker-registry with skopeo (gzip layers).
 * - unpack: `ctr images pull` with every blob already in containerd's content store, after the
 *   image's snapshots were removed (and containerd's garbage collector had removed them from the
 *   snapshotter). Nothing is downloaded: the pull resolves the manifest on loopback and unpacks
 *   every layer (gunzip, apply the tar into a new snapshot, commit), which is what `ctr images
 *   import` does after it has copied the archive into the content store. This isolates the unpack;
 *   an import would also time that copy, the same for every snapshotter.
 * - run: `ctr run --rm --snapshotter S IMAGE ID true`, from start to exit: prepare the container
 *   snapshot, create and start the task (runc), wait, delete the task, the container and the
 *   snapshot.
 *
 * Rounds interleave the snapshotters. Times: lower is better; ratio = lcfs / baseline.
 * containerd 1.6's overlayfs and native leave unpacked files in the page cache, while lcfs makes a
 * layer durable when it is committed.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LcfsAgent } from '../helpers/lcfs-agent.js';
import { Containerd } from '../containerd/helpers/containerd.js';
import { sleep } from '../helpers/cleanup.js';
import { buildImageTar, writeRandomLayer, type ImageTar } from '../containerd/helpers/image.js';
import { Registry } from '../helpers/registry.js';
import { SnapshotsClient } from '../containerd/helpers/snapshots-client.js';
import { SeededRandom } from '../fs/helpers/prng.js';
import { run } from '../fuse/helpers/shell.js';
import { buildBusyboxRootfs } from '../fuse/helpers/trees.js';
import { median, type BenchRow } from './report.js';

const SNAPSHOTTERS = ['lcfs', 'overlayfs', 'native'] as const;
type Snapshotter = (typeof SNAPSHOTTERS)[number];
const BASELINES: Snapshotter[] = ['overlayfs', 'native'];

const RANDOM_LAYERS = 4;
const LAYER_BYTES = 20 * 1024 * 1024;
const FILES_PER_LAYER = 150;
const UNPACK_ROUNDS = 5;
const RUN_ROUNDS = 7;
/** Metric names stay the same from run to run; the image they describe is fixed above. */
const UNPACK_METRIC = 'unpack.image_80MiB_5layers';
const RUN_METRIC = 'run.true_start_to_exit';

const say = (text: string): void => {
  process.stderr.write(`[containerd bench] ${text}\n`);
};

async function buildImage(work: string): Promise<ImageTar> {
  const layers = [join(work, 'l0')];
  await buildBusyboxRootfs(layers[0], new SeededRandom(1));
  for (let n = 1; n <= RANDOM_LAYERS; n++) {
    const dir = join(work, `l${n}`);
    await writeRandomLayer(dir, `data${n}`, {
      seed: 100 + n,
      files: FILES_PER_LAYER,
      bytes: LAYER_BYTES,
    });
    layers.push(dir);
  }
  const image = await buildImageTar({ dir: work, tag: 'lcfs-bench/img:1', layers });
  for (const dir of layers) await rm(dir, { recursive: true, force: true });
  return image;
}

async function timedMs(what: string, argv: string[]): Promise<number> {
  const t0 = process.hrtime.bigint();
  const r = await run(argv, { timeoutMs: 600_000 });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.code !== 0) throw new Error(`${what} failed (exit ${r.code}):\n${r.stdout}\n${r.stderr}`);
  return ms;
}

export default async function containerdBench(): Promise<BenchRow[]> {
  const work = await mkdtemp(join(tmpdir(), 'lcfs-bench-ctd-'));
  let registry: Registry | undefined;
  let agent: LcfsAgent | undefined;
  let ctd: Containerd | undefined;
  let client: SnapshotsClient | undefined;
  const unpackMs: Record<Snapshotter, number[]> = { lcfs: [], overlayfs: [], native: [] };
  const runMs: Record<Snapshotter, number[]> = { lcfs: [], overlayfs: [], native: [] };
  try {
    say('building the image');
    const image = await buildImage(work);
    say(
      `image: ${image.diffIds.length} layers, ${(image.layerBytes / 2 ** 20).toFixed(1)} MiB of layer tars`,
    );
    registry = await Registry.start();
    const ref = await registry.push(image.path, 'lcfs-bench/img:1');
    agent = await LcfsAgent.start();
    ctd = await Containerd.start({
      proxySnapshotters: { lcfs: agent.snapshotterSocket },
      label: 'bench',
    });
    const c = ctd;
    const lcfs = (client = new SnapshotsClient(agent.snapshotterSocket));
    const ctr = (...args: string[]): string[] => ['ctr', '--address', c.address, ...args];
    const pull = (sn: Snapshotter): Promise<number> =>
      timedMs(
        `pull --snapshotter ${sn}`,
        ctr('images', 'pull', '--plain-http', '--snapshotter', sn, ref),
      );

    /** Whether the snapshotter holds no snapshot at all (its backend, not containerd's view). */
    const backendEmpty = async (sn: Snapshotter): Promise<boolean> => {
      if (sn === 'lcfs') return (await lcfs.list()).infos.length === 0;
      const dir = join(c.root, `io.containerd.snapshotter.v1.${sn}`, 'snapshots');
      return (await readdir(dir).catch(() => [])).length === 0;
    };
    /**
     * Removes the image's snapshots, top first, and waits for the garbage collector. Once the
     * top one is gone the others are garbage: a collection between two removals may take them
     * first, so "not found" is fine.
     */
    const dropSnapshots = async (sn: Snapshotter): Promise<void> => {
      for (const chain of [...image.chainIds].reverse()) {
        const r = await c.ctr(['snapshots', '--snapshotter', sn, 'rm', chain]);
        if (r.code !== 0 && !/not found/.test(r.stderr))
          throw new Error(`ctr snapshots rm ${chain} (${sn}) failed: ${r.stderr}`);
      }
      const deadline = Date.now() + 120_000;
      while (!(await backendEmpty(sn))) {
        if (Date.now() > deadline) throw new Error(`${sn} still holds snapshots after removal`);
        await sleep(100);
      }
    };
    const unpacked = async (sn: Snapshotter): Promise<void> => {
      const ls = await c.ctrOk(['snapshots', '--snapshotter', sn, 'ls']);
      for (const chain of image.chainIds)
        if (!ls.includes(chain)) throw new Error(`${sn}: ${chain} missing after the pull`);
    };

    say('first pull (downloads the blobs once, unpacks into each snapshotter)');
    for (const sn of SNAPSHOTTERS) {
      say(`  ${sn}: ${(await pull(sn)).toFixed(0)} ms`);
      await unpacked(sn);
    }

    for (let round = 1; round <= UNPACK_ROUNDS; round++) {
      for (const sn of SNAPSHOTTERS) {
        await dropSnapshots(sn);
        await run(['sync']);
        const ms = await pull(sn);
        await unpacked(sn);
        unpackMs[sn].push(ms);
        say(`unpack round ${round} ${sn}: ${ms.toFixed(0)} ms`);
      }
    }

    for (let round = 1; round <= RUN_ROUNDS; round++) {
      for (const sn of SNAPSHOTTERS) {
        const id = `bench-${sn}-${round}`;
        const ms = await timedMs(
          `run --snapshotter ${sn}`,
          ctr('run', '--rm', '--snapshotter', sn, ref, id, 'true'),
        );
        runMs[sn].push(ms);
        say(`run round ${round} ${sn}: ${ms.toFixed(0)} ms`);
      }
    }
  } finally {
    client?.close();
    await ctd?.dispose();
    await agent?.dispose();
    await registry?.dispose();
    await rm(work, { recursive: true, force: true });
  }

  for (const sn of SNAPSHOTTERS) {
    say(`${sn}: unpack s ${unpackMs[sn].map((ms) => (ms / 1000).toFixed(2)).join(' ')}`);
    say(`${sn}: run ms ${runMs[sn].map((ms) => ms.toFixed(0)).join(' ')}`);
  }
  const rows: BenchRow[] = [];
  for (const baseline of BASELINES) {
    rows.push({
      metric: UNPACK_METRIC,
      unit: 's',
      value: median(unpackMs.lcfs) / 1000,
      baseline,
      baselineValue: median(unpackMs[baseline]) / 1000,
      better: 'lower',
    });
  }
  for (const baseline of BASELINES) {
    rows.push({
      metric: RUN_METRIC,
      unit: 'ms',
      value: median(runMs.lcfs),
      baseline,
      baselineValue: median(runMs[baseline]),
      better: 'lower',
    });
  }
  return rows;
}
