import { constants } from 'node:os';
import type { Logger } from 'pino';
import { isStoreError } from '../errors.js';
import { now } from '../records.js';
import type { LayerStore } from '../layer-store.js';
import type { Attr, AttrChange, Timespec } from '../types.js';
import {
  ATTR_FIELDS,
  KEEP_CACHE,
  Op,
  SetAttr,
  type FuseBinding,
  type Req,
  type RequestHandler,
  type SessionHandle,
} from './binding.js';
import { dropPrivileges, type Caller } from './privileges.js';

/**
 * The LCFS volume over FUSE: the root lists one directory per layer, and each layer directory
 * is that layer's tree. Requests are translated onto the store one for one.
 *
 * A node id packs the layer's index and the node's ino (`index * 2^32 + ino`), so every layer
 * has its own inode numbers while hard links within a layer share one. The kernel may cache
 * names, attributes and pages for long (see CACHE_TTL); a missing layer name is never cached and
 * a removed layer's name is invalidated, so layers the engines create or remove appear and vanish
 * at once.
 */

/** The volume root's node id, where the layer directories are. */
export const ROOT_NODE = 1;
const INO_SPAN = 2 ** 32;
/**
 * How long the kernel may keep names and attributes. Nothing changes a layer behind its back:
 * node operations come through it, and a bulk change (applyDiff) invalidates what it touched.
 */
const CACHE_TTL = 3600;
const ERRNO = constants.errno as Record<string, number>;
const O_ACCMODE = 3;
const O_TRUNC = 0o1000;
const RENAME_NOREPLACE = 1;
const XATTR_CREATE = 1;
const XATTR_REPLACE = 2;

interface Node {
  layer: string;
  ino: number;
  frozen: boolean;
}

interface DirListing {
  names: string[];
  attrs: Float64Array;
  ttl: number;
}

export class LayerFilesystem {
  private readonly dirs = new Map<number, DirListing>();
  private nextHandle = 1;
  private readonly mountedAt: Timespec;
  private session: SessionHandle | undefined;

  constructor(
    private readonly store: LayerStore,
    private readonly fuse: FuseBinding,
    private readonly log?: Logger,
  ) {
    this.mountedAt = now();
  }

  /** The session this filesystem serves, for the notifications it sends the kernel. */
  attach(session: SessionHandle): void {
    this.session = session;
  }

  /** Handles one request; every path answers exactly once. */
  readonly handle: RequestHandler = (
    op,
    req,
    ino,
    ino2,
    name,
    name2,
    data,
    size,
    off,
    mode,
    rdev,
    flags,
    fh,
    uid,
    gid,
    _pid,
    _umask,
    setattr,
    killSuidgid,
  ) => {
    if (req === null) return;
    try {
      const result = this.dispatch(
        op,
        req,
        ino,
        ino2,
        name ?? '',
        name2 ?? '',
        data,
        size,
        off,
        mode,
        rdev,
        flags,
        fh,
        { uid, gid },
        setattr,
        killSuidgid,
      );
      if (result) result.catch((err: unknown) => this.fail(req, op, err));
    } catch (err) {
      this.fail(req, op, err);
    }
  };

  private dispatch(
    op: number,
    req: Req,
    ino: number,
    ino2: number,
    name: string,
    name2: string,
    data: Buffer | undefined,
    size: number,
    off: number,
    mode: number,
    rdev: number,
    flags: number,
    fh: number,
    caller: Caller,
    setattr: number[] | undefined,
    killSuidgid: boolean,
  ): Promise<void> | void {
    const f = this.fuse;
    switch (op) {
      case Op.Lookup:
        return this.lookup(req, ino, name);
      case Op.Getattr: {
        // The root's attributes never change: cached like any node's. With default_permissions
        // every path walk from the mountpoint checks the root, so a timeout of 0 here cost one
        // GETATTR per path lookup (a warm stat included).
        if (ino === ROOT_NODE) return f.replyAttr(req, this.rootAttr(), CACHE_TTL);
        const n = this.node(ino);
        return f.replyAttr(req, this.attr(n, this.store.getattr(n.layer, n.ino)), CACHE_TTL);
      }
      case Op.Setattr:
        return this.setattr(req, ino, setattr ?? [0], caller);
      case Op.Readlink: {
        const n = this.node(ino);
        return f.replyReadlink(req, this.store.readlink(n.layer, n.ino));
      }
      case Op.Mknod: {
        const n = this.dirNode(ino);
        return this.entry(req, n, this.store.mknod(n.layer, n.ino, name, mode, rdev, caller));
      }
      case Op.Mkdir: {
        const n = this.dirNode(ino);
        return this.entry(req, n, this.store.mkdir(n.layer, n.ino, name, mode, caller));
      }
      case Op.Unlink: {
        const n = this.dirNode(ino);
        this.store.unlink(n.layer, n.ino, name);
        return f.replyErr(req, 0);
      }
      case Op.Rmdir: {
        const n = this.dirNode(ino);
        this.store.rmdir(n.layer, n.ino, name);
        return f.replyErr(req, 0);
      }
      case Op.Symlink: {
        const n = this.dirNode(ino);
        return this.entry(req, n, this.store.symlink(n.layer, n.ino, name, name2, caller));
      }
      case Op.Rename: {
        const from = this.dirNode(ino);
        const to = this.dirNode(ino2);
        if (from.layer !== to.layer) return f.replyErr(req, ERRNO.EXDEV);
        if (flags & ~RENAME_NOREPLACE) return f.replyErr(req, ERRNO.EINVAL);
        if (flags & RENAME_NOREPLACE && this.exists(to, name2))
          return f.replyErr(req, ERRNO.EEXIST);
        this.store.rename(from.layer, from.ino, name, to.ino, name2);
        return f.replyErr(req, 0);
      }
      case Op.Link: {
        const n = this.node(ino);
        const dir = this.dirNode(ino2);
        if (n.layer !== dir.layer) return f.replyErr(req, ERRNO.EXDEV);
        return this.entry(req, dir, this.store.link(n.layer, n.ino, dir.ino, name));
      }
      case Op.Open:
        return this.open(req, ino, flags, killSuidgid ? caller : undefined);
      case Op.Read: {
        const n = this.node(ino);
        return this.store.read(n.layer, n.ino, off, size).then((buf) => f.replyBuf(req, buf));
      }
      case Op.Write:
        return this.write(req, ino, off, data as Buffer, killSuidgid ? caller : undefined);
      case Op.Flush:
        // Nothing to do at close: ENOSYS tells the kernel to stop sending flushes at all.
        return f.replyErr(req, ERRNO.ENOSYS);
      case Op.Release: {
        const n = this.node(ino);
        this.store.release(n.layer, n.ino);
        return f.replyErr(req, 0);
      }
      case Op.Fsync: {
        const n = this.node(ino);
        return this.store.fsync(n.layer, n.ino).then(() => f.replyErr(req, 0));
      }
      case Op.Fsyncdir:
        return this.store.flush().then(() => f.replyErr(req, 0));
      case Op.Opendir:
        return this.opendir(req, ino);
      case Op.Readdir:
      case Op.Readdirplus: {
        const listing = this.dirs.get(fh);
        if (!listing) return f.replyErr(req, ERRNO.EBADF);
        return f.replyDir(
          req,
          op === Op.Readdirplus,
          size,
          off,
          listing.names,
          listing.attrs,
          listing.ttl,
          listing.ttl,
        );
      }
      case Op.Releasedir:
        this.dirs.delete(fh);
        return f.replyErr(req, 0);
      case Op.Statfs:
        return this.store
          .statfs()
          .then((s) =>
            f.replyStatfs(req, [s.bsize, s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.namelen]),
          );
      case Op.Setxattr: {
        const n = this.node(ino);
        const present = this.store.listxattr(n.layer, n.ino).includes(name);
        if (flags & XATTR_CREATE && present) return f.replyErr(req, ERRNO.EEXIST);
        if (flags & XATTR_REPLACE && !present) return f.replyErr(req, ERRNO.ENODATA);
        this.store.setxattr(n.layer, n.ino, name, data as Buffer);
        return f.replyErr(req, 0);
      }
      case Op.Getxattr: {
        if (ino === ROOT_NODE) return f.replyErr(req, ERRNO.ENODATA);
        const n = this.node(ino);
        return this.sized(req, size, this.store.getxattr(n.layer, n.ino, name));
      }
      case Op.Listxattr: {
        if (ino === ROOT_NODE) return this.sized(req, size, Buffer.alloc(0));
        const n = this.node(ino);
        const names = this.store.listxattr(n.layer, n.ino);
        return this.sized(req, size, Buffer.from(names.map((x) => `${x}\0`).join('')));
      }
      case Op.Removexattr: {
        const n = this.node(ino);
        this.store.removexattr(n.layer, n.ino, name);
        return f.replyErr(req, 0);
      }
      case Op.Create: {
        const dir = this.dirNode(ino);
        const a = this.store.create(dir.layer, dir.ino, name, mode, caller);
        this.store.open(dir.layer, a.ino);
        return f.replyCreate(req, this.attr(dir, a), CACHE_TTL, CACHE_TTL, 0, 0);
      }
      default:
        return f.replyErr(req, ERRNO.ENOSYS);
    }
  }

  private lookup(req: Req, parent: number, name: string): void {
    if (parent === ROOT_NODE) {
      const info = this.store.exists(name) ? this.store.layer(name) : undefined;
      if (!info) return this.fuse.replyEntry(req, null, 0, 0);
      const n = { layer: name, ino: this.store.root(name), frozen: info.state === 'frozen' };
      // Cached like any name: removing a layer drops its entry from the kernel (see VolumeMount);
      // a missing one (above) is never cached, so a new layer appears at once.
      return this.fuse.replyEntry(
        req,
        this.attr(n, this.store.getattr(n.layer, n.ino)),
        CACHE_TTL,
        CACHE_TTL,
      );
    }
    const dir = this.dirNode(parent);
    let attr: Attr;
    try {
      attr = this.store.lookup(dir.layer, dir.ino, name);
    } catch (err) {
      // A negative entry, cached as long as the layer's names are.
      if (isStoreError(err, 'ENOENT')) return this.fuse.replyEntry(req, null, CACHE_TTL, 0);
      throw err;
    }
    this.entry(req, dir, attr);
  }

  private entry(req: Req, dir: Node, attr: Attr): void {
    this.fuse.replyEntry(req, this.attr(dir, attr), CACHE_TTL, CACHE_TTL);
  }

  private async setattr(req: Req, ino: number, a: number[], caller: Caller): Promise<void> {
    const n = this.node(ino);
    const [toSet, mode, uid, gid, size, aSec, aNsec, mSec, mNsec] = a;
    const change: AttrChange = {};
    if (toSet & SetAttr.Mode) change.mode = mode;
    if (toSet & SetAttr.Uid) change.uid = uid;
    if (toSet & SetAttr.Gid) change.gid = gid;
    if (toSet & SetAttr.Size) change.size = size;
    const t = now();
    if (toSet & SetAttr.AtimeNow) change.atime = t;
    else if (toSet & SetAttr.Atime) change.atime = [aSec, aNsec];
    if (toSet & SetAttr.MtimeNow) change.mtime = t;
    else if (toSet & SetAttr.Mtime) change.mtime = [mSec, mNsec];
    // The kernel marks a chown of a non-directory, and a truncate by a caller without
    // CAP_FSETID; a truncate by anyone drops capabilities.
    const kill = (toSet & SetAttr.KillSuidgid) !== 0;
    if (kill || change.size !== undefined) {
      const killed = dropPrivileges(this.store, n.layer, n.ino, kill ? caller : undefined);
      if (killed !== undefined && change.mode === undefined) change.mode = killed;
    }
    const attr = await this.store.setattr(n.layer, n.ino, change);
    this.fuse.replyAttr(req, this.attr(n, attr), CACHE_TTL);
  }

  private async write(
    req: Req,
    ino: number,
    off: number,
    data: Buffer,
    killFor: Caller | undefined,
  ): Promise<void> {
    const n = this.node(ino);
    const killed = dropPrivileges(this.store, n.layer, n.ino, killFor);
    if (killed !== undefined) {
      await this.store.setattr(n.layer, n.ino, { mode: killed });
      await this.forgetAttributes(ino);
    }
    this.fuse.replyWrite(req, await this.store.write(n.layer, n.ino, off, data));
  }

  /** The kernel learns of a mode we changed on our own (not in a setattr reply) only this way:
   * until then, a stat or an exec would still see the setuid bit. */
  private async forgetAttributes(nodeId: number): Promise<void> {
    if (this.session) await this.fuse.invalidateAttributes(this.session, nodeId);
  }

  private async open(
    req: Req,
    ino: number,
    flags: number,
    killFor: Caller | undefined,
  ): Promise<void> {
    const n = this.node(ino);
    const writing = (flags & O_ACCMODE) !== 0;
    if (writing && n.frozen) return this.fuse.replyErr(req, ERRNO.EROFS);
    if (writing && flags & O_TRUNC) {
      const killed = dropPrivileges(this.store, n.layer, n.ino, killFor);
      await this.store.setattr(
        n.layer,
        n.ino,
        killed === undefined ? { size: 0 } : { size: 0, mode: killed },
      );
      if (killed !== undefined) await this.forgetAttributes(ino);
    }
    this.store.open(n.layer, n.ino);
    // Safe for writable layers too: every write comes through this mount, and the kernel drops
    // cached pages when it sees mtime or size change (auto_inval_data).
    this.fuse.replyOpen(req, 0, KEEP_CACHE);
  }

  private opendir(req: Req, ino: number): void {
    const names = ['.', '..'];
    const attrs: Attr[] = [];
    let ttlSec = 0;
    if (ino === ROOT_NODE) {
      const root = this.rootAttrOf();
      attrs.push(root, root);
      for (const info of this.store.listLayers()) {
        const n = {
          layer: info.id,
          ino: this.store.root(info.id),
          frozen: info.state === 'frozen',
        };
        names.push(info.id);
        attrs.push({ ...this.store.getattr(n.layer, n.ino), ino: nodeId(info.index, n.ino) });
      }
    } else {
      const dir = this.dirNode(ino);
      const index = this.store.layer(dir.layer).index;
      const self = this.store.getattr(dir.layer, dir.ino);
      attrs.push({ ...self, ino: nodeId(index, dir.ino) });
      if (dir.ino === this.store.root(dir.layer)) attrs.push(this.rootAttrOf());
      else attrs.push({ ...self, ino: nodeId(index, dir.ino) }); // '..' carries no entry; its ino is unused
      for (const e of this.store.readdir(dir.layer, dir.ino)) {
        names.push(e.name);
        attrs.push({ ...e.attr, ino: nodeId(index, e.attr.ino) });
      }
      ttlSec = CACHE_TTL;
    }
    const packed = new Float64Array(attrs.length * ATTR_FIELDS);
    attrs.forEach((a, i) => pack(packed, i * ATTR_FIELDS, a));
    const handle = this.nextHandle++;
    this.dirs.set(handle, { names, attrs: packed, ttl: ttlSec });
    this.fuse.replyOpen(req, handle, 0);
  }

  private sized(req: Req, size: number, value: Buffer): void {
    if (size === 0) return this.fuse.replyXattr(req, value.length);
    if (size < value.length) return this.fuse.replyErr(req, ERRNO.ERANGE);
    this.fuse.replyBuf(req, value);
  }

  private exists(dir: Node, name: string): boolean {
    try {
      this.store.lookup(dir.layer, dir.ino, name);
      return true;
    } catch {
      return false;
    }
  }

  private node(id: number): Node {
    const index = Math.floor(id / INO_SPAN);
    const info = index === 0 ? undefined : this.store.layerAt(index);
    if (!info)
      throw Object.assign(new Error('stale node'), {
        fuseErrno: id === ROOT_NODE ? ERRNO.EPERM : ERRNO.ENOENT,
      });
    return { layer: info.id, ino: id - index * INO_SPAN, frozen: info.state === 'frozen' };
  }

  /** A directory node inside a layer; the volume root takes no changes. */
  private dirNode(id: number): Node {
    if (id === ROOT_NODE) throw Object.assign(new Error('volume root'), { fuseErrno: ERRNO.EPERM });
    return this.node(id);
  }

  private attr(n: Node, a: Attr): Float64Array {
    const out = new Float64Array(ATTR_FIELDS);
    pack(out, 0, { ...a, ino: nodeId(this.store.layer(n.layer).index, a.ino) });
    return out;
  }

  private rootAttrOf(): Attr {
    const t = this.mountedAt;
    return {
      ino: ROOT_NODE,
      mode: 0o040755,
      uid: 0,
      gid: 0,
      nlink: 2,
      rdev: 0,
      size: 0,
      atime: t,
      mtime: t,
      ctime: t,
    };
  }

  private rootAttr(): Float64Array {
    const out = new Float64Array(ATTR_FIELDS);
    pack(out, 0, this.rootAttrOf());
    return out;
  }

  private fail(req: Req, op: number, err: unknown): void {
    let errno = (err as { fuseErrno?: number }).fuseErrno;
    if (errno === undefined && isStoreError(err)) errno = ERRNO[err.errno];
    if (errno === undefined) {
      errno = ERRNO.EIO;
      this.log?.error({ err, op }, 'FUSE request failed');
    }
    this.fuse.replyErr(req, errno);
  }
}

export function nodeId(layerIndex: number, ino: number): number {
  return layerIndex * INO_SPAN + ino;
}

function pack(out: Float64Array, at: number, a: Attr): void {
  out[at] = a.ino;
  out[at + 1] = a.mode;
  out[at + 2] = a.nlink;
  out[at + 3] = a.uid;
  out[at + 4] = a.gid;
  out[at + 5] = a.rdev;
  out[at + 6] = a.size;
  out[at + 7] = a.atime[0];
  out[at + 8] = a.atime[1];
  out[at + 9] = a.mtime[0];
  out[at + 10] = a.mtime[1];
  out[at + 11] = a.ctime[0];
  out[at + 12] = a.ctime[1];
}
