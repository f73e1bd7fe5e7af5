import type { Attr, LayerState, Timespec } from './types.js';

/**
 * The persistent records, and the keys they live under. A layer's own records are exactly what
 * the layer changed against its parent; everything else it inherits.
 *
 *   l/<id>                   LayerRecord
 *   i/<layer>/<ino>          InodeRecord: the layer's own version of a node's attributes
 *   c/<layer>/<ino>          ContentRecord: the layer's own version of a file's chunk list
 *   d/<layer>/<dir>/<name>   the ino a name points at in this layer; 0 hides an inherited name
 *   r/<chunk>                reference count of a chunk
 *   u/<chunk>                a chunk whose file is due for removal
 *   p/<layer>                a removed layer whose records are still being purged
 *   o/<layer>/<ino>          an unlinked file still open, to be dropped at its release
 *   m/ino, m/layer, m/chunk  the last number handed out of each kind
 *
 * `<layer>` is the layer's small index, not its id, to keep keys short.
 */

export interface LayerRecord {
  readonly id: string;
  readonly parent: string | null;
  readonly index: number;
  readonly depth: number;
  readonly state: LayerState;
  readonly createdAt: number;
  readonly root: number;
  /** Bytes of file content the layer may hold of its own; no limit when absent. */
  readonly quota?: number;
}

export interface InodeRecord {
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  /** 0 marks a node this layer deleted while an ancestor still holds it. */
  readonly nlink: number;
  readonly rdev: number;
  readonly size: number;
  readonly atime: Timespec;
  readonly mtime: Timespec;
  readonly ctime: Timespec;
  readonly target?: string;
  readonly xattrs?: Readonly<Record<string, Uint8Array>>;
  /** The (directory, name) pairs that point at this node, so a node can find its paths. */
  readonly links: ReadonlyArray<readonly [number, string]>;
}

/** Chunk references, one per CHUNK_SIZE bytes of the file; '' is a hole. */
export type ContentRecord = readonly string[];

export const inodeKey = (layer: number, ino: number): string => `i/${layer}/${ino}`;
export const contentKey = (layer: number, ino: number): string => `c/${layer}/${ino}`;
export const direntGroup = (layer: number, dir: number): string => `d/${layer}/${dir}`;
export const direntKey = (layer: number, dir: number, name: string): string =>
  `d/${layer}/${dir}/${name}`;
export const layerKey = (id: string): string => `l/${id}`;
export const orphanKey = (layer: number, ino: number): string => `o/${layer}/${ino}`;

export const S_IFMT = 0o170000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;
export const S_ISGID = 0o2000;

export const isDir = (mode: number): boolean => (mode & S_IFMT) === S_IFDIR;
export const isReg = (mode: number): boolean => (mode & S_IFMT) === S_IFREG;
export const isLnk = (mode: number): boolean => (mode & S_IFMT) === S_IFLNK;

export function now(): Timespec {
  const ms = Date.now();
  return [Math.floor(ms / 1000), (ms % 1000) * 1e6];
}

export function toAttr(ino: number, r: InodeRecord): Attr {
  return {
    ino,
    mode: r.mode,
    uid: r.uid,
    gid: r.gid,
    nlink: r.nlink,
    rdev: r.rdev,
    size: r.size,
    atime: r.atime,
    mtime: r.mtime,
    ctime: r.ctime,
  };
}
