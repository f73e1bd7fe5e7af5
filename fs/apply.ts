import type { Readable } from 'node:stream';
import { sha256, type ChunkStore } from './chunks.js';
import { StoreError, isStoreError } from './errors.js';
import { CHUNK_SIZE } from './layer-store.js';
import {
  contentKey,
  isDir,
  isLnk,
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFMT,
  S_IFREG,
  type InodeRecord,
} from './records.js';
import { makeDev, readTar, type TarHeader } from './tar.js';
import type { LayerTree } from './tree.js';
import type { Timespec } from './types.js';

const WHITEOUT = '.wh.';
const OPAQUE = '.wh..wh..opq';
/** AUFS metadata at the top of a layer; its `plnk` folder holds hard-link sources. */
const AUFS_META = '.wh..wh.';
const AUFS_LINKS = '.wh..wh.plnk';
const ROOT_CALLER = { uid: 0, gid: 0 };

export interface ApplyResult {
  /** Sum of the entries' sizes, as Docker's ApplyDiff reports it. */
  size: number;
  /** Sealed chunks this apply wrote to disk, to be synced before it is acknowledged. */
  written: string[];
  /** Chunks pinned while the apply ran; unpin them once its records are committed or dropped. */
  pinned: string[];
}

function unsafe(entry: string, why: string): StoreError {
  return new StoreError('LCFS_ETAR_UNSAFE', 'EINVAL', `unsafe tar entry "${entry}": ${why}`);
}

/** The entry's path inside the layer, or an error when it would leave the layer. */
export function layerPath(raw: string, entry: string): string[] {
  if (raw.startsWith('/')) throw unsafe(entry, 'absolute path');
  const parts = raw.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw unsafe(entry, "path contains '..'");
  return parts;
}

/**
 * Applies a layer tar to `tree`, which must be backed by a staging view: nothing is visible until
 * the caller commits it. Whiteouts, opaque directories and hard links follow Docker's layer
 * format; paths are resolved without following symlinks, so no entry can reach outside.
 */
export async function applyTar(
  tree: LayerTree,
  chunks: ChunkStore,
  tar: Readable,
): Promise<ApplyResult> {
  const result: ApplyResult = { size: 0, written: [], pinned: [] };
  const writer = new ChunkWriter(chunks, result);
  const addedHere = new Set<string>();
  const dirTimes = new Map<number, Timespec>();
  try {
    for await (const { header, body } of readTar(tar)) {
      result.size += header.size;
      const parts = layerPath(header.path, header.path);
      // AUFS metadata is not content; only its hard-link sources are kept, until the end.
      if (parts[0]?.startsWith(AUFS_META) && parts[0] !== AUFS_LINKS) continue;
      try {
        if (parts.length === 0) {
          if (header.type === 'dir') applyAttrs(tree, tree.layer.root, header, dirTimes);
          continue;
        }
        const name = parts.pop() as string;
        const dir = parentDir(tree, parts, header.path);
        if (name.startsWith(WHITEOUT)) {
          if (name === OPAQUE) makeOpaque(tree, dir, addedHere);
          else if (!name.startsWith(WHITEOUT + WHITEOUT))
            removeIfPresent(tree, dir, name.slice(WHITEOUT.length));
          continue;
        }
        addedHere.add(`${dir}/${name}`);
        const existing = tree.entry(dir, name);
        if (existing !== undefined) {
          const rec = tree.inode(existing);
          if (header.type === 'dir' && isDir(rec.mode)) {
            applyAttrs(tree, existing, header, dirTimes);
            continue;
          }
          tree.removeName(dir, tree.inode(dir), name, existing, rec);
        }
        const ino = await createNode(tree, writer, dir, name, header, body);
        applyAttrs(tree, ino, header, dirTimes);
      } catch (err) {
        if (
          isStoreError(err) &&
          (err.code === 'LCFS_ETAR_UNSAFE' || err.code === 'LCFS_ETAR_INVALID')
        )
          throw err;
        const why = err instanceof Error ? err.message : String(err);
        throw new StoreError('LCFS_ETAR_INVALID', 'EINVAL', `tar entry "${header.path}": ${why}`);
      }
    }
    const links = tree.entry(tree.layer.root, AUFS_LINKS);
    if (links !== undefined) removeTree(tree, tree.layer.root, AUFS_LINKS, links);
    // Directory times last: creating entries inside a directory changes its mtime.
    for (const [ino, mtime] of dirTimes) {
      if (tree.live(ino)) tree.putInode(ino, { ...tree.inode(ino), mtime, atime: mtime });
    }
    await writer.drain();
    return result;
  } catch (err) {
    // Let writes under way finish before their chunks are unpinned and released.
    await writer.drain().catch(() => undefined);
    for (const ref of result.pinned) chunks.unpin(ref);
    result.pinned = [];
    throw err;
  }
}

/** The directory holding an entry; missing parents are made as Docker makes them (0755 root). */
function parentDir(tree: LayerTree, parts: string[], entry: string): number {
  let dir = tree.layer.root;
  for (const part of parts) {
    const ino = tree.entry(dir, part);
    if (ino === undefined) {
      dir = tree.mkdir(dir, part, 0o755, ROOT_CALLER).ino;
      continue;
    }
    const rec = tree.inode(ino);
    if (isLnk(rec.mode)) throw unsafe(entry, `parent ${part} is a symlink`);
    if (!isDir(rec.mode))
      throw new StoreError(
        'LCFS_ETAR_INVALID',
        'ENOTDIR',
        `tar entry "${entry}": ${part} is not a directory`,
      );
    dir = ino;
  }
  return dir;
}

/** Removes a directory name by name, so files linked from elsewhere keep the right link count. */
function removeTree(tree: LayerTree, dir: number, name: string, ino: number): void {
  const rec = tree.inode(ino);
  if (isDir(rec.mode)) {
    for (const [child, childIno] of tree.entries(ino)) removeTree(tree, ino, child, childIno);
  }
  tree.removeName(dir, tree.inode(dir), name, ino, tree.inode(ino));
}

function removeIfPresent(tree: LayerTree, dir: number, name: string): void {
  const ino = tree.entry(dir, name);
  if (ino !== undefined) tree.removeName(dir, tree.inode(dir), name, ino, tree.inode(ino));
}

/** Hides everything in `dir` that this apply did not itself put there. */
function makeOpaque(tree: LayerTree, dir: number, addedHere: Set<string>): void {
  for (const [name, ino] of tree.entries(dir)) {
    if (!addedHere.has(`${dir}/${name}`))
      tree.removeName(dir, tree.inode(dir), name, ino, tree.inode(ino));
  }
}

async function createNode(
  tree: LayerTree,
  writer: ChunkWriter,
  dir: number,
  name: string,
  h: TarHeader,
  body: AsyncIterable<Buffer>,
): Promise<number> {
  switch (h.type) {
    case 'dir':
      return tree.mkdir(dir, name, h.mode, ROOT_CALLER).ino;
    case 'symlink':
      return tree.symlink(dir, name, h.linkname, ROOT_CALLER).ino;
    case 'link': {
      const target = layerPath(h.linkname, h.path);
      let ino = tree.layer.root;
      for (const part of target) {
        const rec = tree.inode(ino);
        if (isLnk(rec.mode)) throw unsafe(h.path, `hard link target goes through symlink ${part}`);
        const next = tree.entry(ino, part);
        if (next === undefined)
          throw new StoreError(
            'LCFS_ETAR_INVALID',
            'ENOENT',
            `tar entry "${h.path}": hard link target ${h.linkname} does not exist`,
          );
        ino = next;
      }
      if (isDir(tree.inode(ino).mode)) throw unsafe(h.path, 'hard link to a directory');
      return tree.link(ino, dir, name).ino;
    }
    case 'char':
    case 'block':
    case 'fifo': {
      const kind = h.type === 'char' ? S_IFCHR : h.type === 'block' ? S_IFBLK : S_IFIFO;
      return tree.mknod(dir, name, kind | h.mode, makeDev(h.devmajor, h.devminor), ROOT_CALLER).ino;
    }
    case 'file': {
      const ino = tree.newNode(dir, name, S_IFREG | h.mode, ROOT_CALLER).ino;
      const refs = await storeContent(writer, body, h.size);
      for (const ref of refs) tree.view.addRef(ref, 1);
      if (refs.length > 0) tree.view.put(contentKey(tree.index, ino), refs);
      tree.putInode(ino, { ...tree.inode(ino), size: h.size });
      return ino;
    }
  }
}

/** Chunk writes an apply keeps in flight while it reads on: enough to hide file latency. */
const WRITES_IN_FLIGHT = 16;

/**
 * Stores an apply's chunks without waiting for each: the tar is parsed and hashed while earlier
 * chunks are written, with at most WRITES_IN_FLIGHT writes (and their buffers) outstanding.
 */
class ChunkWriter {
  private readonly inflight = new Set<Promise<void>>();
  private failure: Error | undefined;

  constructor(
    private readonly chunks: ChunkStore,
    private readonly result: ApplyResult,
  ) {}

  async submit(hash: string, data: Buffer): Promise<void> {
    if (this.failure !== undefined) throw this.failure;
    this.result.pinned.push(hash);
    const write = this.chunks.storeSealed(hash, data).then(
      (written) => {
        if (written > 0) this.result.written.push(hash);
      },
      (err: unknown) => {
        this.failure ??= err instanceof Error ? err : new Error(String(err));
      },
    );
    const tracked = write.finally(() => this.inflight.delete(tracked));
    this.inflight.add(tracked);
    if (this.inflight.size >= WRITES_IN_FLIGHT) await Promise.race(this.inflight);
  }

  async drain(): Promise<void> {
    await Promise.all(this.inflight);
    if (this.failure !== undefined) throw this.failure;
  }
}

/** Cuts a body into chunks, storing each under its hash; a chunk the store holds costs nothing. */
async function storeContent(
  writer: ChunkWriter,
  body: AsyncIterable<Buffer>,
  size: number,
): Promise<string[]> {
  const refs: string[] = [];
  let left = size;
  const fresh = (): Buffer => Buffer.allocUnsafe(Math.max(1, Math.min(CHUNK_SIZE, left)));
  let buf = fresh();
  let fill = 0;
  const seal = async (): Promise<void> => {
    const data = buf.subarray(0, fill);
    const hash = sha256(data);
    refs.push(hash);
    left -= fill;
    await writer.submit(hash, data);
    buf = fresh();
    fill = 0;
  };
  for await (const part of body) {
    for (let at = 0; at < part.length;) {
      const n = Math.min(part.length - at, buf.length - fill);
      part.copy(buf, fill, at, at + n);
      fill += n;
      at += n;
      if (fill === buf.length) await seal();
    }
  }
  if (fill > 0) await seal();
  return refs;
}

function applyAttrs(
  tree: LayerTree,
  ino: number,
  h: TarHeader,
  dirTimes: Map<number, Timespec>,
): void {
  const rec: InodeRecord = tree.inode(ino);
  const xattrs: Record<string, Uint8Array> = {};
  for (const [k, v] of Object.entries(h.xattrs)) xattrs[k] = Uint8Array.from(v);
  tree.putInode(ino, {
    ...rec,
    mode: (rec.mode & S_IFMT) | h.mode,
    uid: h.uid,
    gid: h.gid,
    mtime: h.mtime,
    atime: h.mtime,
    xattrs,
  });
  if ((rec.mode & S_IFMT) === S_IFDIR) dirTimes.set(ino, h.mtime);
}
