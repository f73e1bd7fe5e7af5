/**
 * Test images made of random layers, written as an OCI image layout and pushed to a registry
 * as they are (same layer, config and manifest digests), so tests can check every byte a pull
 * moved against the digests and the blob files here.
 *
 *   const image = await pushRandomImage(registry, {
 *     dir: join(tmp, 'img1'),            // the layout goes here (a new folder per image)
 *     name: 'lcfs-test/rand',            // pushed as 127.0.0.1:PORT/lcfs-test/rand:latest
 *     layerSizes: [1 << 20, 8 << 20],    // one file of random bytes per layer
 *     busybox: true,                     // so that `docker run IMAGE /bin/busybox true` works
 *   });
 *   image.ref; image.manifest.digest; image.layers[1].digest; image.layers[1].size;
 *   await readFile(image.blobPath(image.layers[1].digest));   // the blob's bytes
 *
 * - A random layer is a gzip'd tar holding `random/<n>.bin`, whose bytes depend only on the seed
 *   (default `name:tag`) and the layer's index: incompressible, and the same on every run.
 * - The busybox layer is built with fixed times and sorted names, so every image built here has
 *   the same busybox blob.
 * - The manifest is an OCI image manifest, whose config has `rootfs.diff_ids` (the sha256 of each
 *   uncompressed tar), which dockerd 20.10 and containerd 1.6 both pull and run. The registry
 *   serves it only to a request whose Accept lists OCI_MANIFEST; to others it answers 404
 *   MANIFEST_UNKNOWN ("OCI manifest found, but accept header does not support OCI manifests").
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { makeBusyboxRootfs } from '../../docker/helpers/busybox-image.js';
import { execOk } from '../../docker/helpers/exec.js';
import { labelledBytes } from '../../fs/helpers/prng.js';
import { END_OF_ARCHIVE, encodeUstarHeader, tarPadding } from '../../fs/helpers/tar.js';
import type { Registry } from '../../helpers/registry.js';
import { digestOf } from '../../../cluster/digest.js';

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
export const OCI_LAYER_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';

/** An OCI content descriptor: what a manifest says about a blob. */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
}

export interface LayerDescriptor extends Descriptor {
  /** sha256:… of the uncompressed tar, as in the config's rootfs.diff_ids. */
  diffId: string;
}

export interface RandomImageSpec {
  /** A new (or empty) folder for this image's OCI layout. */
  dir: string;
  /** Repository name, e.g. `lcfs-test/rand`. */
  name: string;
  /** Default `latest`. */
  tag?: string;
  /** Bytes of random content in each layer, bottom first (the blob adds tar headers and gzip). */
  layerSizes: number[];
  /** Put a busybox-static layer (/bin/busybox and its applets) below the random ones. */
  busybox?: boolean;
  /** Seeds the random bytes; default `name:tag`. */
  seed?: string;
}

/** An image written as an OCI image layout. */
export interface RandomImageLayout {
  name: string;
  tag: string;
  layoutDir: string;
  manifest: Descriptor;
  config: Descriptor;
  /** Bottom first: the busybox layer, if any, then the random ones. */
  layers: LayerDescriptor[];
  /** The file in the layout that holds a blob's bytes. */
  blobPath(digest: string): string;
}

/** The same, pushed. */
export interface RandomImage extends RandomImageLayout {
  /** `HOST/NAME:TAG`. */
  ref: string;
}

const CHUNK = 1 << 20;

/** Docker's and OCI's names for this machine's architecture. */
const OCI_ARCH: Partial<Record<NodeJS.Architecture, string>> = { x64: 'amd64', arm64: 'arm64' };

/** A pass-through that hashes and counts the bytes flowing through it. */
class Digester extends Transform {
  private readonly hash = createHash('sha256');
  size = 0;
  digest = '';

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.hash.update(chunk);
    this.size += chunk.length;
    done(null, chunk);
  }

  override _flush(done: TransformCallback): void {
    this.digest = `sha256:${this.hash.digest('hex')}`;
    done();
  }
}

function blobPathIn(layoutDir: string, digest: string): string {
  return join(layoutDir, 'blobs', 'sha256', digest.replace(/^sha256:/, ''));
}

async function writeJsonBlob(
  layoutDir: string,
  mediaType: string,
  value: unknown,
): Promise<Descriptor> {
  const bytes = Buffer.from(JSON.stringify(value));
  const digest = digestOf(bytes);
  await writeFile(blobPathIn(layoutDir, digest), bytes);
  return { mediaType, digest, size: bytes.length };
}

/** Gzips a tar stream into the layout's blobs, hashing the tar and the blob on the way. */
async function writeLayerBlob(layoutDir: string, tar: Readable): Promise<LayerDescriptor> {
  const uncompressed = new Digester();
  const compressed = new Digester();
  const partial = join(layoutDir, 'blobs', 'sha256', `.partial-${randomBytes(8).toString('hex')}`);
  // Level 1: random bytes do not compress at any level, and it is the fastest.
  await pipeline(
    tar,
    uncompressed,
    createGzip({ level: 1 }),
    compressed,
    createWriteStream(partial),
  );
  await rename(partial, blobPathIn(layoutDir, compressed.digest));
  return {
    mediaType: OCI_LAYER_GZIP,
    digest: compressed.digest,
    size: compressed.size,
    diffId: uncompressed.digest,
  };
}

/** A tar of `random/<index>.bin`: `size` bytes drawn from `label`, generated as it is read. */
function randomLayerTar(label: string, index: number, size: number): Readable {
  function* generate(): Generator<Buffer> {
    yield encodeUstarHeader({ name: 'random/', typeflag: '5', mode: 0o755 });
    yield encodeUstarHeader({ name: `random/${index}.bin`, typeflag: '0', mode: 0o644, size });
    for (let offset = 0; offset < size; offset += CHUNK)
      yield labelledBytes(label, Math.min(CHUNK, size - offset), offset);
    yield tarPadding(size);
    yield END_OF_ARCHIVE;
  }
  return Readable.from(generate(), { objectMode: false });
}

/** busybox-static and its applet links, tarred with fixed times and sorted names. */
async function writeBusyboxLayer(layoutDir: string): Promise<LayerDescriptor> {
  const work = join(layoutDir, '.busybox');
  await mkdir(join(work, 'rootfs'), { recursive: true });
  try {
    await makeBusyboxRootfs(join(work, 'rootfs'));
    const tarPath = join(work, 'layer.tar');
    await execOk([
      'tar',
      '--numeric-owner',
      '--sort=name',
      '--mtime=@0',
      '-C',
      join(work, 'rootfs'),
      '-cf',
      tarPath,
      '.',
    ]);
    return await writeLayerBlob(layoutDir, createReadStream(tarPath));
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Writes the image as an OCI image layout in `spec.dir`. */
export async function writeRandomImage(spec: RandomImageSpec): Promise<RandomImageLayout> {
  const tag = spec.tag ?? 'latest';
  const seed = spec.seed ?? `${spec.name}:${tag}`;
  const layoutDir = spec.dir;
  const architecture = OCI_ARCH[process.arch];
  if (architecture === undefined) throw new Error(`no OCI name for arch ${process.arch}`);
  for (const size of spec.layerSizes)
    if (!Number.isSafeInteger(size) || size < 1) throw new Error(`bad layer size ${size}`);

  await mkdir(join(layoutDir, 'blobs', 'sha256'), { recursive: true });
  const layers: LayerDescriptor[] = [];
  if (spec.busybox) layers.push(await writeBusyboxLayer(layoutDir));
  for (const [index, size] of spec.layerSizes.entries())
    layers.push(await writeLayerBlob(layoutDir, randomLayerTar(`${seed}/${index}`, index, size)));

  const config = await writeJsonBlob(layoutDir, OCI_CONFIG, {
    created: '1970-01-01T00:00:00Z',
    architecture,
    os: 'linux',
    config: {
      Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
      ...(spec.busybox ? { Cmd: ['/bin/sh'] } : {}),
    },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
    history: layers.map((_, n) => ({
      created: '1970-01-01T00:00:00Z',
      created_by: spec.busybox && n === 0 ? 'lcfs test: busybox' : 'lcfs test: random layer',
    })),
  });
  const manifest = await writeJsonBlob(layoutDir, OCI_MANIFEST, {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
    layers: layers.map(({ mediaType, digest, size }) => ({ mediaType, digest, size })),
  });
  await writeFile(join(layoutDir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await writeFile(
    join(layoutDir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [{ ...manifest, annotations: { 'org.opencontainers.image.ref.name': tag } }],
    }),
  );
  return {
    name: spec.name,
    tag,
    layoutDir,
    manifest,
    config,
    layers,
    blobPath: (digest) => blobPathIn(layoutDir, digest),
  };
}

/** Writes the image (see writeRandomImage) and pushes it to `registry` with skopeo. */
export async function pushRandomImage(
  registry: Registry,
  spec: RandomImageSpec,
): Promise<RandomImage> {
  const image = await writeRandomImage(spec);
  const pushed = await registry.pushOciLayout(
    image.layoutDir,
    image.tag,
    `${image.name}:${image.tag}`,
  );
  if (pushed.digest !== image.manifest.digest)
    throw new Error(`skopeo pushed manifest ${pushed.digest}, not ${image.manifest.digest}`);
  return { ...image, ref: pushed.ref };
}
