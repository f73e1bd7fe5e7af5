/**
 * The cluster tests' real components on loopback, checked on their own: etcd stopped and
 * restarted, random images pushed to docker-registry (anonymous and with auth) and pulled back
 * through the counting, throttling upstream proxy.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { basicAuthorization, Registry, REGISTRY_REALM } from '../helpers/registry.js';
import { Etcd } from './helpers/etcd.js';
import { OCI_MANIFEST, pushRandomImage, type RandomImage } from './helpers/random-images.js';
import { UpstreamProxy } from './helpers/upstream-proxy.js';
import { digestOf } from '../../cluster/digest.js';

const MiB = 1 << 20;

async function get(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Headers; body: Buffer }> {
  const res = await fetch(url, { headers });
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
}

const base64 = (s: string) => Buffer.from(s).toString('base64');

describe('cluster test components', function () {
  let tmp: string;

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'lcfs-upstream-test-'));
  });

  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  describe('etcd', () => {
    let etcd: Etcd | undefined;

    after(async () => {
      await etcd?.dispose();
    });

    it('serves the v3 API, and keeps its data and ports across stop and restart', async () => {
      etcd = await Etcd.start();
      const put = await fetch(`${etcd.endpoint}/v3/kv/put`, {
        method: 'POST',
        body: JSON.stringify({ key: base64('/lcfs/k'), value: base64('v1') }),
      });
      assert.equal(put.status, 200, await put.text());
      assert.equal((await etcd.ctl('get', '--print-value-only', '/lcfs/k')).trim(), 'v1');

      const endpoint = etcd.endpoint;
      await etcd.stop();
      assert.equal(etcd.running, false);
      await assert.rejects(fetch(`${endpoint}/health`));

      await etcd.restart();
      assert.equal(etcd.endpoint, endpoint);
      const range = await fetch(`${etcd.endpoint}/v3/kv/range`, {
        method: 'POST',
        body: JSON.stringify({ key: base64('/lcfs/k') }),
      });
      const { kvs } = (await range.json()) as { kvs: { value: string }[] };
      assert.equal(Buffer.from(kvs[0].value, 'base64').toString(), 'v1');
    });
  });

  describe('registry, random image and upstream proxy', () => {
    let registry: Registry;
    let proxy: UpstreamProxy;
    let image: RandomImage;

    before(async () => {
      registry = await Registry.start();
      image = await pushRandomImage(registry, {
        dir: join(tmp, 'rand'),
        name: 'lcfs-test/rand',
        layerSizes: [1 * MiB, 8 * MiB],
        busybox: true,
      });
      proxy = await UpstreamProxy.start({ upstream: registry.url });
    });

    after(async () => {
      await proxy?.dispose();
      await registry?.dispose();
    });

    it('pushes the layout as is: skopeo reads no blob back, the manifest lists the layout blobs', async () => {
      assert.equal(image.ref, `${registry.host}/lcfs-test/rand:latest`);
      assert.deepEqual(await registry.blobGets(), new Map());
      const manifest = await get(`${registry.url}/v2/lcfs-test/rand/manifests/latest`, {
        accept: OCI_MANIFEST,
      });
      assert.equal(manifest.status, 200);
      assert.equal(manifest.headers.get('docker-content-digest'), image.manifest.digest);
      assert.equal(digestOf(manifest.body), image.manifest.digest);
      const parsed = JSON.parse(manifest.body.toString()) as { layers: { digest: string }[] };
      assert.deepEqual(
        parsed.layers.map((l) => l.digest),
        image.layers.map((l) => l.digest),
      );
      assert.equal(image.layers.length, 3);
    });

    it('serves every blob through the proxy, counted there and in the access log', async () => {
      for (const blob of [image.config, ...image.layers]) {
        const res = await get(`${proxy.url}/v2/lcfs-test/rand/blobs/${blob.digest}`);
        assert.equal(res.status, 200);
        assert.equal(res.headers.get('docker-content-digest'), blob.digest);
        assert.equal(res.body.length, blob.size);
        assert.equal(digestOf(res.body), blob.digest);
        assert.deepEqual(res.body, await readFile(image.blobPath(blob.digest)));
      }
      const top = image.layers[2];
      const ranged = await get(`${proxy.url}/v2/lcfs-test/rand/blobs/${top.digest}`, {
        range: 'bytes=1000-',
      });
      assert.equal(ranged.status, 206);
      assert.equal(ranged.headers.get('content-range'), `bytes 1000-${top.size - 1}/${top.size}`);
      assert.equal(ranged.body.length, top.size - 1000);

      const expected = new Map(
        [image.config, ...image.layers].map((b) => [b.digest, { gets: 1, bytes: b.size }]),
      );
      expected.set(top.digest, { gets: 2, bytes: 2 * top.size - 1000 });
      assert.deepEqual(proxy.blobGets(), expected);
      assert.deepEqual(await registry.blobGets(), expected);
      assert.equal(proxy.requestCounts().get(`GET /v2/lcfs-test/rand/blobs/${top.digest}`), 2);
    });

    it('rewrites an upstream Location to point at the proxy', async () => {
      const res = await fetch(`${proxy.url}/v2/lcfs-test/rand/blobs/uploads/`, { method: 'POST' });
      assert.equal(res.status, 202);
      assert.ok(
        res.headers.get('location')?.startsWith(`${proxy.url}/v2/lcfs-test/rand/blobs/uploads/`),
        String(res.headers.get('location')),
      );
    });

    it('throttles the bandwidth it serves', async () => {
      const big = image.layers[2];
      proxy.throttle(20e6);
      try {
        const started = performance.now();
        const res = await get(`${proxy.url}/v2/lcfs-test/rand/blobs/${big.digest}`);
        const elapsed = performance.now() - started;
        assert.equal(digestOf(res.body), big.digest);
        // 8 MiB at 20 MB/s is 420 ms, less one burst of 1 MB.
        assert.ok(elapsed > 250, `8 MiB took only ${elapsed.toFixed(0)} ms at 20 MB/s`);
      } finally {
        proxy.throttle(undefined);
      }
    });

    it('goes down and comes back on the same port, as does the registry behind it', async () => {
      // Without OCI in Accept, the registry answers 404 for an OCI manifest.
      const manifest = () =>
        get(`${proxy.url}/v2/lcfs-test/rand/manifests/${image.manifest.digest}`, {
          accept: OCI_MANIFEST,
        });
      await registry.stop();
      assert.equal((await manifest()).status, 502);
      await registry.restart();
      assert.equal((await manifest()).status, 200);

      const url = proxy.url;
      await proxy.stop();
      await assert.rejects(fetch(`${url}/v2/`));
      await proxy.start();
      assert.equal(proxy.url, url);
      assert.equal((await manifest()).status, 200);
    });
  });

  describe('registry with auth', () => {
    let registry: Registry;
    let proxy: UpstreamProxy;

    before(async () => {
      registry = await Registry.start({ auth: true });
      proxy = await UpstreamProxy.start({ upstream: registry.url });
    });

    after(async () => {
      await proxy?.dispose();
      await registry?.dispose();
    });

    it('refuses anonymous requests and accepts its credentials, also through the proxy', async () => {
      const creds = registry.credentials;
      assert.ok(creds);
      const image = await pushRandomImage(registry, {
        dir: join(tmp, 'private'),
        name: 'lcfs-test/private',
        layerSizes: [1 * MiB],
      });
      const blobPath = `/v2/lcfs-test/private/blobs/${image.layers[0].digest}`;
      for (const base of [registry.url, proxy.url]) {
        const anonymous = await get(`${base}${blobPath}`);
        assert.equal(anonymous.status, 401);
        assert.equal(anonymous.headers.get('www-authenticate'), `Basic realm="${REGISTRY_REALM}"`);
        const wrong = await get(`${base}${blobPath}`, {
          authorization: basicAuthorization({ ...creds, password: 'wrong' }),
        });
        assert.equal(wrong.status, 401);
        const authed = await get(`${base}${blobPath}`, {
          authorization: basicAuthorization(creds),
        });
        assert.equal(authed.status, 200);
        assert.equal(digestOf(authed.body), image.layers[0].digest);
      }
      const gets = await registry.blobGets();
      assert.equal(gets.get(image.layers[0].digest)?.gets, 2);
      assert.equal(proxy.blobGets().get(image.layers[0].digest)?.gets, 1);
    });
  });
});
