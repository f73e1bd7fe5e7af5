/**
 * Cooperative pulls when things go wrong: a peer that lies, the serving agent killed mid-blob,
 * etcd down, the upstream down, an agent without the cluster secret, and private images.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { generateClusterSecret } from '../../cluster/cluster-secret.js';
import { sleep } from '../helpers/cleanup.js';
import { basicAuthorization } from '../helpers/registry.js';
import {
  assertPulledRight,
  digestsOf,
  fetchBlobDigest,
  metricValue,
  pullThroughMirror,
  TestCluster,
  until,
  type PulledImage,
} from './helpers/cluster.js';
import { LyingPeer } from './helpers/lying-peer.js';
import type { RandomImage } from './helpers/random-images.js';
import { digestOf } from '../../cluster/digest.js';

const MiB = 1 << 20;
const PREFIX = '/lcfs-test';

/** Retries a pull whose transfer the agent cut on purpose (bad bytes): engines retry too. */
async function pullWithRetries(
  mirror: string,
  image: RandomImage,
  tries = 3,
): Promise<PulledImage> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await pullThroughMirror(mirror, image);
    } catch (err) {
      if (attempt >= tries) throw err;
      await sleep(500);
    }
  }
}

describe('cooperative pulls under faults', function () {
  this.timeout(300_000);

  describe('a cluster of three', () => {
    let cluster: TestCluster;

    before(async () => {
      cluster = await TestCluster.start({ agents: 3 });
    });

    after(async () => {
      await cluster?.dispose();
    });

    it('detects a peer that serves bad bytes, avoids it, and fetches the blob elsewhere', async () => {
      const image = await cluster.pushImage({ name: 'faults/corrupt', layerSizes: [4 * MiB] });
      const layer = image.layers[0];
      const liar = await LyingPeer.start({
        secretFile: cluster.secretFile,
        etcd: cluster.etcd!,
        prefix: PREFIX,
        dir: cluster.dir,
        blob: layer,
      });
      try {
        const victim = cluster.agents[1];
        await until(
          'the victim to learn what the liar claims',
          async () => (await metricValue(victim.apiAddress!, 'lcfs_inventory_blobs')) >= 1,
        );
        cluster.proxy.resetCounts();
        assertPulledRight(await pullWithRetries(victim.mirrorAddress!, image), image);
        assert.ok(liar.served >= 1, 'the liar was never asked: the test proves nothing');
        assert.ok(
          (await metricValue(victim.apiAddress!, 'lcfs_peer_failures_total', 'reason="corrupt"')) >=
            1,
        );
        const cached = await readFile(
          join(victim.dataDir, 'blobs', 'sha256', layer.digest.slice(7)),
        );
        assert.equal(digestOf(cached), layer.digest);
        assert.equal(cluster.proxy.blobGets().get(layer.digest)?.gets, 1);

        // Avoided from now on: a second agent that pulls gets the blob from the victim.
        const before = liar.served;
        assertPulledRight(await pullWithRetries(cluster.agents[2].mirrorAddress!, image), image);
        assert.ok(liar.served - before <= 1, 'the liar kept being asked');
      } finally {
        await liar.stop();
      }
    });

    it('resumes at the same offset from another source when the serving agent dies mid-blob', async () => {
      const image = await cluster.pushImage({ name: 'faults/killed', layerSizes: [24 * MiB] });
      const layer = image.layers[0];
      cluster.proxy.throttle(8_000_000);
      cluster.proxy.resetCounts();
      try {
        const pulls = cluster.agents.map((agent) =>
          pullThroughMirror(agent.mirrorAddress!, image).then(
            (pulled) => ({ agent, pulled }),
            (err: unknown) => ({ agent, err }),
          ),
        );
        let holderId = '';
        await until('an agent to take the flight', async () => {
          holderId = (
            await cluster.etcd!.ctl(
              'get',
              '--print-value-only',
              `${PREFIX}/flights/${layer.digest}`,
            )
          ).trim();
          return holderId !== '';
        });
        await sleep(1_000);
        const holder = cluster.agents.find((agent) => agent.peerId === holderId);
        assert.ok(holder, `flight held by ${holderId}, not one of the agents`);
        await holder.kill();
        for (const result of await Promise.all(pulls)) {
          if (result.agent === holder) continue;
          assert.ok(
            'pulled' in result,
            `pull through a survivor failed: ${String('err' in result && result.err)}\n${result.agent.logText(30)}`,
          );
          assertPulledRight(result.pulled, image);
        }
        const upstream = cluster.proxy.blobGets().get(layer.digest);
        assert.ok(upstream !== undefined && upstream.gets <= 2, `upstream GETs: ${upstream?.gets}`);
        assert.ok(
          upstream.bytes < 1.6 * layer.size,
          `the takeover fetched ${upstream.bytes} bytes of a ${layer.size}-byte blob: it started over`,
        );
        await holder.start();
      } finally {
        cluster.proxy.throttle(undefined);
      }
    });

    it('keeps pulling while etcd is down, and single-flights again once it is back', async () => {
      const etcd = cluster.etcd!;
      await etcd.stop();
      try {
        await sleep(7_000); // past the lease TTL: the agents' leases are lost
        assert.equal(
          await metricValue(cluster.agents[0].apiAddress!, 'lcfs_cluster_etcd_connected'),
          0,
        );
        const during = await cluster.pushImage({ name: 'faults/etcd-down', layerSizes: [2 * MiB] });
        assertPulledRight(
          await pullThroughMirror(cluster.agents[0].mirrorAddress!, during),
          during,
        );
      } finally {
        await etcd.restart();
      }
      await until('every agent to register again', async () => {
        const keys = await etcd.ctl('get', '--prefix', '--keys-only', `${PREFIX}/members/`);
        return cluster.agents.every((agent) => keys.includes(agent.peerId!));
      });
      await until('every agent to hear from etcd again', async () => {
        const connected = await Promise.all(
          cluster.agents.map((agent) =>
            metricValue(agent.apiAddress!, 'lcfs_cluster_etcd_connected'),
          ),
        );
        return connected.every((value) => value === 1);
      });
      const after = await cluster.pushImage({
        name: 'faults/etcd-back',
        layerSizes: [4 * MiB, 2 * MiB],
      });
      cluster.proxy.resetCounts();
      const pulls = await Promise.all(
        cluster.agents.map((agent) => pullThroughMirror(agent.mirrorAddress!, after)),
      );
      for (const pulled of pulls) assertPulledRight(pulled, after);
      for (const digest of digestsOf(after)) {
        assert.equal(cluster.proxy.blobGets().get(digest)?.gets, 1, `upstream GETs of ${digest}`);
      }
    });

    it('serves cached pulls by digest while the upstream is down; tags need the upstream', async () => {
      const image = await cluster.pushImage({
        name: 'faults/upstream-down',
        layerSizes: [2 * MiB],
      });
      const [first, second] = cluster.agents;
      assertPulledRight(await pullThroughMirror(first.mirrorAddress!, image), image);
      assertPulledRight(await pullThroughMirror(second.mirrorAddress!, image), image);
      await cluster.proxy.stop();
      try {
        const pinned = { name: image.name, tag: image.manifest.digest };
        assertPulledRight(await pullThroughMirror(second.mirrorAddress!, pinned), image);
        await assert.rejects(pullThroughMirror(first.mirrorAddress!, image), /manifest .*: 503/);
      } finally {
        await cluster.proxy.start();
      }
    });

    it('keeps an agent without the cluster secret out: it cannot fetch from peers', async () => {
      const image = await cluster.pushImage({ name: 'faults/outsider', layerSizes: [2 * MiB] });
      assertPulledRight(await pullThroughMirror(cluster.agents[0].mirrorAddress!, image), image);
      const otherSecretFile = join(cluster.dir, 'other-swarm.key');
      await writeFile(otherSecretFile, generateClusterSecret());
      const outsider = await cluster.addAgent({ '--cluster-secret-file': otherSecretFile });
      await sleep(3_000); // time to learn the members from etcd and try to dial them
      cluster.proxy.resetCounts();
      assertPulledRight(await pullThroughMirror(outsider.mirrorAddress!, image), image);
      for (const digest of digestsOf(image)) {
        assert.equal(
          cluster.proxy.blobGets().get(digest)?.gets,
          1,
          `the outsider got ${digest} without the upstream: it reached a peer`,
        );
      }
      assert.equal(await metricValue(outsider.apiAddress!, 'lcfs_inventory_blobs'), 0);
    });
  });

  describe('private images', () => {
    let cluster: TestCluster;

    before(async () => {
      cluster = await TestCluster.start({ agents: 1, auth: true });
      await cluster.addAgent({ '--registry-auth-file': await cluster.credentialsFile() });
    });

    after(async () => {
      await cluster?.dispose();
    });

    it('serves a peer-held blob only to a client the upstream would serve', async () => {
      const [withoutCredentials, withCredentials] = cluster.agents;
      const image = await cluster.pushImage({ name: 'private/app', layerSizes: [2 * MiB] });
      assertPulledRight(await pullThroughMirror(withCredentials.mirrorAddress!, image), image);

      const layer = image.layers[0].digest;
      const refused = await fetch(
        `http://${withoutCredentials.mirrorAddress}/v2/${image.name}/blobs/${layer}`,
      );
      assert.equal(refused.status, 401, await refused.text());
      assert.match(refused.headers.get('www-authenticate') ?? '', /^Basic realm=/);
      await assert.rejects(pullThroughMirror(withoutCredentials.mirrorAddress!, image), /: 401/);

      cluster.proxy.resetCounts();
      const authorization = basicAuthorization(cluster.registry.credentials!);
      assert.equal(
        await fetchBlobDigest(withoutCredentials.mirrorAddress!, image.name, layer, {
          authorization,
        }),
        layer,
      );
      assert.equal(cluster.proxy.blobGets().size, 0, 'the blob should have come from the peer');
    });
  });
});
