/**
 * `npm run bench -- docker`: dockerd 20.10 on lcfs against the same dockerd on overlay2 and on
 * vfs, same machine, same run. Times are wall-clock medians; ratios are lcfs / baseline (lower
 * is better).
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LcfsAgent } from '../helpers/lcfs-agent.js';
import { makeBusyboxRootfs, tarRootfs, importImage } from '../docker/helpers/busybox-image.js';
import { Dockerd } from '../docker/helpers/dockerd.js';
import { median, type BenchRow } from './report.js';

const RUNS = 3;
const CHURN = 20;

/** ~5,000 small files, a 256 MiB file, deletions and an 8 MiB COPY, in several steps. */
const DOCKERFILE = `FROM base
RUN mkdir -p /data/small && cd /data/small && i=0; while [ $i -lt 5000 ]; do echo "file $i" > f$i; i=$((i+1)); done
RUN dd if=/dev/urandom of=/data/big bs=1M count=256 2>/dev/null
RUN rm -f /data/small/f1* && rm -rf /bin/vi
COPY context/ /data/context/
RUN ls /data/context | wc -l > /data/count
`;

async function seconds(fn: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

async function medianSeconds(runs: number, fn: (run: number) => Promise<unknown>): Promise<number> {
  const samples: number[] = [];
  for (let i = 0; i < runs; i++) samples.push(await seconds(() => fn(i)));
  return median(samples);
}

interface Figures {
  build: number;
  commit1MiB: number;
  commit1GiB: number;
  churn: number;
  save1GiB: number;
}

async function measure(d: Dockerd, work: string, baseTar: string): Promise<Figures> {
  await importImage(d, baseTar, 'base');
  const buildDir = join(work, `build-${d.opts.label ?? d.opts.storageDriver}`);
  await mkdir(join(buildDir, 'context'), { recursive: true });
  await writeFile(join(buildDir, 'Dockerfile'), DOCKERFILE);
  for (let i = 0; i < 8; i++)
    await writeFile(join(buildDir, 'context', `part${i}`), Buffer.alloc(1 << 20, i));
  const build = await medianSeconds(RUNS, (i) =>
    d.docker(['build', '--no-cache', '-q', '-t', `built${i}`, buildDir], {
      env: { DOCKER_BUILDKIT: '0' },
      timeoutMs: 600_000,
    }),
  );

  // Only the commit is timed, not the container that wrote the data.
  const commitTimes = async (mib: number, runs: number): Promise<number> => {
    const samples: number[] = [];
    for (let i = 0; i < runs; i++) {
      const name = `w${mib}-${i}`;
      await d.docker(
        [
          'run',
          '--network',
          'none',
          '--name',
          name,
          'base',
          'dd',
          'if=/dev/urandom',
          'of=/blob',
          'bs=1M',
          `count=${mib}`,
        ],
        { timeoutMs: 600_000 },
      );
      samples.push(
        await seconds(() => d.docker(['commit', name, `c${mib}-${i}`], { timeoutMs: 600_000 })),
      );
      await d.docker(['rm', name]);
    }
    return median(samples);
  };
  const commit1MiB = await commitTimes(1, RUNS);
  const commit1GiB = await commitTimes(1024, 1);

  const churn = await medianSeconds(RUNS, async (run) => {
    for (let i = 0; i < CHURN; i++) {
      await d.docker(['run', '--network', 'none', '--name', `churn${run}-${i}`, 'base', 'true']);
    }
    const names = Array.from({ length: CHURN }, (_, i) => `churn${run}-${i}`);
    await d.docker(['rm', ...names]);
  });

  const save1GiB = await seconds(() =>
    d.docker(
      ['save', '-o', join(work, `save-${d.opts.label ?? d.opts.storageDriver}.tar`), 'c1024-0'],
      { timeoutMs: 600_000 },
    ),
  );
  await rm(join(work, `save-${d.opts.label ?? d.opts.storageDriver}.tar`), { force: true });
  return { build, commit1MiB, commit1GiB, churn, save1GiB };
}

export default async function dockerBench(): Promise<BenchRow[]> {
  const work = await mkdtemp(join(tmpdir(), 'lcfs-bench-docker-'));
  const rootfs = join(work, 'rootfs');
  await makeBusyboxRootfs(rootfs);
  const baseTar = join(work, 'base.tar');
  await tarRootfs(rootfs, baseTar);

  const results = new Map<string, Figures>();
  const agent = await LcfsAgent.start();
  try {
    for (const [label, driver] of [
      ['lcfs', agent.pluginName],
      ['overlay2', 'overlay2'],
      ['vfs', 'vfs'],
    ] as const) {
      const d = await Dockerd.start({
        storageDriver: driver,
        experimental: label === 'lcfs',
        label,
      });
      try {
        results.set(label, await measure(d, work, baseTar));
      } finally {
        await d.dispose();
      }
    }
  } finally {
    await agent.dispose();
    await rm(work, { recursive: true, force: true });
  }

  const lcfs = results.get('lcfs')!;
  const rows: BenchRow[] = [];
  const metrics: Array<[keyof Figures, string]> = [
    ['build', 'build.classic_5k_files_256MiB'],
    ['commit1MiB', 'commit.1MiB'],
    ['commit1GiB', 'commit.1GiB'],
    ['churn', `churn.${CHURN}_containers`],
    ['save1GiB', 'save.1GiB_image'],
  ];
  for (const baseline of ['overlay2', 'vfs']) {
    const b = results.get(baseline)!;
    for (const [key, metric] of metrics) {
      rows.push({
        metric,
        unit: 's',
        value: lcfs[key],
        baseline,
        baselineValue: b[key],
        better: 'lower',
      });
    }
  }
  return rows;
}
