/**
 * A cluster of real `lcfs agent` processes on loopback for the cluster tests: one etcd, an
 * upstream docker-registry behind a counting proxy, and N agents with their own data dirs,
 * mountpoints, mirrors and libp2p ports, sharing one cluster secret.
 *
 *   const cluster = await TestCluster.start({ agents: 3 });
 *   const image = await cluster.pushImage({ name: 'herd/a', layerSizes: [4 * MiB] });
 *   const pulled = await pullThroughMirror(cluster.agents[0].mirrorAddress!, image);
 *   cluster.proxy.blobGets().get(digest)       // upstream blob GETs
 *   await cluster.dispose();
 */
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateClusterSecret } from '../../../cluster/cluster-secret.js';
import { freePorts } from '../../helpers/daemon.js';
import { LcfsAgent } from '../../helpers/lcfs-agent.js';
import { Registry } from '../../helpers/registry.js';
import { Etcd } from './etcd.js';
import { pushRandomImage, type RandomImage, type RandomImageSpec } from './random-images.js';
import { UpstreamProxy } from './upstream-proxy.js';
import { MANIFEST_TYPES } from '../../../cluster/upstream-registry.js';
import { digestOf } from '../../../cluster/digest.js';
import assert from 'node:assert/strict';
import { sleep } from '../../helpers/cleanup.js';

export interface TestClusterOptions {
  /** How many agents to start. */
  readonly agents: number;
  /** Start etcd and register the agents in it (default true). */
  readonly etcd?: boolean;
  /** Throttle the upstream to this many bytes per second. */
  readonly upstreamBytesPerSecond?: number;
  /** The upstream registry requires basic auth for everything (see `credentialsFile`). */
  readonly auth?: boolean;
  /** The agents' log level (default info); their lines are kept in `agent.logs`. */
  readonly logLevel?: 'trace' | 'debug' | 'info' | 'warn' | 'error';
}

export class TestCluster {
  readonly agents: LcfsAgent[] = [];
  private images = 0;

  private constructor(
    readonly dir: string,
    readonly registry: Registry,
    readonly proxy: UpstreamProxy,
    readonly etcd: Etcd | undefined,
    readonly secretFile: string,
    private readonly logLevel?: TestClusterOptions['logLevel'],
  ) {}

  static async start(options: TestClusterOptions): Promise<TestCluster> {
    const dir = await mkdtemp(join(tmpdir(), 'lcfs-cluster-'));
    const secretFile = join(dir, 'swarm.key');
    await writeFile(secretFile, generateClusterSecret());
    const registry = await Registry.start({ auth: options.auth === true });
    const proxy = await UpstreamProxy.start({
      upstream: registry.url,
      bytesPerSecond: options.upstreamBytesPerSecond,
    });
    const etcd = options.etcd === false ? undefined : await Etcd.start();
    const cluster = new TestCluster(dir, registry, proxy, etcd, secretFile, options.logLevel);
    try {
      for (let i = 0; i < options.agents; i++) await cluster.addAgent();
    } catch (err) {
      await cluster.dispose();
      throw err;
    }
    return cluster;
  }

  /** The flags that put an agent in this cluster; `overrides` replace some (a wrong secret). */
  async agentArgs(overrides: Record<string, string> = {}): Promise<string[]> {
    const [p2pPort] = await freePorts(1);
    const flags: Record<string, string> = {
      '--upstreams': `docker.io=${this.proxy.url}`,
      '--cluster-secret-file': this.secretFile,
      '--p2p-address': `127.0.0.1:${p2pPort}`,
      '--cluster-prefix': '/lcfs-test',
      ...(this.etcd === undefined ? {} : { '--etcd-endpoints': this.etcd.endpoint }),
      ...overrides,
    };
    return Object.entries(flags).flatMap(([flag, value]) => [flag, value]);
  }

  /**
   * A Docker config.json holding the upstream's credentials as Docker Hub's (the name the
   * agents use for it), for `--registry-auth-file`.
   */
  async credentialsFile(): Promise<string> {
    const credentials = this.registry.credentials;
    if (credentials === undefined) throw new Error('the registry was started without auth');
    const path = join(this.dir, 'auth.json');
    const auth = Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64');
    await writeFile(path, JSON.stringify({ auths: { 'https://index.docker.io/v1/': { auth } } }));
    return path;
  }

  /** Starts one more agent in the cluster. */
  async addAgent(overrides: Record<string, string> = {}): Promise<LcfsAgent> {
    const agent = await LcfsAgent.start({
      args: await this.agentArgs(overrides),
      logLevel: this.logLevel,
    });
    this.agents.push(agent);
    return agent;
  }

  /** Pushes an image of random layers to the upstream; names are made unique per call. */
  async pushImage(spec: Omit<RandomImageSpec, 'dir'>): Promise<RandomImage> {
    this.images += 1;
    return pushRandomImage(this.registry, { ...spec, dir: join(this.dir, `image-${this.images}`) });
  }

  async dispose(): Promise<void> {
    await Promise.all(this.agents.map((agent) => agent.dispose()));
    await this.etcd?.dispose();
    await this.proxy.dispose();
    await this.registry.dispose();
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** What engines send: every manifest type the mirror relays. */
const ACCEPT = MANIFEST_TYPES.join(', ');

export interface PulledImage {
  readonly manifestDigest: string;
  /** sha256 of every blob as received, by digest. */
  readonly blobs: ReadonlyMap<string, string>;
}

/**
 * Pulls an image through a mirror as an engine would: the manifest by tag, then the config and
 * every layer, hashing what arrives. Throws on any non-2xx answer.
 */
export async function pullThroughMirror(
  mirrorAddress: string,
  image: Pick<RandomImage, 'name' | 'tag'>,
  headers: Record<string, string> = {},
): Promise<PulledImage> {
  const base = `http://${mirrorAddress}/v2/${image.name}`;
  const res = await fetch(`${base}/manifests/${image.tag}`, {
    headers: { accept: ACCEPT, ...headers },
  });
  if (!res.ok)
    throw new Error(`manifest ${image.name}:${image.tag}: ${res.status} ${await res.text()}`);
  const body = Buffer.from(await res.arrayBuffer());
  const manifest = JSON.parse(body.toString('utf8')) as {
    config: { digest: string };
    layers: Array<{ digest: string }>;
  };
  const digests = [manifest.config.digest, ...manifest.layers.map((layer) => layer.digest)];
  const blobs = new Map<string, string>();
  await Promise.all(
    digests.map(async (digest) => {
      blobs.set(digest, await fetchBlobDigest(mirrorAddress, image.name, digest, headers));
    }),
  );
  return { manifestDigest: digestOf(body), blobs };
}

/** GETs one blob through a mirror and returns the sha256 of what arrived. */
export async function fetchBlobDigest(
  mirrorAddress: string,
  name: string,
  digest: string,
  headers: Record<string, string> = {},
): Promise<string> {
  const res = await fetch(`http://${mirrorAddress}/v2/${name}/blobs/${digest}`, { headers });
  if (!res.ok || res.body === null) {
    throw new Error(`blob ${digest}: ${res.status} ${await res.text()}`);
  }
  const hash = createHash('sha256');
  for await (const chunk of res.body) hash.update(chunk);
  return `sha256:${hash.digest('hex')}`;
}

/**
 * The value of one sample from an agent's Prometheus /metrics, 0 when absent. `labels` is the
 * label set as Prometheus prints it, e.g. `reason="corrupt"`.
 */
export async function metricValue(apiAddress: string, name: string, labels = ''): Promise<number> {
  const text = await (await fetch(`http://${apiAddress}/metrics`)).text();
  const wanted = labels === '' ? name : `${name}{${labels}}`;
  for (const line of text.split('\n')) {
    const space = line.lastIndexOf(' ');
    if (line.slice(0, space) === wanted) return Number(line.slice(space + 1));
  }
  return 0;
}

/** Every blob of an image: its config, then its layers. */
export function digestsOf(image: RandomImage): string[] {
  return [image.config.digest, ...image.layers.map((layer) => layer.digest)];
}

/** Asserts a pull got the image's manifest and every blob's bytes. */
export function assertPulledRight(pulled: PulledImage, image: RandomImage): void {
  assert.equal(pulled.manifestDigest, image.manifest.digest);
  for (const digest of digestsOf(image)) {
    assert.equal(pulled.blobs.get(digest), digest, `blob ${digest} arrived with other bytes`);
  }
}

/** Polls `check` every 100 ms until it holds; throws naming `what` after `timeoutMs`. */
export async function until(
  what: string,
  check: () => Promise<boolean>,
  timeoutMs = 30_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}
