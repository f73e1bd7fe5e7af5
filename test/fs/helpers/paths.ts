/**
 * Path-level conveniences over the ino-level LayerStore API, as a test (or a FUSE client) would
 * drive it. Paths are absolute within the layer ('/a/b'); nothing here follows symlinks.
 */
import { isStoreError } from '../../../fs/errors.js';
import type { LayerStore } from '../../../fs/layer-store.js';
import type { Attr, Caller } from '../../../fs/types.js';
import { ROOT, S_IFDIR, S_IFMT, S_IFREG } from './posix.js';

/** FUSE's default max_write: writes arrive in pieces of this size. */
export const FUSE_WRITE_SIZE = 128 * 1024;

export function splitPath(path: string): string[] {
  return path.split('/').filter((c) => c !== '');
}

export function joinPath(dir: string, name: string): string {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
}

export function parentPath(path: string): string {
  const parts = splitPath(path);
  return parts.length <= 1 ? '/' : '/' + parts.slice(0, -1).join('/');
}

export function baseName(path: string): string {
  const parts = splitPath(path);
  if (parts.length === 0) throw new Error('the root has no name');
  return parts[parts.length - 1];
}

/** Every proper ancestor of `path` except '/', nearest first. */
export function ancestors(path: string): string[] {
  const out: string[] = [];
  for (let p = parentPath(path); p !== '/'; p = parentPath(p)) out.push(p);
  return out;
}

/** Resolves a path by `lookup` from the root, one component at a time. */
export function lookupPath(store: LayerStore, id: string, path: string): Attr {
  let attr = store.getattr(id, store.root(id));
  for (const name of splitPath(path)) attr = store.lookup(id, attr.ino, name);
  return attr;
}

/** The parent directory's ino and the last component of `path`. */
export function parentOf(
  store: LayerStore,
  id: string,
  path: string,
): { dir: number; name: string } {
  return { dir: lookupPath(store, id, parentPath(path)).ino, name: baseName(path) };
}

export function exists(store: LayerStore, id: string, path: string): boolean {
  try {
    lookupPath(store, id, path);
    return true;
  } catch (err) {
    if (isStoreError(err, 'ENOENT') || isStoreError(err, 'ENOTDIR')) return false;
    throw err;
  }
}

/** mkdir -p; existing directories are left as they are. */
export function mkdirp(
  store: LayerStore,
  id: string,
  path: string,
  mode = 0o755,
  caller: Caller = ROOT,
): Attr {
  let attr = store.getattr(id, store.root(id));
  for (const name of splitPath(path)) {
    let next: Attr;
    try {
      next = store.lookup(id, attr.ino, name);
    } catch (err) {
      if (!isStoreError(err, 'ENOENT')) throw err;
      next = store.mkdir(id, attr.ino, name, mode, caller);
    }
    if ((next.mode & S_IFMT) !== S_IFDIR)
      throw new Error(`mkdirp ${path}: ${name} is not a directory`);
    attr = next;
  }
  return attr;
}

/** Writes `data` at `offset` in pieces of `pieceSize`, as FUSE would deliver it. */
export async function writeAt(
  store: LayerStore,
  id: string,
  ino: number,
  offset: number,
  data: Buffer,
  pieceSize = FUSE_WRITE_SIZE,
): Promise<void> {
  for (let off = 0; off < data.length; off += pieceSize) {
    const piece = data.subarray(off, Math.min(off + pieceSize, data.length));
    const n = await store.write(id, ino, offset + off, piece);
    if (n !== piece.length)
      throw new Error(`write of ${piece.length} bytes at ${offset + off} returned ${n}`);
  }
}

export interface WriteFileOptions {
  mode?: number;
  caller?: Caller;
  pieceSize?: number;
}

/**
 * Creates the file (its parent must exist) or truncates an existing one, then writes `data`.
 * Returns the attributes after the write.
 */
export async function writeFile(
  store: LayerStore,
  id: string,
  path: string,
  data: Buffer | string,
  options: WriteFileOptions = {},
): Promise<Attr> {
  const { dir, name } = parentOf(store, id, path);
  const buf = typeof data === 'string' ? Buffer.from(data) : data;
  let existing: Attr | undefined;
  try {
    existing = store.lookup(id, dir, name);
  } catch (err) {
    if (!isStoreError(err, 'ENOENT')) throw err;
  }
  let ino: number;
  if (existing) {
    ino = existing.ino;
    await store.setattr(id, ino, { size: 0 });
  } else {
    ino = store.create(
      id,
      dir,
      name,
      S_IFREG | (options.mode ?? 0o644),
      options.caller ?? ROOT,
    ).ino;
  }
  await writeAt(store, id, ino, 0, buf, options.pieceSize);
  return store.getattr(id, ino);
}

/** Reads `length` bytes from `offset`, looping over short reads; stops early only at EOF. */
export async function readRange(
  store: LayerStore,
  id: string,
  ino: number,
  offset: number,
  length: number,
): Promise<Buffer> {
  const parts: Buffer[] = [];
  let got = 0;
  while (got < length) {
    const want = Math.min(1 << 20, length - got);
    const buf = await store.read(id, ino, offset + got, want);
    if (buf.length > want)
      throw new Error(`read of ${want} bytes at ${offset + got} returned ${buf.length}`);
    if (buf.length === 0) break;
    parts.push(buf);
    got += buf.length;
  }
  return Buffer.concat(parts);
}

/** The whole content of the regular file at `path`, checked against its size. */
export async function readFile(store: LayerStore, id: string, path: string): Promise<Buffer> {
  const attr = lookupPath(store, id, path);
  const buf = await readRange(store, id, attr.ino, 0, attr.size);
  if (buf.length !== attr.size)
    throw new Error(`${id}:${path} has size ${attr.size} but reads ${buf.length} bytes`);
  return buf;
}

/** rm -rf through the API. */
export function removeTree(store: LayerStore, id: string, path: string): void {
  const { dir, name } = parentOf(store, id, path);
  const attr = store.lookup(id, dir, name);
  if ((attr.mode & S_IFMT) !== S_IFDIR) {
    store.unlink(id, dir, name);
    return;
  }
  for (const e of store.readdir(id, attr.ino)) {
    if (e.name === '.' || e.name === '..') continue;
    removeTree(store, id, joinPath(path, e.name));
  }
  store.rmdir(id, dir, name);
}
