/**
 * Real engines pulling through the agents' registry mirrors, in a cluster of two agents:
 *
 * - a private dockerd 20.10 with `registry-mirrors` set to agent A's mirror pulls a Docker Hub
 *   name (`lcfstest/rand:1`), which agent A maps onto the local registry (`--upstreams
 *   docker.io=<counting proxy>`), and runs it;
 * - a private containerd 1.6 pulls with `ctr images pull --hosts-dir DIR`, where DIR was written
 *   by `lcfs setup containerd --mirror` and points at agent B's mirror; the image is named on a
 *   made-up registry (`registry.test/...`) that agent B maps onto the same proxy, so containerd's
 *   `?ns=registry.test` picks it;
 * - each engine then pulls what the other one pulled, through its own agent: the blobs come from
 *   the peer agent, with no upstream blob GET.
 *
 * The engines never reach a real registry: dockerd's fallback to Docker Hub (if the mirror
 * fails) goes to a proxy on a closed port, and registry.test does not resolve. So a broken mirror
 * shows up as a pull error, and failure messages carry the agents' logs.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEV_BIN, runToEnd } from '../cli/lcfs-process.js';
import { Containerd, describeRun } from '../containerd/helpers/containerd.js';
import { Dockerd } from '../docker/helpers/dockerd.js';
import { waitFor } from '../docker/helpers/exec.js';
import { labelledBytes } from '../fs/helpers/prng.js';
import type { LcfsAgent } from '../helpers/lcfs-agent.js';
import { TestCluster } from './helpers/cluster.js';
import type { RandomImage } from './helpers/random-images.js';

const MiB = 1 << 20;
/** A registry name that exists only in the agents' --upstreams. */
const FAKE_REGISTRY = 'registry.test';

/** Every blob of an image a pull moves: the config and the layers. */
function blobsOf(image: RandomImage): string[] {
  return [image.config.digest, ...image.layers.map((layer) => layer.digest)];
}

/** The path and sha256 (hex) of the file random layer `index` holds (see random-images.ts). */
function randomFile(image: RandomImage, index: number, size: number): [string, string] {
  const bytes = labelledBytes(`${image.name}:${image.tag}/${index}`, size);
  return [`/random/${index}.bin`, createHash('sha256').update(bytes).digest('hex')];
}

/** `lcfs_mirror_requests_total` of an agent, by `kind/source`. */
async function mirrorRequests(agent: LcfsAgent): Promise<Map<string, number>> {
  const res = await fetch(`http://${agent.apiAddress}/metrics`);
  assert.equal(res.status, 200, `GET /metrics of ${agent.apiAddress}`);
  const counts = new Map<string, number>();
  for (const line of (await res.text()).split('\n')) {
    const match = /^lcfs_mirror_requests_total\{([^}]*)\} (\S+)$/.exec(line);
    if (match === null) continue;
    const labels = Object.fromEntries(
      [...match[1].matchAll(/(\w+)="([^"]*)"/g)].map(([, key, value]) => [key, value]),
    );
    counts.set(`${labels.kind}/${labels.source}`, Number(match[2]));
  }
  return counts;
}

/** What `after` counted that `before` had not, per key. */
function grown(before: Map<string, number>, after: Map<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [key, value] of after) {
    const delta = value - (before.get(key) ?? 0);
    if (delta > 0) out[key] = delta;
  }
  return out;
}

describe('real engines pulling through the agents’ mirrors (dockerd, containerd)', function () {
  this.timeout(300_000);
  let cluster: TestCluster | undefined;
  let agentA: LcfsAgent;
  let agentB: LcfsAgent;
  let dockerd: Dockerd | undefined;
  let containerd: Containerd | undefined;
  let work: string;
  let hostsDir: string;
  /** Pushed as lcfstest/rand:1; dockerd pulls it as a Docker Hub name. */
  let hubImage: RandomImage;
  /** Pushed as lcfstest/ctr:1; containerd pulls it as registry.test/lcfstest/ctr:1. */
  let ctrImage: RandomImage;
  const hubSizes = [3 * MiB, 1 * MiB];
  const ctrSizes = [2 * MiB, 1 * MiB];

  /** Both agents' logs and the engines' log tails, for a failure message. */
  async function logs(): Promise<string> {
    return (
      `\n--- agent A (dockerd's mirror) log\n${agentA?.logText(40)}` +
      `\n--- agent B (containerd's mirror) log\n${agentB?.logText(40)}` +
      (dockerd ? `\n${await dockerd.logTail(20)}` : '') +
      (containerd ? `\n--- containerd log\n${await containerd.logTail(20)}` : '')
    );
  }

  /** Upstream blob GETs since the last reset, as text for messages. */
  function upstreamGets(): string {
    return JSON.stringify([...cluster!.proxy.blobGets()]);
  }

  async function docker(args: string[]): Promise<string> {
    const r = await dockerd!.dockerRaw(args);
    if (r.code !== 0)
      assert.fail(`docker ${args.join(' ')} failed (exit ${r.code}):\n${r.stderr}${await logs()}`);
    return r.stdout;
  }

  async function ctr(args: string[]): Promise<string> {
    const r = await containerd!.ctr(args);
    if (r.code !== 0) assert.fail(`${describeRun(['ctr', ...args], r)}${await logs()}`);
    return r.stdout;
  }

  /** `ctr images pull` through agent B's mirror, as hosts.toml in hostsDir says. */
  function ctrPull(ref: string): Promise<string> {
    return ctr(['images', 'pull', '--hosts-dir', hostsDir, ref]);
  }

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lcfs-engines-'));
    cluster = await TestCluster.start({ agents: 0 });
    const upstreams = `docker.io=${cluster.proxy.url},${FAKE_REGISTRY}=${cluster.proxy.url}`;
    agentA = await cluster.addAgent({ '--upstreams': upstreams });
    agentB = await cluster.addAgent({ '--upstreams': upstreams });
    hubImage = await cluster.pushImage({
      name: 'lcfstest/rand',
      tag: '1',
      layerSizes: hubSizes,
      busybox: true,
    });
    ctrImage = await cluster.pushImage({
      name: 'lcfstest/ctr',
      tag: '1',
      layerSizes: ctrSizes,
      busybox: true,
    });

    // dockerd's helper writes an empty daemon.json at start; registry-mirrors is one of the
    // settings dockerd reloads on SIGHUP.
    dockerd = await Dockerd.start({ storageDriver: 'vfs', label: 'mirror' });
    const mirrorUrl = `http://${agentA.mirrorAddress}`;
    await writeFile(
      join(dockerd.root, 'daemon.json'),
      `${JSON.stringify({ 'registry-mirrors': [mirrorUrl] })}\n`,
    );
    process.kill(dockerd.pid, 'SIGHUP');
    await waitFor(
      `dockerd to list ${mirrorUrl} as its registry mirror`,
      async () => {
        const out = await dockerd!.dockerRaw([
          'info',
          '--format',
          '{{json .RegistryConfig.Mirrors}}',
        ]);
        return out.code === 0 && out.stdout.includes(agentA.mirrorAddress!) ? true : undefined;
      },
      30_000,
    );

    // The hosts.toml containerd reads, written by the CLI: _default, so every registry goes
    // through agent B's mirror. --config names a file that does not exist, so the machine's
    // /etc/containerd/config.toml is left alone.
    hostsDir = join(work, 'certs.d');
    const setup = await runToEnd(DEV_BIN, [
      'setup',
      'containerd',
      '--mirror',
      '--no-snapshotter',
      '--config',
      join(work, 'no-config.toml'),
      '--certs-dir',
      hostsDir,
      '--mirror-url',
      `http://${agentB.mirrorAddress}`,
    ]);
    assert.equal(setup.code, 0, `lcfs setup containerd:\n${setup.stdout}\n${setup.stderr}`);
    containerd = await Containerd.start({ label: 'mirror' });
  });

  after(async () => {
    await containerd?.dispose();
    await dockerd?.dispose();
    await cluster?.dispose();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('lcfs setup containerd --mirror wrote _default/hosts.toml with the mirror (pull, resolve)', async () => {
    const text = await readFile(join(hostsDir, '_default', 'hosts.toml'), 'utf8');
    assert.match(
      text,
      new RegExp(
        `^\\[host\\."http://${agentB.mirrorAddress!.replace(/\./g, '\\.')}"\\]\\n\\s+capabilities = \\["pull", "resolve"\\]$`,
        'm',
      ),
      text,
    );
  });

  it('dockerd pulls a Docker Hub name through agent A’s mirror, one upstream GET per blob, and runs it', async () => {
    cluster!.proxy.resetCounts();
    const before = await mirrorRequests(agentA);
    await docker(['pull', `${hubImage.name}:${hubImage.tag}`]);

    const gets = cluster!.proxy.blobGets();
    for (const digest of blobsOf(hubImage))
      assert.equal(gets.get(digest)?.gets, 1, `upstream GETs of ${digest}: ${upstreamGets()}`);
    assert.equal(gets.size, blobsOf(hubImage).length, `upstream blob GETs: ${upstreamGets()}`);
    assert.ok(
      cluster!.proxy.requestCounts().get(`GET /v2/${hubImage.name}/manifests/${hubImage.tag}`),
      `the tag was resolved upstream: ${JSON.stringify([...cluster!.proxy.requestCounts()])}`,
    );
    // The agent says it served the pull: the manifest and every blob, from upstream.
    const served = grown(before, await mirrorRequests(agentA));
    assert.ok((served['manifest/upstream'] ?? 0) >= 1, `agent A served ${JSON.stringify(served)}`);
    assert.ok(
      (served['blob/upstream'] ?? 0) >= blobsOf(hubImage).length,
      `agent A served ${JSON.stringify(served)}`,
    );

    const id = (
      await docker(['image', 'inspect', '--format', '{{.Id}}', `${hubImage.name}:${hubImage.tag}`])
    ).trim();
    assert.equal(id, hubImage.config.digest, 'the image id is its config digest');
    for (const [index, size] of hubSizes.entries()) {
      const [path, sha] = randomFile(hubImage, index, size);
      const out = await docker([
        'run',
        '--rm',
        '--network',
        'none',
        `${hubImage.name}:${hubImage.tag}`,
        '/bin/busybox',
        'sha256sum',
        path,
      ]);
      assert.equal(out.trim(), `${sha}  ${path}`);
    }
  });

  it('containerd pulls through agent B’s mirror with hosts.toml (?ns=registry.test), and runs it', async () => {
    cluster!.proxy.resetCounts();
    const before = await mirrorRequests(agentB);
    const ref = `${FAKE_REGISTRY}/${ctrImage.name}:${ctrImage.tag}`;
    await ctrPull(ref);

    // The busybox layer is the same blob in both images: agent A holds it since dockerd's pull,
    // so agent B takes it from A; every other blob is fetched upstream exactly once.
    const gets = cluster!.proxy.blobGets();
    const shared = new Set(blobsOf(hubImage));
    for (const digest of blobsOf(ctrImage)) {
      assert.equal(
        gets.get(digest)?.gets ?? 0,
        shared.has(digest) ? 0 : 1,
        `upstream GETs of ${digest}${shared.has(digest) ? ' (held by agent A)' : ''}: ${upstreamGets()}`,
      );
    }
    assert.ok(
      cluster!.proxy.requestCounts().get(`GET /v2/${ctrImage.name}/manifests/${ctrImage.tag}`),
      `the tag was resolved upstream: ${JSON.stringify([...cluster!.proxy.requestCounts()])}`,
    );
    const served = grown(before, await mirrorRequests(agentB));
    const blobsServed = Object.entries(served)
      .filter(([key]) => key.startsWith('blob/'))
      .reduce((sum, [, n]) => sum + n, 0);
    assert.ok(blobsServed >= blobsOf(ctrImage).length, `agent B served ${JSON.stringify(served)}`);
    assert.ok((served['blob/peer'] ?? 0) >= 1, `agent B served ${JSON.stringify(served)}`);

    // containerd holds every blob with the right bytes, and the image runs.
    const content = await ctr(['content', 'ls', '-q']);
    for (const digest of [ctrImage.manifest.digest, ...blobsOf(ctrImage)])
      assert.ok(content.includes(digest), `containerd lacks ${digest}:\n${content}`);
    for (const [index, size] of ctrSizes.entries()) {
      const [path, sha] = randomFile(ctrImage, index, size);
      const out = await ctr([
        'run',
        '--rm',
        ref,
        `lcfs-mirror-${index}`,
        '/bin/busybox',
        'sha256sum',
        path,
      ]);
      assert.equal(out.trim(), `${sha}  ${path}`);
    }
  });

  it('each engine pulls what the other one pulled from its own agent’s peer: no upstream blob GET', async () => {
    cluster!.proxy.resetCounts();
    const beforeA = await mirrorRequests(agentA);
    const beforeB = await mirrorRequests(agentB);

    // containerd, through agent B, pulls the image dockerd pulled through agent A.
    const ref = `${FAKE_REGISTRY}/${hubImage.name}:${hubImage.tag}`;
    await ctrPull(ref);
    const [path, sha] = randomFile(hubImage, 0, hubSizes[0]);
    assert.equal(
      (
        await ctr(['run', '--rm', ref, 'lcfs-mirror-warm', '/bin/busybox', 'sha256sum', path])
      ).trim(),
      `${sha}  ${path}`,
    );
    // dockerd, through agent A, pulls the image containerd pulled through agent B.
    await docker(['pull', `${ctrImage.name}:${ctrImage.tag}`]);
    const [path2, sha2] = randomFile(ctrImage, 1, ctrSizes[1]);
    const out = await docker([
      'run',
      '--rm',
      '--network',
      'none',
      `${ctrImage.name}:${ctrImage.tag}`,
      '/bin/busybox',
      'sha256sum',
      path2,
    ]);
    assert.equal(out.trim(), `${sha2}  ${path2}`);

    assert.equal(cluster!.proxy.blobGets().size, 0, `upstream blob GETs: ${upstreamGets()}`);
    // Each agent served from its peer every blob its engine lacked: all but the shared busybox
    // layer, which each engine already had.
    const onlyIn = (image: RandomImage, other: RandomImage): number =>
      blobsOf(image).filter((digest) => !blobsOf(other).includes(digest)).length;
    const servedA = grown(beforeA, await mirrorRequests(agentA));
    const servedB = grown(beforeB, await mirrorRequests(agentB));
    assert.ok(
      (servedA['blob/peer'] ?? 0) >= onlyIn(ctrImage, hubImage),
      `agent A served ${JSON.stringify(servedA)}`,
    );
    assert.ok(
      (servedB['blob/peer'] ?? 0) >= onlyIn(hubImage, ctrImage),
      `agent B served ${JSON.stringify(servedB)}`,
    );
    assert.equal(servedA['blob/upstream'] ?? 0, 0, `agent A served ${JSON.stringify(servedA)}`);
    assert.equal(servedB['blob/upstream'] ?? 0, 0, `agent B served ${JSON.stringify(servedB)}`);
  });

  it('the agents logged no warning or error along the way', () => {
    const problems = [...agentA.problems(), ...agentB.problems()];
    assert.deepEqual(problems, [], JSON.stringify(problems, null, 1));
  });
});
