/** Seconds and nanoseconds since the epoch, as stat(2) and tar's PAX headers carry them. */
export type Timespec = readonly [sec: number, nsec: number];

export type LayerState = 'writable' | 'frozen';

/** What the store tells about a layer. `index` is a small number unique within the store. */
export interface LayerInfo {
  readonly id: string;
  readonly parent: string | null;
  readonly state: LayerState;
  readonly index: number;
  readonly depth: number;
  readonly createdAt: number;
  readonly children: number;
  /** Open references taken with `get` and not yet returned with `put`. Not persisted. */
  readonly refs: number;
  /** Bytes of file content the layer may hold of its own (Docker's storage-opt size). */
  readonly quota?: number;
}

export interface CreateLayerOptions {
  /** Limits the file content the layer may write; a write past it fails with ENOSPC. */
  quota?: number;
}

/** stat(2) of one node in one layer. `ino` is stable across restarts and shared by hard links. */
export interface Attr {
  readonly ino: number;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly nlink: number;
  readonly rdev: number;
  readonly size: number;
  readonly atime: Timespec;
  readonly mtime: Timespec;
  readonly ctime: Timespec;
}

export interface DirEntry {
  readonly name: string;
  readonly attr: Attr;
}

/** Who is asking: new nodes are owned by the caller, as on ext4. */
export interface Caller {
  readonly uid: number;
  readonly gid: number;
}

/** The attributes `setattr` may change; absent fields stay as they are. */
export interface AttrChange {
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  atime?: Timespec;
  mtime?: Timespec;
}

/** One entry of `changes`, numbered as Docker numbers them. */
export enum ChangeKind {
  Modify = 0,
  Add = 1,
  Delete = 2,
}

export interface Change {
  readonly path: string;
  readonly kind: ChangeKind;
}

export interface StoreStatfs {
  readonly bsize: number;
  readonly blocks: number;
  readonly bfree: number;
  readonly bavail: number;
  readonly files: number;
  readonly ffree: number;
  readonly namelen: number;
}

/** Cheap counters kept per layer and per file for the statistics work. Not persisted. */
export interface AccessCounters {
  reads: number;
  bytesRead: number;
  writes: number;
  bytesWritten: number;
  lastAccess: number;
}

/**
 * A change made to a layer other than through node operations (an applyDiff, a removal), so
 * that caches above the store, the kernel's through FUSE, can drop what they hold of it.
 */
export interface LayerChange {
  readonly layer: string;
  readonly index: number;
  /** Names set or hidden: (directory ino, name). */
  readonly entries: ReadonlyArray<readonly [number, string]>;
  /** Nodes whose attributes or content changed. */
  readonly inodes: readonly number[];
  /** The layer itself is gone. */
  readonly removed?: boolean;
}
