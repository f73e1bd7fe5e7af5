/**
 * UpstreamRegistry against a real docker-registry on loopback: blobs and manifests by digest,
 * from an offset (the registry answers the Range with 206, and the total size comes from its
 * Content-Range), manifests by tag with Accept, a 404 as LCFS_EBLOB_UNKNOWN, a closed port as
 * LCFS_EUPSTREAM_UNREACHABLE; against a registry with basic auth, the host's credentials are
 * used (up front once the registry asked for Basic), a client's own header is used as is and
 * never replaced by the host's, and anonymous requests get the 401. parseChallenge is checked on
 * the challenges registries send.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { digestOf } from '../../cluster/digest.js';
import {
  identityKey,
  parseChallenge,
  UpstreamRegistry,
  type Identity,
  type UpstreamBlob,
} from '../../cluster/upstream-registry.js';
import { Upstreams } from '../../cluster/upstreams.js';
import { freePorts } from '../helpers/daemon.js';
import { basicAuthorization, Registry, REGISTRY_REALM } from '../helpers/registry.js';
import { OCI_MANIFEST, pushRandomImage, type RandomImage } from './helpers/random-images.js';

const KiB = 1024;
const logger = pino({ level: 'silent' });
const anonymous: Identity = { kind: 'anonymous' };

async function bytesOf(blob: UpstreamBlob): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of blob.body) chunks.push(chunk);
  return Buffer.concat(chunks);
}

describe('cluster: UpstreamRegistry', function () {
  this.timeout(120_000);
  let tmp: string;
  let open: Registry;
  let locked: Registry;
  let image: RandomImage;
  let privateImage: RandomImage;

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'lcfs-upstream-registry-'));
    [open, locked] = await Promise.all([Registry.start(), Registry.start({ auth: true })]);
    [image, privateImage] = await Promise.all([
      pushRandomImage(open, {
        dir: join(tmp, 'pub'),
        name: 'lcfs-test/pub',
        layerSizes: [300 * KiB],
      }),
      pushRandomImage(locked, {
        dir: join(tmp, 'priv'),
        name: 'lcfs-test/priv',
        layerSizes: [100 * KiB],
      }),
    ]);
  });

  after(async () => {
    await Promise.all([open?.dispose(), locked?.dispose()]);
    await rm(tmp, { recursive: true, force: true });
  });

  it('refuses a registryAuthFile it cannot read or parse, naming the file', async () => {
    const broken = join(tmp, 'auth-broken.json');
    await writeFile(broken, '{"auths": ');
    for (const path of [broken, join(tmp, 'auth-missing.json')]) {
      await assert.rejects(Upstreams.load([], path, logger), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'LCFS_EREGISTRY_AUTH');
        assert.ok(err.message.includes(path), err.message);
        return true;
      });
    }
  });

  describe('anonymous registry', () => {
    let upstream: UpstreamRegistry;

    before(() => {
      upstream = new UpstreamRegistry(open.host, open.url, undefined, logger);
    });

    it('gets a whole blob, with its size', async () => {
      const layer = image.layers[0];
      const blob = await upstream.content('blobs', image.name, layer.digest, 0, anonymous);
      assert.equal(blob.size, layer.size);
      assert.deepEqual(await bytesOf(blob), await readFile(image.blobPath(layer.digest)));
    });

    it('gets the rest of a blob from an offset, with the total size, by a Range', async () => {
      const layer = image.layers[0];
      const whole = await readFile(image.blobPath(layer.digest));
      for (const offset of [1, 100 * KiB + 7, layer.size - 1]) {
        const blob = await upstream.content('blobs', image.name, layer.digest, offset, anonymous);
        assert.equal(blob.size, layer.size);
        assert.deepEqual(await bytesOf(blob), whole.subarray(offset), `from ${offset}`);
      }
      const served = (await open.accessLog()).filter((e) => e.uri.endsWith(layer.digest));
      assert.deepEqual(
        served.slice(-3).map((e) => [e.status, e.bytes]),
        [
          [206, layer.size - 1],
          [206, layer.size - 100 * KiB - 7],
          [206, 1],
        ],
      );
    });

    it('gets a manifest by digest, and by tag with the Accept given', async () => {
      const byDigest = await upstream.content(
        'manifests',
        image.name,
        image.manifest.digest,
        0,
        anonymous,
      );
      const body = await bytesOf(byDigest);
      assert.equal(digestOf(body), image.manifest.digest);

      const byTag = await upstream.manifest('GET', image.name, 'latest', OCI_MANIFEST, anonymous);
      assert.equal(byTag.status, 200);
      assert.equal(byTag.headers.get('docker-content-digest'), image.manifest.digest);
      assert.deepEqual(Buffer.from(byTag.body), body);
      const head = await upstream.manifest('HEAD', image.name, 'latest', OCI_MANIFEST, anonymous);
      assert.equal(head.status, 200);
      assert.equal(head.body.length, 0);

      // The registry will not turn an OCI manifest into one the client did not accept.
      const docker = 'application/vnd.docker.distribution.manifest.v2+json';
      const refused = await upstream.manifest('GET', image.name, 'latest', docker, anonymous);
      assert.equal(refused.status, 404);
    });

    it('HEADs a blob: status and size, no body', async () => {
      const layer = image.layers[0];
      const res = await upstream.head('blobs', image.name, layer.digest, anonymous);
      assert.equal(res.status, 200);
      assert.equal(Number(res.headers.get('content-length')), layer.size);
    });

    it('fails with LCFS_EBLOB_UNKNOWN (404) for a blob the registry does not have', async () => {
      const unknown = digestOf(Buffer.from('not in the registry'));
      for (const repo of [image.name, 'lcfs-test/nothing-here']) {
        await assert.rejects(upstream.content('blobs', repo, unknown, 0, anonymous), {
          code: 'LCFS_EBLOB_UNKNOWN',
          status: 404,
        });
      }
      const head = await upstream.head('blobs', image.name, unknown, anonymous);
      assert.equal(head.status, 404);
    });

    it('fails with LCFS_EUPSTREAM_UNREACHABLE when nothing listens', async () => {
      const [port] = await freePorts(1);
      const gone = new UpstreamRegistry('gone', `http://127.0.0.1:${port}`, undefined, logger);
      const digest = image.layers[0].digest;
      const unreachable = { code: 'LCFS_EUPSTREAM_UNREACHABLE', message: /ECONNREFUSED/ };
      await assert.rejects(gone.content('blobs', 'x/y', digest, 0, anonymous), unreachable);
      await assert.rejects(gone.head('blobs', 'x/y', digest, anonymous), unreachable);
      await assert.rejects(gone.manifest('GET', 'x/y', 'latest', '*/*', anonymous), unreachable);
    });
  });

  describe('registry with basic auth', () => {
    const blobPath = () => `/v2/${privateImage.name}/blobs/${privateImage.layers[0].digest}`;

    /** Statuses the registry gave for the private blob since `from` requests. */
    async function statusesSince(from: number): Promise<number[]> {
      return (await locked.accessLog())
        .slice(from)
        .filter((e) => e.uri === blobPath())
        .map((e) => e.status);
    }

    it("uses the host's credentials, up front once the registry asked for Basic", async () => {
      const upstream = new UpstreamRegistry(locked.host, locked.url, locked.credentials, logger);
      const identity = upstream.identityFor(undefined);
      assert.equal(identity.kind, 'host');
      assert.deepEqual(upstream.identityFor(''), identity);
      const layer = privateImage.layers[0];
      const from = (await locked.accessLog()).length;
      for (let i = 0; i < 2; i++) {
        const blob = await upstream.content('blobs', privateImage.name, layer.digest, 0, identity);
        assert.equal(digestOf(await bytesOf(blob)), layer.digest);
      }
      assert.deepEqual(await statusesSince(from), [401, 200, 200]);
      const head = await upstream.head('blobs', privateImage.name, layer.digest, identity);
      assert.equal(head.status, 200);
    });

    it('refuses anonymous requests: the 401 and its challenge come back', async () => {
      const upstream = new UpstreamRegistry(locked.host, locked.url, undefined, logger);
      const identity = upstream.identityFor(undefined);
      assert.deepEqual(identity, anonymous);
      const layer = privateImage.layers[0];
      await assert.rejects(
        upstream.content('blobs', privateImage.name, layer.digest, 0, identity),
        {
          code: 'LCFS_EUPSTREAM',
          status: 401,
        },
      );
      const head = await upstream.head('blobs', privateImage.name, layer.digest, identity);
      assert.equal(head.status, 401);
      assert.equal(head.headers.get('www-authenticate'), `Basic realm="${REGISTRY_REALM}"`);
      const manifest = await upstream.manifest(
        'GET',
        privateImage.name,
        'latest',
        OCI_MANIFEST,
        identity,
      );
      assert.equal(manifest.status, 401);
    });

    it("sends a client's own Authorization as is, never the host's credentials instead", async () => {
      const upstream = new UpstreamRegistry(locked.host, locked.url, locked.credentials, logger);
      const creds = locked.credentials!;
      const layer = privateImage.layers[0];
      const right = upstream.identityFor(basicAuthorization(creds));
      assert.equal(right.kind, 'client');
      const blob = await upstream.content('blobs', privateImage.name, layer.digest, 0, right);
      assert.equal(digestOf(await bytesOf(blob)), layer.digest);

      const from = (await locked.accessLog()).length;
      const wrong = upstream.identityFor(basicAuthorization({ ...creds, password: 'wrong' }));
      await assert.rejects(upstream.content('blobs', privateImage.name, layer.digest, 0, wrong), {
        status: 401,
      });
      assert.deepEqual(await statusesSince(from), [401]);
      assert.notEqual(identityKey(right), identityKey(wrong));
    });
  });

  describe('parseChallenge', () => {
    it('parses a Bearer challenge with realm, service and a scope holding commas', () => {
      assert.deepEqual(
        parseChallenge(
          'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push"',
        ),
        {
          scheme: 'bearer',
          params: {
            realm: 'https://auth.docker.io/token',
            service: 'registry.docker.io',
            scope: 'repository:library/busybox:pull,push',
          },
        },
      );
    });

    it('parses a Basic challenge, unquoted values and any case', () => {
      assert.deepEqual(parseChallenge(`Basic realm="${REGISTRY_REALM}"`), {
        scheme: 'basic',
        params: { realm: REGISTRY_REALM },
      });
      assert.deepEqual(parseChallenge('BEARER Realm=https://r.example/t, Service = reg'), {
        scheme: 'bearer',
        params: { realm: 'https://r.example/t', service: 'reg' },
      });
    });

    it('gives nothing for an empty header', () => {
      assert.equal(parseChallenge(''), undefined);
    });
  });
});
