/**
 * Container images built on the host, with no registry: layer folders tarred into a
 * docker-archive (`docker save` format) that `ctr images import` reads.
 *
 *   const image = await buildImageTar({ dir, tag: 'docker.io/library/bb:1', layers: [l1, l2] });
 *   image.chainIds;   // containerd's snapshot names of the unpacked layers, bottom first
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SeededRandom } from '../../fs/helpers/prng.js';
import { run } from '../../fuse/helpers/shell.js';

export interface ImageTar {
  /** The docker-archive. */
  path: string;
  tag: string;
  /** sha256:… of each uncompressed layer tar, bottom first. */
  diffIds: string[];
  /** identity.ChainID of each prefix of diffIds: the names containerd commits layers under. */
  chainIds: string[];
  /** Bytes of layer tars in the image. */
  layerBytes: number;
}

async function sha256File(path: string): Promise<{ digest: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of createReadStream(path) as AsyncIterable<Buffer>) {
    hash.update(chunk);
    size += chunk.length;
  }
  return { digest: `sha256:${hash.digest('hex')}`, size };
}

async function execOk(argv: string[]): Promise<string> {
  const r = await run(argv, { timeoutMs: 300_000 });
  if (r.code !== 0)
    throw new Error(`$ ${argv.join(' ')}\n(exit ${r.code})\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** containerd's (OCI identity) chain IDs: chain[0] = diff[0], chain[n] = sha256(chain[n-1] + " " + diff[n]). */
export function chainIds(diffIds: readonly string[]): string[] {
  const out: string[] = [];
  for (const diff of diffIds) {
    const prev = out.at(-1);
    out.push(
      prev === undefined
        ? diff
        : `sha256:${createHash('sha256').update(`${prev} ${diff}`).digest('hex')}`,
    );
  }
  return out;
}

/**
 * Tars each layer folder (numeric owners, xattrs), writes the image config and manifest.json, and
 * tars them into `<dir>/image.tar`. Whiteouts are files named `.wh.<name>` in a layer folder.
 */
export async function buildImageTar(opts: {
  dir: string;
  tag: string;
  layers: string[];
  cmd?: string[];
}): Promise<ImageTar> {
  const work = join(opts.dir, 'archive');
  await mkdir(work, { recursive: true });
  const diffIds: string[] = [];
  const layerFiles: string[] = [];
  let layerBytes = 0;
  for (const [n, layer] of opts.layers.entries()) {
    const name = `layer${n}.tar`;
    await execOk(['tar', '--numeric-owner', '--xattrs', '-C', layer, '-cf', join(work, name), '.']);
    const { digest, size } = await sha256File(join(work, name));
    diffIds.push(digest);
    layerFiles.push(name);
    layerBytes += size;
  }
  const config = JSON.stringify({
    architecture: 'amd64',
    os: 'linux',
    config: {
      Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
      Cmd: opts.cmd ?? ['sh'],
    },
    rootfs: { type: 'layers', diff_ids: diffIds },
    history: diffIds.map(() => ({ created_by: 'lcfs test image builder' })),
  });
  const configName = `${createHash('sha256').update(config).digest('hex')}.json`;
  await writeFile(join(work, configName), config);
  await writeFile(
    join(work, 'manifest.json'),
    JSON.stringify([{ Config: configName, RepoTags: [opts.tag], Layers: layerFiles }]),
  );
  const path = join(opts.dir, 'image.tar');
  await execOk(['tar', '-C', work, '-cf', path, 'manifest.json', configName, ...layerFiles]);
  return { path, tag: opts.tag, diffIds, chainIds: chainIds(diffIds), layerBytes };
}

/**
 * A layer of seeded random files under `root/<top>`: `files` files whose sizes add up to about
 * `bytes` (a few large ones, many small ones), incompressible, in nested folders.
 */
export async function writeRandomLayer(
  root: string,
  top: string,
  opts: { seed: number; files: number; bytes: number },
): Promise<{ files: number; bytes: number }> {
  const rng = new SeededRandom(opts.seed);
  const big = Math.max(1, Math.round(opts.files / 20));
  const small = opts.files - big;
  // Small files take about a tenth of the bytes, big files the rest.
  const smallAvg = Math.max(1, Math.floor((opts.bytes * 0.1) / Math.max(1, small)));
  const bigAvg = Math.floor((opts.bytes * 0.9) / big);
  let written = 0;
  for (let n = 0; n < opts.files; n++) {
    const isBig = n < big;
    const avg = isBig ? bigAvg : smallAvg;
    const size = rng.int(Math.floor(avg / 2), Math.floor((avg * 3) / 2));
    const dir = join(root, top, `d${rng.int(0, 7)}`, `e${rng.int(0, 3)}`);
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, `${isBig ? 'big' : 'f'}${n}.bin`), rng.bytes(size));
    written += size;
  }
  return { files: opts.files, bytes: written };
}
