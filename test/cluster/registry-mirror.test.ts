/**
 * The registry mirror started in-process (startRegistryMirror) over a real docker-registry, with
 * a standalone PullRouter (no cluster): the OCI routes and their errors, blobs by HEAD and GET
 * with Range, each blob fetched upstream once and then served from the cache, manifests by tag
 * passed through with the client's Accept and cached by digest, stale tags only when allowed and
 * the upstream is down, the metrics by source, and a client the upstream refuses getting no
 * cached blob of a private repository.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Registry as MetricsRegistry } from 'prom-client';
import { AccessCheck } from '../../cluster/access-check.js';
import { BlobCache } from '../../cluster/blob-cache.js';
import { digestOf } from '../../cluster/digest.js';
import { createMirrorMetrics } from '../../cluster/metrics.js';
import { PullRouter } from '../../cluster/pull-router.js';
import {
  manifestTypeOf,
  startRegistryMirror,
  type RegistryMirror,
} from '../../cluster/registry-mirror.js';
import { TagMemory } from '../../cluster/tag-memory.js';
import { Upstreams } from '../../cluster/upstreams.js';
import { basicAuthorization, Registry } from '../helpers/registry.js';
import {
  OCI_INDEX,
  OCI_MANIFEST,
  pushRandomImage,
  type Descriptor,
  type RandomImage,
} from './helpers/random-images.js';

const KiB = 1024;
const logger = pino({ level: 'silent' });

interface Answer {
  status: number;
  headers: Headers;
  body: Buffer;
}

async function request(
  url: string,
  headers: Record<string, string> = {},
  method = 'GET',
): Promise<Answer> {
  const res = await fetch(url, { method, headers });
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
}

/** The OCI error code in a mirror's error body. */
function errorCode(answer: Answer): string {
  const parsed = JSON.parse(answer.body.toString()) as { errors: { code: string }[] };
  return parsed.errors[0].code;
}

/** One mirror over `registry`, with its own cache, tags and metrics. */
class TestMirror {
  private constructor(
    readonly registry: Registry,
    readonly cache: BlobCache,
    readonly metrics: MetricsRegistry,
    readonly strict: RegistryMirror,
    readonly stale: RegistryMirror,
  ) {}

  /**
   * Two mirrors sharing one cache and router: `strict` without stale tags, `stale` with them.
   * `authFile` is a Docker config.json with the host's credentials, or ''.
   */
  static async start(registry: Registry, dir: string, authFile = ''): Promise<TestMirror> {
    const cache = await BlobCache.open({ dir: join(dir, 'blobs'), maxBytes: 64 << 20, logger });
    const metrics = new MetricsRegistry();
    const mirrorMetrics = createMirrorMetrics(metrics);
    const shared = {
      address: '127.0.0.1:0',
      upstreams: await Upstreams.load([`${registry.host}=${registry.url}`], authFile, logger),
      router: new PullRouter({ cache, metrics: mirrorMetrics, logger }),
      cache,
      access: new AccessCheck(logger),
      tags: await TagMemory.open(join(dir, 'blobs', 'tags')),
      metrics: mirrorMetrics,
      logger,
    };
    const strict = await startRegistryMirror({ ...shared, serveStaleTags: false });
    const stale = await startRegistryMirror({ ...shared, serveStaleTags: true });
    return new TestMirror(registry, cache, metrics, strict, stale);
  }

  /** The URL of `/v2/<name>/<kind>/<reference>` on a mirror, for the registry under test. */
  url(name: string, kind: 'blobs' | 'manifests', reference: string, mirror = this.strict): string {
    return `http://${mirror.address}/v2/${name}/${kind}/${reference}?ns=${this.registry.host}`;
  }

  /** A counter's value for these labels (0 when it has none yet). */
  async metric(name: string, labels: Record<string, string> = {}): Promise<number> {
    const values = (await this.metrics.getSingleMetric(name)!.get()).values;
    const found = values.find((v) =>
      Object.entries(labels).every(([key, value]) => v.labels[key] === value),
    );
    return found?.value ?? 0;
  }

  async close(): Promise<void> {
    await Promise.all([this.strict.close(), this.stale.close()]);
  }
}

describe('cluster: the registry mirror in-process, standalone', function () {
  this.timeout(120_000);
  let tmp: string;
  let registry: Registry;
  let image: RandomImage;
  let mirror: TestMirror;
  let big: Descriptor;
  let bigBytes: Buffer;

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'lcfs-mirror-'));
    registry = await Registry.start();
    image = await pushRandomImage(registry, {
      dir: join(tmp, 'image'),
      name: 'lcfs-test/mirror',
      layerSizes: [600 * KiB, 64 * KiB, 200 * KiB],
    });
    big = image.layers[0];
    bigBytes = await readFile(image.blobPath(big.digest));
    mirror = await TestMirror.start(registry, join(tmp, 'mirror'));
  });

  after(async () => {
    await mirror?.close();
    await registry?.dispose();
    await rm(tmp, { recursive: true, force: true });
  });

  const blobUrl = (digest: string) => mirror.url(image.name, 'blobs', digest);

  it('answers /v2/ with the distribution API version header, and only GET and HEAD', async () => {
    for (const method of ['GET', 'HEAD']) {
      const res = await request(`http://${mirror.strict.address}/v2/`, {}, method);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('docker-distribution-api-version'), 'registry/2.0');
      assert.equal(res.body.toString(), method === 'GET' ? '{}' : '');
    }
    const post = await request(blobUrl(big.digest), {}, 'POST');
    assert.equal(post.status, 405);
    assert.equal(post.headers.get('allow'), 'GET, HEAD');
  });

  it('answers a HEAD of a blob from the upstream HEAD, fetching nothing', async () => {
    const res = await request(blobUrl(big.digest), {}, 'HEAD');
    assert.equal(res.status, 200);
    assert.equal(Number(res.headers.get('content-length')), big.size);
    assert.equal(res.headers.get('docker-content-digest'), big.digest);
    assert.equal(res.headers.get('accept-ranges'), 'bytes');
    assert.equal(res.body.length, 0);
    assert.equal(mirror.cache.stat(big.digest), undefined);
    assert.deepEqual(await registry.blobGets(), new Map());
  });

  it('GETs a blob from upstream once, then from its cache, counting both in the metrics', async () => {
    for (let i = 0; i < 3; i++) {
      const res = await request(blobUrl(big.digest));
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('docker-content-digest'), big.digest);
      assert.deepEqual(res.body, bigBytes);
    }
    assert.deepEqual(mirror.cache.stat(big.digest), { digest: big.digest, size: big.size });
    assert.deepEqual(
      await registry.blobGets(),
      new Map([[big.digest, { gets: 1, bytes: big.size }]]),
    );

    const served = 'lcfs_mirror_served_bytes_total';
    const requests = 'lcfs_mirror_requests_total';
    assert.equal(await mirror.metric('lcfs_upstream_blob_fetches_total'), 1);
    assert.equal(await mirror.metric(served, { source: 'upstream' }), big.size);
    assert.equal(await mirror.metric(served, { source: 'local' }), 2 * big.size);
    assert.equal(await mirror.metric(requests, { source: 'upstream', kind: 'blob' }), 1);
    assert.equal(await mirror.metric(requests, { source: 'local', kind: 'blob' }), 2);
  });

  it('fetches a blob once for concurrent GETs; each follows that fetch', async () => {
    const layer = image.layers[2];
    const bytes = await readFile(image.blobPath(layer.digest));
    const answers = await Promise.all(
      [undefined, 'bytes=0-', 'bytes=1000-', undefined].map((range) =>
        request(blobUrl(layer.digest), range === undefined ? {} : { range }),
      ),
    );
    assert.deepEqual(
      answers.map((res) => res.status),
      [200, 206, 206, 200],
    );
    assert.deepEqual(answers[0].body, bytes);
    assert.deepEqual(answers[2].body, bytes.subarray(1000));
    assert.deepEqual((await registry.blobGets()).get(layer.digest), { gets: 1, bytes: layer.size });
  });

  it('answers Range bytes=N- with 206, its Content-Range and the rest of the blob', async () => {
    const res = await request(blobUrl(big.digest), { range: 'bytes=1000-' });
    assert.equal(res.status, 206);
    assert.equal(res.headers.get('content-range'), `bytes 1000-${big.size - 1}/${big.size}`);
    assert.equal(Number(res.headers.get('content-length')), big.size - 1000);
    assert.deepEqual(res.body, bigBytes.subarray(1000));
    const last = await request(blobUrl(big.digest), { range: `bytes=${big.size - 1}-` });
    assert.equal(last.status, 206);
    assert.deepEqual(last.body, bigBytes.subarray(-1));
  });

  it('answers Range bytes=N-M with just those bytes, from the cache or a fetch', async () => {
    const small = image.layers[1];
    const smallBytes = await readFile(image.blobPath(small.digest));
    for (const [blob, bytes] of [
      [big, bigBytes],
      [small, smallBytes], // not cached yet: the fetch starts here
    ] as const) {
      const res = await request(blobUrl(blob.digest), { range: 'bytes=100-4195' });
      assert.equal(res.status, 206, blob.digest);
      assert.equal(res.headers.get('content-range'), `bytes 100-4195/${blob.size}`);
      assert.equal(Number(res.headers.get('content-length')), 4096);
      assert.deepEqual(res.body, bytes.subarray(100, 4196));
    }
    // An end past the blob's end stops at it.
    const clipped = await request(blobUrl(big.digest), { range: `bytes=10-${big.size + 99}` });
    assert.equal(clipped.status, 206);
    assert.equal(clipped.headers.get('content-range'), `bytes 10-${big.size - 1}/${big.size}`);
    assert.deepEqual(clipped.body, bigBytes.subarray(10));
  });

  it('answers 416 for a range that starts past the end, or one it does not serve', async () => {
    const past = await request(blobUrl(big.digest), { range: `bytes=${big.size + 10}-` });
    assert.equal(past.status, 416);
    assert.equal(errorCode(past), 'BLOB_UNKNOWN');
    const multi = await request(blobUrl(big.digest), { range: 'bytes=0-1,5-6' });
    assert.equal(multi.status, 416);
  });

  it('answers 416 for bytes=SIZE- and for a range that ends before it starts (RFC 9110 §14.1.1, §15.5.17)', async () => {
    /** What the mirror answered, in a line that tells what went wrong. */
    const outcome = (range: string): Promise<string> =>
      request(blobUrl(big.digest), { range }).then(
        (res) =>
          `${range}: ${res.status} content-range=${res.headers.get('content-range')} content-length=${res.headers.get('content-length')} body=${res.body.length}`,
        (err: Error) =>
          `${range}: no answer (${String((err.cause as Error | undefined)?.message)})`,
      );
    const answers = await Promise.all([`bytes=${big.size}-`, 'bytes=500-100'].map(outcome));
    assert.deepEqual(
      answers.map((answer) => / 416 /.test(answer)),
      [true, true],
      `the mirror answered:\n${answers.join('\n')}`,
    );
  });

  it('answers 400 DIGEST_INVALID with an OCI error body for a malformed digest', async () => {
    for (const digest of ['sha256:abc', `sha512:${'a'.repeat(128)}`, 'latest']) {
      const res = await request(blobUrl(digest));
      assert.equal(res.status, 400, digest);
      assert.equal(res.headers.get('content-type'), 'application/json');
      assert.equal(errorCode(res), 'DIGEST_INVALID');
    }
  });

  it('answers 404 for an unknown route, a blob the upstream lacks, and an invalid tag', async () => {
    for (const path of [`/v2/${image.name}/tags/list`, '/v3/', '/v2/UPPER/blobs/x']) {
      const res = await request(`http://${mirror.strict.address}${path}`);
      assert.equal(res.status, 404, path);
      assert.ok(errorCode(res), path);
    }
    const unknown = await request(blobUrl(digestOf(Buffer.from('nowhere'))));
    assert.equal(unknown.status, 404);
    const badTag = await request(mirror.url(image.name, 'manifests', '-bad-tag'));
    assert.equal(badTag.status, 404);
    assert.equal(errorCode(badTag), 'MANIFEST_UNKNOWN');
  });

  it('passes a manifest by tag through with the Accept given, and caches it by digest', async () => {
    const manifest = image.manifest;
    const refused = await request(mirror.url(image.name, 'manifests', 'latest'), {
      accept: 'application/vnd.docker.distribution.manifest.v2+json',
    });
    assert.equal(refused.status, 404, 'the upstream refuses an OCI manifest to this Accept');
    assert.equal(errorCode(refused), 'MANIFEST_UNKNOWN');
    assert.equal(mirror.cache.stat(manifest.digest), undefined);

    const byTag = await request(mirror.url(image.name, 'manifests', 'latest'), {
      accept: `${OCI_MANIFEST}, ${OCI_INDEX}`,
    });
    assert.equal(byTag.status, 200);
    assert.equal(byTag.headers.get('content-type'), OCI_MANIFEST);
    assert.equal(byTag.headers.get('docker-content-digest'), manifest.digest);
    assert.equal(digestOf(byTag.body), manifest.digest);
    assert.deepEqual(mirror.cache.stat(manifest.digest), {
      digest: manifest.digest,
      size: manifest.size,
    });

    const before = await mirror.metric('lcfs_mirror_requests_total', {
      source: 'local',
      kind: 'manifest',
    });
    for (const method of ['GET', 'HEAD']) {
      const byDigest = await request(
        mirror.url(image.name, 'manifests', manifest.digest),
        {},
        method,
      );
      assert.equal(byDigest.status, 200, method);
      assert.equal(byDigest.headers.get('content-type'), OCI_MANIFEST);
      assert.equal(byDigest.headers.get('docker-content-digest'), manifest.digest);
      assert.equal(Number(byDigest.headers.get('content-length')), manifest.size);
      assert.deepEqual(byDigest.body, method === 'GET' ? byTag.body : Buffer.alloc(0));
    }
    assert.equal(
      await mirror.metric('lcfs_mirror_requests_total', { source: 'local', kind: 'manifest' }),
      before + 2,
    );
    assert.equal(manifestTypeOf(byTag.body), OCI_MANIFEST);
  });

  describe('with the upstream down', () => {
    before(async () => {
      // The tag was resolved (and remembered) by the previous test.
      await registry.stop();
    });

    after(async () => {
      await registry.restart();
    });

    it('resolves a tag from its last digest only on the mirror that allows stale tags', async () => {
      const accept = { accept: OCI_MANIFEST };
      const strict = await request(mirror.url(image.name, 'manifests', 'latest'), accept);
      assert.equal(strict.status, 503);
      assert.equal(errorCode(strict), 'UNAVAILABLE');

      const stale = await request(
        mirror.url(image.name, 'manifests', 'latest', mirror.stale),
        accept,
      );
      assert.equal(stale.status, 200);
      assert.equal(stale.headers.get('docker-content-digest'), image.manifest.digest);
      assert.equal(stale.headers.get('content-type'), OCI_MANIFEST);
      assert.equal(digestOf(stale.body), image.manifest.digest);

      const never = await request(mirror.url(image.name, 'manifests', 'v9', mirror.stale), accept);
      assert.equal(never.status, 503, 'a tag never resolved has no last digest');
    });

    it('still serves cached blobs and manifests by digest; others are unavailable', async () => {
      for (const m of [mirror.strict, mirror.stale]) {
        const blob = await request(mirror.url(image.name, 'blobs', big.digest, m));
        assert.equal(blob.status, 200);
        assert.deepEqual(blob.body, bigBytes);
        const manifest = await request(
          mirror.url(image.name, 'manifests', image.manifest.digest, m),
        );
        assert.equal(manifest.status, 200);
      }
      const uncached = await request(blobUrl(image.config.digest));
      assert.equal(uncached.status, 503);
      assert.equal(errorCode(uncached), 'UNAVAILABLE');
    });
  });

  describe('with a private upstream', () => {
    let locked: Registry;
    let privateImage: RandomImage;
    let privateMirror: TestMirror;

    before(async () => {
      locked = await Registry.start({ auth: true });
      privateImage = await pushRandomImage(locked, {
        dir: join(tmp, 'private-image'),
        name: 'lcfs-test/private',
        layerSizes: [64 * KiB],
      });
      const authFile = join(tmp, 'auth.json');
      const { username, password } = locked.credentials!;
      await writeFile(
        authFile,
        JSON.stringify({ auths: { [locked.host]: { username, password } } }),
      );
      privateMirror = await TestMirror.start(locked, join(tmp, 'private-mirror'), authFile);
    });

    after(async () => {
      await privateMirror?.close();
      await locked?.dispose();
    });

    it('serves the host its blobs, and refuses a client the upstream refuses, cached or not', async () => {
      const layer = privateImage.layers[0];
      const url = privateMirror.url(privateImage.name, 'blobs', layer.digest);
      const host = await request(url);
      assert.equal(host.status, 200);
      assert.equal(digestOf(host.body), layer.digest);
      assert.ok(privateMirror.cache.stat(layer.digest));

      const wrong = basicAuthorization({ ...locked.credentials!, password: 'wrong' });
      const refused = await request(url, { authorization: wrong });
      assert.equal(refused.status, 401);
      assert.equal(errorCode(refused), 'UNAUTHORIZED');
      assert.match(refused.headers.get('www-authenticate') ?? '', /^Basic realm=/);
      assert.equal(refused.body.includes(host.body.subarray(0, 32)), false);

      const right = await request(url, { authorization: basicAuthorization(locked.credentials!) });
      assert.equal(right.status, 200);
    });
  });
});
