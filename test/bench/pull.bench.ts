/**
 * `npm run bench -- pull`: cooperative pulls through a cluster of real agents (issue 6), against
 * a single direct pull from the upstream, in the same run.
 *
 * - The cluster: etcd, a docker-registry behind the counting UpstreamProxy throttled to 50 MB/s
 *   (so the upstream is the bottleneck, as in real life), and N agents (TestCluster). N = 2, then
 *   a new cluster with N = 4.
 * - The image: a fresh one per scenario and round (so every cache is cold): 4 layers of random,
 *   incompressible bytes (64 + 48 + 24 + 8 MiB = 144 MiB), pushed with skopeo.
 * - A pull: the manifest by tag, then the config and every layer, 3 blobs at a time (dockerd's
 *   and containerd's CRI default), each hashed and checked against its digest. Every pull runs in
 *   its own process (pull-worker.ts); timed inside it, from the manifest request to the last byte.
 * - Before each scenario, one direct pull of the scenario's image from the throttled upstream (not
 *   through any agent) gives the baseline pull time and the client's CPU.
 * - Scenarios, each on all N agents:
 *   - cold_herd: all N pull at once;
 *   - staggered: the N pulls start one after the other, 0–500 ms apart (seeded random gaps);
 *   - rolling: agent 0 pulls alone (the warm node), then the others all at once.
 * - Figures per scenario and N (upstream counts are the proxy's, over the whole scenario):
 *   - upstream_gets_per_blob: served blob GETs (200/206) divided by the blobs in the image. The
 *     target is 1.0; the baseline is N, what a design without a cluster-wide single flight
 *     (Spegel's) gives for a herd.
 *   - upstream_bytes: everything the upstream sent, against N × the image (manifest, config and
 *     layers); a ratio of 1/N is the target.
 *   - pull_p50, pull_max: over the scenario's pulls (rolling: the followers; its first pull is
 *     first_pull), against the median direct pull.
 *   - agent_cpu: lcfs_process_cpu_seconds_total's increase over the scenario, summed over the
 *     agents, against N × the CPU the direct pull's client spent (receiving and hashing the image
 *     once in a Node process: the least an agent must do per pull).
 *   - agent_max_rss: the highest lcfs_process_resident_memory_bytes of any agent, sampled every
 *     250 ms during the scenario, against the highest of any agent just before it.
 * - direct.throughput: the direct pull's rate against the throttle, to show the throttle is what
 *   limits it.
 *
 * PULL_BENCH_ROUNDS (default 1) repeats every scenario with new images; figures are medians over
 * the rounds. For a look at one case: PULL_BENCH_SIZES=4 PULL_BENCH_SCENARIOS=cold_herd (the
 * table then has only those rows), PULL_BENCH_LOG_LEVEL=debug. Every agent's log lines are
 * written to bench-results/pull-agents-nN.jsonl; warnings are shown as they come.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { SeededRandom } from '../fs/helpers/prng.js';
import { sleep } from '../helpers/cleanup.js';
import { TestCluster } from '../cluster/helpers/cluster.js';
import type { RandomImage } from '../cluster/helpers/random-images.js';
import type { LcfsAgent } from '../helpers/lcfs-agent.js';
import type { PullJob, PullResult } from './pull-worker.js';
import { median, resultsDir, type BenchRow } from './report.js';

const MiB = 1 << 20;
const UPSTREAM_BYTES_PER_SECOND = 50e6;
const LAYER_SIZES = [64 * MiB, 48 * MiB, 24 * MiB, 8 * MiB];
const ALL_SCENARIOS = ['cold_herd', 'staggered', 'rolling'] as const;
type Scenario = (typeof ALL_SCENARIOS)[number];
const CLUSTER_SIZES = (process.env.PULL_BENCH_SIZES ?? '2,4').split(',').map(Number);
const SCENARIOS = (process.env.PULL_BENCH_SCENARIOS?.split(',') ?? ALL_SCENARIOS) as Scenario[];
const LOG_LEVEL = (process.env.PULL_BENCH_LOG_LEVEL ?? 'info') as 'info' | 'debug' | 'trace';
const STAGGER_MAX_GAP_MS = 500;
const PARALLEL_BLOBS = 3;
const RSS_SAMPLE_MS = 250;
const ROUNDS = Number(process.env.PULL_BENCH_ROUNDS ?? 1);
const PULL_TIMEOUT_MS = 300_000;

const here = dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = join(here, '..', '..');
const WORKER = join(here, 'pull-worker.ts');

const say = (text: string): void => {
  process.stderr.write(`[pull bench] ${text}\n`);
};

/** A pull-worker process, started and waiting for `go`. */
class PullWorker {
  private readonly lines: AsyncIterator<string>;
  private readonly child: ChildProcess;
  private stderr = '';

  private constructor(job: PullJob) {
    this.child = spawn(process.execPath, ['--import', 'tsx', WORKER, JSON.stringify(job)], {
      cwd: REPO_ROOT,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (this.stderr += chunk));
    this.lines = createInterface({ input: this.child.stdout! })[Symbol.asyncIterator]();
  }

  static async start(job: PullJob): Promise<PullWorker> {
    const worker = new PullWorker(job);
    const first = await worker.line();
    if (first !== 'ready') throw new Error(`pull worker said "${first}"; stderr: ${worker.stderr}`);
    return worker;
  }

  private async line(): Promise<string> {
    const next = await this.lines.next();
    if (next.done === true) throw new Error(`pull worker exited early; stderr: ${this.stderr}`);
    return next.value;
  }

  /** Starts the pull; resolves with its result once it is done. */
  async go(): Promise<PullResult> {
    this.child.stdin!.end('go\n');
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('pull timed out')), PULL_TIMEOUT_MS);
    });
    try {
      const out = JSON.parse(await Promise.race([this.line(), timeout])) as
        PullResult | { error: string };
      if ('error' in out) throw new Error(`pull failed: ${out.error}; stderr: ${this.stderr}`);
      return out;
    } finally {
      clearTimeout(timer);
      await this.dispose();
    }
  }

  async dispose(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = once(this.child, 'exit');
    this.child.kill('SIGKILL');
    await exited;
  }
}

/** Pulls `image` from `base` in a new worker process per entry of `startsMs` (offsets from now). */
async function pullAll(
  bases: readonly string[],
  image: RandomImage,
  startsMs: readonly number[],
): Promise<PullResult[]> {
  const workers: PullWorker[] = [];
  try {
    for (const base of bases) {
      workers.push(
        await PullWorker.start({
          base,
          name: image.name,
          tag: image.tag,
          parallel: PARALLEL_BLOBS,
        }),
      );
    }
    const results = await Promise.all(
      workers.map(async (worker, i) => {
        await sleep(startsMs[i]);
        return worker.go();
      }),
    );
    for (const result of results) check(result, image);
    return results;
  } finally {
    await Promise.all(workers.map((worker) => worker.dispose()));
  }
}

function check(result: PullResult, image: RandomImage): void {
  if (result.manifestDigest !== image.manifest.digest)
    throw new Error(`manifest arrived as ${result.manifestDigest}, not ${image.manifest.digest}`);
  for (const { digest } of [image.config, ...image.layers]) {
    if (result.blobs[digest] !== digest)
      throw new Error(`blob ${digest} arrived as ${result.blobs[digest] ?? 'nothing'}`);
  }
}

const seconds = (r: PullResult): number => (r.endMs - r.startMs) / 1000;

/** Parses the Prometheus text an agent serves, as `name{labels}` → value. */
async function scrape(agent: LcfsAgent): Promise<Map<string, number>> {
  const res = await fetch(`http://${agent.apiAddress}/metrics`);
  if (!res.ok) throw new Error(`metrics of agent ${agent.pid}: ${res.status}`);
  const out = new Map<string, number>();
  for (const line of (await res.text()).split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

const CPU = 'lcfs_process_cpu_seconds_total';
const RSS = 'lcfs_process_resident_memory_bytes';

function metric(m: Map<string, number> | null | undefined, name: string): number {
  if (m === null || m === undefined) return 0;
  const value = m.get(name);
  if (value === undefined) throw new Error(`no metric ${name} in an agent's /metrics`);
  return value;
}

/** The mirror's own counters, for the log: where its bytes came from, and what failed. */
function mirrorSummary(before: Map<string, number>, after: Map<string, number>): string {
  const parts: string[] = [];
  for (const [key, value] of after) {
    if (
      !/^lcfs_(mirror_served_bytes_total|upstream_blob_fetches_total|peer_failures_total)/.test(key)
    )
      continue;
    const delta = value - (before.get(key) ?? 0);
    if (delta === 0) continue;
    const name = key.replace(/^lcfs_/, '').replace(/_total/, '');
    parts.push(`${name}=${/bytes/.test(key) ? `${(delta / MiB).toFixed(1)}MiB` : delta}`);
  }
  return parts.join(' ');
}

/** Samples every agent's RSS until stopped; resolves with the highest value seen. */
function sampleRss(agents: readonly LcfsAgent[]): { stop(): Promise<number> } {
  let max = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      const scrapes = await Promise.all(agents.map((agent) => scrape(agent).catch(() => null)));
      for (const m of scrapes) max = Math.max(max, metric(m, RSS));
      await sleep(RSS_SAMPLE_MS);
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return max;
    },
  };
}

interface ScenarioResult {
  getsPerBlob: number;
  upstreamBytes: number;
  pullP50: number;
  pullMax: number;
  firstPull?: number;
  agentCpu: number;
  maxRss: number;
  idleRss: number;
  /** The image: manifest, config and layers. */
  imageBytes: number;
}

interface DirectResult {
  seconds: number;
  cpuSeconds: number;
}

/** When each of `n` pulls starts, in ms from the first: seeded random gaps of 0–500 ms. */
function staggeredStarts(n: number, seed: string): number[] {
  const random = new SeededRandom(seed);
  const starts = [0];
  for (let i = 1; i < n; i++) starts.push(starts[i - 1] + random.next() * STAGGER_MAX_GAP_MS);
  return starts;
}

async function runScenario(
  cluster: TestCluster,
  scenario: Scenario,
  round: number,
  direct: DirectResult[],
): Promise<ScenarioResult> {
  const n = cluster.agents.length;
  const tag = `${scenario}-n${n}-r${round}`;
  const image = await cluster.pushImage({ name: `bench/pull-${tag}`, layerSizes: LAYER_SIZES });
  const blobs = [image.config, ...image.layers];
  const imageBytes = image.manifest.size + blobs.reduce((sum, b) => sum + b.size, 0);

  const [directPull] = await pullAll([cluster.proxy.url], image, [0]);
  direct.push({ seconds: seconds(directPull), cpuSeconds: directPull.cpuSeconds });
  say(
    `${tag}: direct pull ${seconds(directPull).toFixed(2)} s, ` +
      `${(imageBytes / 1e6 / seconds(directPull)).toFixed(1)} MB/s, ` +
      `client CPU ${directPull.cpuSeconds.toFixed(2)} s`,
  );

  cluster.proxy.resetCounts();
  const mirrors = cluster.agents.map((agent) => `http://${agent.mirrorAddress}`);
  const before = await Promise.all(cluster.agents.map(scrape));
  const idleRss = Math.max(...before.map((m) => metric(m, RSS)));
  const rss = sampleRss(cluster.agents);
  let pulls: PullResult[];
  let first: PullResult | undefined;
  let maxRss: number;
  try {
    if (scenario === 'cold_herd') {
      pulls = await pullAll(mirrors, image, new Array<number>(n).fill(0));
    } else if (scenario === 'staggered') {
      const starts = staggeredStarts(n, `pull-bench/${tag}`);
      say(`${tag}: starts at ${starts.map((ms) => ms.toFixed(0)).join(', ')} ms`);
      pulls = await pullAll(mirrors, image, starts);
    } else {
      [first] = await pullAll(mirrors.slice(0, 1), image, [0]);
      pulls = await pullAll(mirrors.slice(1), image, new Array<number>(n - 1).fill(0));
    }
  } finally {
    maxRss = await rss.stop();
  }
  const after = await Promise.all(cluster.agents.map(scrape));

  const gets = cluster.proxy.blobGets();
  const totalGets = blobs.reduce((sum, b) => sum + (gets.get(b.digest)?.gets ?? 0), 0);
  const strays = [...gets.keys()].filter((d) => !blobs.some((b) => b.digest === d));
  if (strays.length > 0) say(`${tag}: upstream GETs of other blobs: ${strays.join(', ')}`);
  const times = pulls.map(seconds);
  const result: ScenarioResult = {
    getsPerBlob: totalGets / blobs.length,
    upstreamBytes: cluster.proxy.bytesSent,
    pullP50: median(times),
    pullMax: Math.max(...times),
    firstPull: first === undefined ? undefined : seconds(first),
    agentCpu: after.reduce((sum, m, i) => sum + metric(m, CPU) - metric(before[i], CPU), 0),
    maxRss: Math.max(maxRss, ...after.map((m) => metric(m, RSS))),
    idleRss,
    imageBytes,
  };
  say(
    `${tag}: pulls ${[first, ...pulls]
      .filter((p) => p !== undefined)
      .map((p) => seconds(p).toFixed(2))
      .join(' ')} s; ` +
      `upstream blob GETs ${blobs.map((b) => gets.get(b.digest)?.gets ?? 0).join('/')} ` +
      `(config, layers), ${(result.upstreamBytes / MiB).toFixed(1)} MiB of ` +
      `${(imageBytes / MiB).toFixed(1)} MiB image; agent CPU ${result.agentCpu.toFixed(2)} s; ` +
      `RSS ${(idleRss / MiB).toFixed(0)} → ${(result.maxRss / MiB).toFixed(0)} MiB`,
  );
  const retries = [first, ...pulls].flatMap((p) => p?.retries ?? []);
  if (retries.length > 0) say(`${tag}: clients retried ${retries.length} cut blob GETs`);
  after.forEach((m, i) => say(`${tag}: agent ${i}: ${mirrorSummary(before[i], m)}`));
  showProblems(cluster, tag);
  return result;
}

/** Warning lines already shown (agent.problems() returns copies, so by content). */
const reported = new Set<string>();

/** Shows, briefly, the agents' warnings and errors not shown yet. */
function showProblems(cluster: TestCluster, tag: string): void {
  for (const [i, agent] of cluster.agents.entries()) {
    for (const line of agent.problems()) {
      const key = JSON.stringify(line);
      if (reported.has(key)) continue;
      reported.add(key);
      const err = line.err as { message?: string } | string | undefined;
      const detail = {
        time: line.time,
        msg: line.msg,
        digest: typeof line.digest === 'string' ? line.digest.slice(7, 19) : undefined,
        source: line.source,
        peer: typeof line.peer === 'string' ? line.peer.slice(-6) : undefined,
        at: line.at,
        err: typeof err === 'string' ? err : err?.message,
      };
      say(`${tag}: agent ${i} ${line.level === 40 ? 'warn' : 'ERROR'}: ${JSON.stringify(detail)}`);
    }
  }
}

/** Every agent's log lines, one JSON line each, tagged with the agent's index. */
function saveLogs(cluster: TestCluster): void {
  const file = join(resultsDir, `pull-agents-n${cluster.agents.length}.jsonl`);
  mkdirSync(resultsDir, { recursive: true });
  const lines = cluster.agents.flatMap((agent, i) =>
    agent.logs.map((line) => JSON.stringify({ agent: i, ...line })),
  );
  writeFileSync(file, lines.join('\n') + '\n');
  say(`agent logs: ${file}`);
  cluster.agents.forEach((agent, i) => {
    if (agent.stderr !== '') writeFileSync(file.replace(/\.jsonl$/, `.${i}.stderr`), agent.stderr);
  });
}

/** Starts again, on their data dirs, the agents that died (a crash fails the scenario only). */
async function revive(cluster: TestCluster): Promise<void> {
  for (const [i, agent] of cluster.agents.entries()) {
    if (agent.running) continue;
    say(`agent ${i} is not running (${JSON.stringify(await agent.exited())}); starting it again`);
    await agent.start();
  }
}

/** A small cold herd first, so the cluster has formed and connections are up before timing. */
async function warmUp(cluster: TestCluster): Promise<void> {
  const image = await cluster.pushImage({
    name: `bench/warmup-n${cluster.agents.length}`,
    layerSizes: [1 * MiB],
  });
  const mirrors = cluster.agents.map((agent) => `http://${agent.mirrorAddress}`);
  await pullAll(mirrors, image, new Array<number>(mirrors.length).fill(0));
}

export default async function pullBench(): Promise<BenchRow[]> {
  if (!Number.isSafeInteger(ROUNDS) || ROUNDS < 1) throw new Error('bad PULL_BENCH_ROUNDS');
  say(
    `image: ${LAYER_SIZES.length} random layers, ${LAYER_SIZES.map((s) => s / MiB).join(' + ')} MiB; ` +
      `upstream throttled to ${UPSTREAM_BYTES_PER_SECOND / 1e6} MB/s; ${ROUNDS} round(s)`,
  );
  const results = new Map<string, ScenarioResult[]>();
  const direct: DirectResult[] = [];
  let imageBytes = Number.NaN;
  let scenariosRun = 0;
  let scenariosFailed = 0;
  for (const n of CLUSTER_SIZES) {
    say(`starting a cluster of ${n} agents`);
    const cluster = await TestCluster.start({
      agents: n,
      upstreamBytesPerSecond: UPSTREAM_BYTES_PER_SECOND,
      logLevel: LOG_LEVEL,
    });
    try {
      await warmUp(cluster);
      for (let round = 1; round <= ROUNDS; round++) {
        for (const scenario of SCENARIOS) {
          const key = `${scenario}.n${n}`;
          scenariosRun += 1;
          try {
            const r = await runScenario(cluster, scenario, round, direct);
            imageBytes = r.imageBytes;
            results.set(key, [...(results.get(key) ?? []), r]);
          } catch (err) {
            // A benchmark reports what happened: the scenario's rows stay empty (NaN).
            scenariosFailed += 1;
            say(`${key} round ${round} FAILED: ${String(err).slice(0, 600)}`);
            showProblems(cluster, key);
            await revive(cluster);
          }
        }
      }
    } finally {
      showProblems(cluster, `n${n}`);
      saveLogs(cluster);
      await cluster.dispose();
    }
  }

  const directSeconds = median(direct.map((d) => d.seconds));
  const directCpu = median(direct.map((d) => d.cpuSeconds));
  say(`direct pulls: ${direct.map((d) => d.seconds.toFixed(2)).join(' ')} s`);
  const rows: BenchRow[] = [
    {
      metric: 'direct.throughput',
      unit: 'MB/s',
      value: imageBytes / 1e6 / directSeconds,
      baseline: 'upstream throttle',
      baselineValue: UPSTREAM_BYTES_PER_SECOND / 1e6,
      better: 'closer to 1',
    },
  ];
  rows.push({
    metric: 'scenarios.failed',
    unit: 'scenarios',
    value: scenariosFailed,
    baseline: 'scenarios run',
    baselineValue: scenariosRun,
    better: 'lower',
  });
  const med = (rs: ScenarioResult[], pick: (r: ScenarioResult) => number): number =>
    median(rs.map(pick));
  for (const n of CLUSTER_SIZES) {
    for (const scenario of SCENARIOS) {
      const key = `${scenario}.n${n}`;
      const rs = results.get(key) ?? [];
      rows.push(
        {
          metric: `${key}.upstream_gets_per_blob`,
          unit: 'GETs/blob',
          value: med(rs, (r) => r.getsPerBlob),
          baseline: 'N (Spegel herd; target 1)',
          baselineValue: n,
          better: 'lower',
        },
        {
          metric: `${key}.upstream_bytes`,
          unit: 'MiB',
          value: med(rs, (r) => r.upstreamBytes) / MiB,
          baseline: 'N x image size',
          baselineValue: (n * imageBytes) / MiB,
          better: 'lower',
        },
      );
      if (scenario === 'rolling') {
        rows.push({
          metric: `${key}.first_pull`,
          unit: 's',
          value: med(rs, (r) => r.firstPull ?? Number.NaN),
          baseline: 'direct pull',
          baselineValue: directSeconds,
          better: 'lower',
        });
      }
      rows.push(
        {
          metric: `${key}.pull_p50`,
          unit: 's',
          value: med(rs, (r) => r.pullP50),
          baseline: 'direct pull',
          baselineValue: directSeconds,
          better: 'lower',
        },
        {
          metric: `${key}.pull_max`,
          unit: 's',
          value: med(rs, (r) => r.pullMax),
          baseline: 'direct pull',
          baselineValue: directSeconds,
          better: 'lower',
        },
        {
          metric: `${key}.agent_cpu`,
          unit: 'CPU s',
          value: med(rs, (r) => r.agentCpu),
          baseline: 'N x direct client CPU',
          baselineValue: n * directCpu,
          better: 'lower',
        },
        {
          metric: `${key}.agent_max_rss`,
          unit: 'MiB',
          value: med(rs, (r) => r.maxRss) / MiB,
          baseline: 'agent idle RSS',
          baselineValue: med(rs, (r) => r.idleRss) / MiB,
          better: 'lower',
        },
      );
    }
  }
  return rows;
}
