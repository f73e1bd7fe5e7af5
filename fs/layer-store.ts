import type { Readable } from 'node:stream';
import type {
  AccessCounters,
  Attr,
  AttrChange,
  Caller,
  Change,
  CreateLayerOptions,
  DirEntry,
  LayerChange,
  LayerInfo,
  StoreStatfs,
} from './types.js';

/**
 * The LCFS layer store: the storage contract every engine adapter and the FUSE filesystem
 * translate onto.
 *
 * Vocabulary
 * - A **layer** is a directory tree named by an `id` the engine chooses. It has at most one
 *   `parent`; a layer without one is a base layer and starts as an empty root directory.
 * - A layer is **writable** until it is **frozen**. A frozen layer never changes again.
 * - A **node** is a file, directory, symlink or device inside a layer, named by its `ino`.
 *   A child layer sees its parent's nodes under the same `ino`; a change in the child makes the
 *   child its own copy of that node (copy-on-write) and never shows in the parent or siblings.
 *
 * Lifecycle
 * - Importing an image layer: `createLayer(id, parent)`, `applyDiff(id, parent, tar)`, and the
 *   layer is frozen when its first child is created (or by `freeze`).
 * - Running a container: `createLayer(rw, imageTop)`, `get(rw)`, node operations through FUSE,
 *   `diff(rw, imageTop)` to commit it as a new image layer, `put(rw)`, `removeLayer(rw)`.
 *
 * Invariants
 * - Creating a child freezes its parent first: an engine never writes to a layer with children.
 * - A layer with children, or with open references, cannot be removed.
 * - File content is kept in chunks of CHUNK_SIZE bytes named by their sha256; identical chunks
 *   are stored once, so re-applying a diff the store produced writes almost no data, and a
 *   4 KiB write into an inherited file copies at most one chunk.
 * - Every call that resolves (create, remove, freeze, applyDiff, fsync) is durable: it survives
 *   kill -9 of the process. Other node operations become durable within `flushIntervalMs`, or at
 *   the next fsync, freeze or flush, as ext4 makes them durable at its next commit.
 *
 * Cost
 * - createLayer, freeze, removeLayer bookkeeping: constant, whatever the parent holds (removal
 *   then releases the layer's own chunks in proportion to what the layer itself changed).
 * - Node operations: constant in the size of the tree; lookups walk at most a bounded number of
 *   ancestor layers.
 * - diff, changes, diffSize: in proportion to what the layer changed, when `parent` is the
 *   layer's own parent; otherwise a full walk of both trees.
 * - applyDiff: in proportion to the tar; memory stays bounded whatever the file sizes.
 */
export interface LayerStore {
  // --- layers ---
  createLayer(id: string, parent: string | null, options?: CreateLayerOptions): Promise<LayerInfo>;
  removeLayer(id: string): Promise<void>;
  freeze(id: string): Promise<void>;
  exists(id: string): boolean;
  /** The layer with this index, if any: how FUSE maps its node ids back to layers. */
  layerAt(index: number): LayerInfo | undefined;
  layer(id: string): LayerInfo;
  listLayers(): LayerInfo[];
  /** Takes a reference (a mount, in engine terms); returns the new count. */
  get(id: string): number;
  /** Returns a reference taken with `get`; returns the new count. */
  put(id: string): number;

  // --- nodes ---
  /** The ino of the layer's root directory. */
  root(id: string): number;
  lookup(id: string, dir: number, name: string): Attr;
  /** Resolves a slash-separated path inside the layer without following symlinks. */
  resolve(id: string, path: string): Attr;
  getattr(id: string, ino: number): Attr;
  readdir(id: string, dir: number): DirEntry[];
  readlink(id: string, ino: number): string;
  /** Counts an open handle: a file unlinked while open stays readable until its `release`. */
  open(id: string, ino: number): void;
  release(id: string, ino: number): void;
  /** Reads wait for writes to the same file that started before them. */
  read(id: string, ino: number, offset: number, length: number): Promise<Buffer>;
  write(id: string, ino: number, offset: number, data: Buffer): Promise<number>;
  create(id: string, dir: number, name: string, mode: number, caller: Caller): Attr;
  mkdir(id: string, dir: number, name: string, mode: number, caller: Caller): Attr;
  mknod(id: string, dir: number, name: string, mode: number, rdev: number, caller: Caller): Attr;
  symlink(id: string, dir: number, name: string, target: string, caller: Caller): Attr;
  link(id: string, ino: number, dir: number, name: string): Attr;
  unlink(id: string, dir: number, name: string): void;
  rmdir(id: string, dir: number, name: string): void;
  rename(id: string, dir: number, name: string, newDir: number, newName: string): void;
  setattr(id: string, ino: number, change: AttrChange): Promise<Attr>;
  getxattr(id: string, ino: number, name: string): Buffer;
  setxattr(id: string, ino: number, name: string, value: Buffer): void;
  listxattr(id: string, ino: number): string[];
  removexattr(id: string, ino: number, name: string): void;
  statfs(): Promise<StoreStatfs>;
  /** Waits for the file's writes in flight, then makes the file and all metadata durable. */
  fsync(id: string, ino: number): Promise<void>;

  // --- diffs ---
  /** An uncompressed tar of what `id` changed against `parent`, whiteouts included. */
  diff(id: string, parent: string | null): Readable;
  changes(id: string, parent: string | null): Promise<Change[]>;
  /** Applies a layer tar to the writable layer `id`; resolves to the sum of entry sizes. */
  applyDiff(id: string, parent: string | null, tar: Readable): Promise<number>;
  diffSize(id: string, parent: string | null): Promise<number>;

  // --- statistics and upkeep ---
  layerCounters(id: string): AccessCounters;
  fileCounters(id: string, ino: number): AccessCounters | undefined;
  /** Bytes of chunk data written to the backing disk since open. */
  readonly bytesWritten: number;
  /**
   * Subscribes to changes made other than through node operations; returns the unsubscribe.
   * The change's operation resolves only after every listener's promise has.
   */
  onLayerChange(listener: (change: LayerChange) => void | Promise<void>): () => void;
  /** Makes every operation so far durable. */
  flush(): Promise<void>;
  close(): Promise<void>;
}

export const CHUNK_SIZE = 1 << 20;
