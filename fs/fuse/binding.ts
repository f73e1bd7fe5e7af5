import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** A pending FUSE request; answer it exactly once with one of the reply functions. */
export type Req = { readonly __brand: 'fuse_req' };
export type SessionHandle = { readonly __brand: 'fuse_session' };

/** The request handler: positional arguments, as the native thread delivers them. */
export type RequestHandler = (
  op: number,
  req: Req | null,
  ino: number,
  ino2: number,
  name: string | undefined,
  name2: string | undefined,
  data: Buffer | undefined,
  size: number,
  off: number,
  mode: number,
  rdev: number,
  flags: number,
  fh: number,
  uid: number,
  gid: number,
  pid: number,
  umask: number,
  setattr: number[] | undefined,
  /** write, open: the kernel asks us to clear setuid/setgid (the caller lacks CAP_FSETID). */
  killSuidgid: boolean,
) => void;

/** The binding in fs/fuse/native/lcfs_fuse.c; its comments document each call. */
export interface FuseBinding {
  mount(mountpoint: string, options: string, handler: RequestHandler): SessionHandle;
  unmount(session: SessionHandle, lazy: boolean): number;
  close(session: SessionHandle): void;
  detach(path: string): number;
  /** Per kernel opcode (see FUSE_OPCODES): requests received, then nanoseconds from receipt to
   * reply, summed; a Float64Array of 2 × 64. */
  requestStats(session: SessionHandle): Float64Array;
  /** Drops cached names ([dir node, name]) and nodes ([node]) from the kernel's caches. */
  invalidate(session: SessionHandle, items: Array<[number, string?]>): Promise<void>;
  /** Drops a node's cached attributes, keeping its pages; safe while a write to it is pending. */
  invalidateAttributes(session: SessionHandle, nodeId: number): Promise<void>;
  replyErr(req: Req, errno: number): void;
  replyEntry(req: Req, attr: Float64Array | null, entryTimeout: number, attrTimeout: number): void;
  replyCreate(
    req: Req,
    attr: Float64Array,
    entryTimeout: number,
    attrTimeout: number,
    fh: number,
    openFlags: number,
  ): void;
  replyAttr(req: Req, attr: Float64Array, timeout: number): void;
  replyReadlink(req: Req, target: string): void;
  replyOpen(req: Req, fh: number, openFlags: number): void;
  replyWrite(req: Req, count: number): void;
  replyBuf(req: Req, data: Buffer): void;
  replyXattr(req: Req, size: number): void;
  replyStatfs(req: Req, fields: number[]): void;
  replyDir(
    req: Req,
    plus: boolean,
    size: number,
    offset: number,
    names: string[],
    attrs: Float64Array,
    entryTimeout: number,
    attrTimeout: number,
  ): void;
}

/** Numbers of the operations, as lcfs_fuse.c's `enum op` has them. */
export const Op = {
  Ended: 0,
  Lookup: 1,
  Getattr: 2,
  Setattr: 3,
  Readlink: 4,
  Mknod: 5,
  Mkdir: 6,
  Unlink: 7,
  Rmdir: 8,
  Symlink: 9,
  Rename: 10,
  Link: 11,
  Open: 12,
  Read: 13,
  Write: 14,
  Flush: 15,
  Release: 16,
  Fsync: 17,
  Opendir: 18,
  Readdir: 19,
  Releasedir: 20,
  Fsyncdir: 21,
  Statfs: 22,
  Setxattr: 23,
  Getxattr: 24,
  Listxattr: 25,
  Removexattr: 26,
  Create: 27,
  Readdirplus: 28,
} as const;

/** The kernel's opcodes (linux/fuse.h), by number, for requestStats. */
export const FUSE_OPCODES: Readonly<Record<number, string>> = {
  1: 'LOOKUP',
  2: 'FORGET',
  3: 'GETATTR',
  4: 'SETATTR',
  5: 'READLINK',
  6: 'SYMLINK',
  8: 'MKNOD',
  9: 'MKDIR',
  10: 'UNLINK',
  11: 'RMDIR',
  12: 'RENAME',
  13: 'LINK',
  14: 'OPEN',
  15: 'READ',
  16: 'WRITE',
  17: 'STATFS',
  18: 'RELEASE',
  20: 'FSYNC',
  21: 'SETXATTR',
  22: 'GETXATTR',
  23: 'LISTXATTR',
  24: 'REMOVEXATTR',
  25: 'FLUSH',
  26: 'INIT',
  27: 'OPENDIR',
  28: 'READDIR',
  29: 'RELEASEDIR',
  30: 'FSYNCDIR',
  34: 'ACCESS',
  35: 'CREATE',
  36: 'INTERRUPT',
  38: 'DESTROY',
  42: 'BATCH_FORGET',
  43: 'FALLOCATE',
  44: 'READDIRPLUS',
  45: 'RENAME2',
  46: 'LSEEK',
  47: 'COPY_FILE_RANGE',
  52: 'STATX',
};
export const FUSE_OPCODE_SLOTS = 64;

/** Open-reply flags. */
export const KEEP_CACHE = 1;

/** setattr's to_set bits (fuse_lowlevel.h). */
export const SetAttr = {
  Mode: 1 << 0,
  Uid: 1 << 1,
  Gid: 1 << 2,
  Size: 1 << 3,
  Atime: 1 << 4,
  Mtime: 1 << 5,
  AtimeNow: 1 << 7,
  MtimeNow: 1 << 8,
  /** FATTR_KILL_SUIDGID: a chown, or a truncate by a caller without CAP_FSETID. */
  KillSuidgid: 1 << 11,
} as const;

/** Fields of the attr arrays the binding reads (lcfs_fuse.c's fill_stat). */
export const ATTR_FIELDS = 13;

let loaded: FuseBinding | undefined;

/** Loads the addon `npm install` built; from the sources or from dist/, whichever runs. */
export function fuseBinding(): FuseBinding {
  if (loaded) return loaded;
  const here = fileURLToPath(new URL('.', import.meta.url));
  const candidates = [
    `${here}native/build/Release/lcfs_fuse.node`,
    `${here}../../../fs/fuse/native/build/Release/lcfs_fuse.node`,
  ];
  const path = candidates.find((p) => existsSync(p));
  if (!path) {
    throw new Error(
      'LCFS_EFUSE_BINDING: the FUSE addon is not built; run `npm install` (it needs libfuse3-dev, pkg-config and a C compiler)',
    );
  }
  loaded = createRequire(import.meta.url)(path) as FuseBinding;
  return loaded;
}
