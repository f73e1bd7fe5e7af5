/**
 * Cooperative pulls through real agents: each agent's registry mirror serves pulls from peers
 * first, so the upstream sees one GET per blob for the whole cluster.
 */
import assert from 'node:assert/strict';
import { freePorts } from '../helpers/daemon.js';
import {
  assertPulledRight,
  digestsOf,
  fetchBlobDigest,
  metricValue,
  pullThroughMirror,
  TestCluster,
  until,
} from './helpers/cluster.js';

const MiB = 1 << 20;

describe('cooperative pulls (etcd + libp2p + registry mirror)', function () {
  this.timeout(300_000);
  let cluster: TestCluster;

  before(async () => {
    cluster = await TestCluster.start({ agents: 3 });
  });

  after(async () => {
    await cluster?.dispose();
  });

  it('a cold herd: every agent pulls at once, the upstream serves each blob once', async () => {
    const image = await cluster.pushImage({
      name: 'herd/cold',
      layerSizes: [8 * MiB, 3 * MiB, 1 * MiB],
    });
    cluster.proxy.resetCounts();
    const pulls = await Promise.all(
      cluster.agents.map((agent) => pullThroughMirror(agent.mirrorAddress!, image)),
    );
    for (const pulled of pulls) assertPulledRight(pulled, image);
    const gets = cluster.proxy.blobGets();
    for (const digest of digestsOf(image)) {
      assert.equal(
        gets.get(digest)?.gets,
        1,
        `upstream GETs of ${digest}: ${JSON.stringify([...gets])}`,
      );
    }
  });

  it('warm: an agent pulls what another holds with no upstream blob GET', async () => {
    const image = await cluster.pushImage({ name: 'herd/warm', layerSizes: [4 * MiB, 2 * MiB] });
    const [first, second] = cluster.agents;
    assertPulledRight(await pullThroughMirror(first.mirrorAddress!, image), image);
    cluster.proxy.resetCounts();
    assertPulledRight(await pullThroughMirror(second.mirrorAddress!, image), image);
    const gets = cluster.proxy.blobGets();
    assert.equal(gets.size, 0, `upstream blob GETs: ${JSON.stringify([...gets])}`);
  });

  it('announces a new blob to the other agents in well under a second', async () => {
    const image = await cluster.pushImage({ name: 'herd/announce', layerSizes: [1 * MiB] });
    const [holder, ...others] = cluster.agents;
    const known = await Promise.all(
      others.map((agent) => metricValue(agent.apiAddress!, 'lcfs_inventory_blobs')),
    );
    const layer = image.layers[0].digest;
    // From the request on: the holder announces the fetch when it starts, the blob when cached.
    const asked = Date.now();
    assert.equal(await fetchBlobDigest(holder.mirrorAddress!, image.name, layer), layer);
    await Promise.all(
      others.map(async (agent, i) => {
        while ((await metricValue(agent.apiAddress!, 'lcfs_inventory_blobs')) <= known[i]) {
          assert.ok(
            Date.now() - asked < 1_000,
            `agent ${i + 1} did not hear of the blob within 1 s`,
          );
          await new Promise((resolve) => setTimeout(resolve, 10));
        }
      }),
    );
  });
});

describe('cooperative pulls with static peers (no etcd)', function () {
  this.timeout(300_000);
  let cluster: TestCluster;

  before(async () => {
    cluster = await TestCluster.start({ agents: 0, etcd: false });
  });

  after(async () => {
    await cluster?.dispose();
  });

  it('an agent pulls from the peer it was given, with no upstream blob GET', async () => {
    // Each agent is given the other's address (no peer id: it is learnt in the handshake).
    const [portA, portB] = await freePorts(2);
    const first = await cluster.addAgent({
      '--p2p-address': `127.0.0.1:${portA}`,
      '--static-peers': `/ip4/127.0.0.1/tcp/${portB}`,
    });
    const second = await cluster.addAgent({
      '--p2p-address': `127.0.0.1:${portB}`,
      '--static-peers': `/ip4/127.0.0.1/tcp/${portA}`,
    });
    for (const agent of [first, second]) {
      await until(
        'the agents to connect',
        async () => (await metricValue(agent.apiAddress!, 'lcfs_cluster_peers')) >= 1,
      );
    }
    const image = await cluster.pushImage({ name: 'static/warm', layerSizes: [3 * MiB] });
    assertPulledRight(await pullThroughMirror(first.mirrorAddress!, image), image);
    cluster.proxy.resetCounts();
    assertPulledRight(await pullThroughMirror(second.mirrorAddress!, image), image);
    assert.equal(cluster.proxy.blobGets().size, 0, 'the second agent went upstream');
  });
});
