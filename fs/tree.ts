import { nodeError, StoreError } from './errors.js';
import type { FrozenCache } from './frozen-cache.js';
import type { QuotaLedger } from './quota.js';
import type { MetaView } from './meta.js';
import {
  contentKey,
  direntGroup,
  orphanKey,
  direntKey,
  inodeKey,
  isDir,
  isLnk,
  now,
  S_IFDIR,
  S_IFLNK,
  S_IFMT,
  S_ISGID,
  toAttr,
  type ContentRecord,
  type InodeRecord,
  type LayerRecord,
} from './records.js';
import type { Attr, AttrChange, Caller, DirEntry } from './types.js';

const NAME_MAX = 255;

/** What every tree of one store shares. */
export interface TreeContext {
  readonly cache: FrozenCache;
  allocIno(): number;
  /** Whether a file is open; an open file outlives its last name until it is released. */
  isOpen(layer: number, ino: number): boolean;
  readonly quotas: QuotaLedger;
}

/**
 * The namespace of one layer: names, attributes and links, resolved through the layer's chain
 * of ancestors. Reads find the nearest layer in the chain that holds a record; writes always go
 * to the layer's own records. File content is handled by FileData on top of this.
 */
export class LayerTree {
  /** Chain positions from here on are frozen, and their walks cached. */
  private readonly firstFrozen: number;

  private readonly cache: FrozenCache;

  constructor(
    readonly layer: LayerRecord,
    /** Layer indices from this layer up to its base. */
    readonly chain: readonly number[],
    readonly view: MetaView,
    private readonly context: TreeContext,
  ) {
    this.firstFrozen = layer.state === 'frozen' ? 0 : 1;
    this.cache = context.cache;
  }

  get index(): number {
    return this.layer.index;
  }

  // --- reading ---

  /** The nearest record of `ino` and the layer that holds it. */
  findInode(ino: number): { rec: InodeRecord; owner: number } | undefined {
    return this.walk(`i|${ino}`, (layer) => {
      const rec = this.view.get<InodeRecord>(inodeKey(layer, ino));
      return rec && { rec, owner: layer };
    });
  }

  inode(ino: number): InodeRecord {
    const rec = this.live(ino);
    if (!rec) throw nodeError('ENOENT', `inode ${ino} in layer ${this.layer.id}`);
    return rec;
  }

  /** The node's record if it still has a name, or is unlinked but open. */
  live(ino: number): InodeRecord | undefined {
    const found = this.findInode(ino);
    if (!found || (found.rec.nlink === 0 && !this.context.isOpen(this.index, ino)))
      return undefined;
    return found.rec;
  }

  getattr(ino: number): Attr {
    return toAttr(ino, this.inode(ino));
  }

  /** The chunk list of a file and the layer that holds it (owner -1: the file has none). */
  findContent(ino: number): { chunks: ContentRecord; owner: number } {
    const found = this.walk(
      (layer) => this.cache.contentKey(layer, ino),
      (layer) => {
        const chunks = this.view.get<ContentRecord>(contentKey(layer, ino));
        return chunks && { chunks, owner: layer };
      },
    );
    return found ?? { chunks: [], owner: -1 };
  }

  /** The ino `name` points at in `dir`, or undefined. */
  entry(dir: number, name: string, from = 0): number | undefined {
    const ino = this.walk(
      `d|${dir}|${name}`,
      (layer) => this.view.get<number>(direntKey(layer, dir, name)),
      from,
    );
    return ino === 0 ? undefined : ino;
  }

  /** Whether an ancestor of this layer shows `name` in `dir`. */
  inherited(dir: number, name: string): boolean {
    return this.entry(dir, name, 1) !== undefined;
  }

  dirInode(dir: number): InodeRecord {
    const rec = this.inode(dir);
    if (!isDir(rec.mode)) throw nodeError('ENOTDIR', `inode ${dir} is not a directory`);
    return rec;
  }

  lookup(dir: number, name: string): Attr {
    this.dirInode(dir);
    const ino = this.entry(dir, name);
    if (ino === undefined) throw nodeError('ENOENT', `${name} in directory ${dir}`);
    return this.getattr(ino);
  }

  /** The names in `dir` and the inos they point at, whiteouts applied. */
  entries(dir: number): Map<string, number> {
    const merged = new Map<string, number>();
    for (let i = 0; i < this.chain.length; i++) {
      if (i >= this.firstFrozen) {
        const below = this.frozenEntries(i, dir);
        for (const [name, ino] of below) if (!merged.has(name)) merged.set(name, ino);
        break;
      }
      for (const [name, ino] of this.view.scan<number>(direntGroup(this.chain[i], dir))) {
        if (!merged.has(name)) merged.set(name, ino);
      }
    }
    for (const [name, ino] of merged) if (ino === 0) merged.delete(name);
    return merged;
  }

  /** Directory entries as seen from frozen chain position `at`, whiteouts kept; cached. */
  private frozenEntries(at: number, dir: number): ReadonlyMap<string, number> {
    const key = `e|${this.chain[at]}|${dir}`;
    const cached = this.cache.get<ReadonlyMap<string, number>>(key);
    if (cached) return cached;
    const merged = new Map<string, number>();
    for (let i = at; i < this.chain.length; i++) {
      for (const [name, ino] of this.view.scan<number>(direntGroup(this.chain[i], dir))) {
        if (!merged.has(name)) merged.set(name, ino);
      }
    }
    this.cache.set(key, merged);
    return merged;
  }

  /**
   * Walks the chain from position `from` for the first layer where `probe` finds something.
   * Below the first frozen layer the answer is cached, keyed by that layer.
   */
  private walk<T>(
    key: string | ((layer: number) => string),
    probe: (layer: number) => T | undefined,
    from = 0,
  ): T | undefined {
    for (let i = from; i < this.chain.length; i++) {
      if (i >= this.firstFrozen) {
        const k = typeof key === 'string' ? `${key}|${this.chain[i]}` : key(this.chain[i]);
        const cached = this.cache.get<{ v: T | undefined }>(k);
        if (cached) return cached.v;
        let v: T | undefined;
        for (let j = i; j < this.chain.length && v === undefined; j++) v = probe(this.chain[j]);
        this.cache.set(k, { v });
        return v;
      }
      const v = probe(this.chain[i]);
      if (v !== undefined) return v;
    }
    return undefined;
  }

  readdir(dir: number): DirEntry[] {
    this.dirInode(dir);
    const out: DirEntry[] = [];
    for (const [name, ino] of this.entries(dir)) out.push({ name, attr: this.getattr(ino) });
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  readlink(ino: number): string {
    const rec = this.inode(ino);
    if (!isLnk(rec.mode) || rec.target === undefined)
      throw nodeError('EINVAL', `inode ${ino} is not a symlink`);
    return rec.target;
  }

  /** Resolves a path inside the layer without following symlinks. */
  resolve(path: string): number {
    let ino = this.layer.root;
    for (const part of path.split('/')) {
      if (part === '' || part === '.') continue;
      this.dirInode(ino);
      const next = this.entry(ino, part);
      if (next === undefined) throw nodeError('ENOENT', `${path} in layer ${this.layer.id}`);
      ino = next;
    }
    return ino;
  }

  /** Every path of a node in this layer ('' for the root); empty if unreachable. */
  paths(ino: number): string[] {
    if (ino === this.layer.root) return [''];
    const found = this.findInode(ino);
    if (!found) return [];
    const out: string[] = [];
    for (const [dir, name] of found.rec.links) {
      if (this.entry(dir, name) !== ino) continue;
      for (const p of this.paths(dir)) out.push(`${p}/${name}`);
    }
    return out;
  }

  getxattr(ino: number, name: string): Buffer {
    const value = this.inode(ino).xattrs?.[name];
    if (value === undefined) throw nodeError('ENODATA', `xattr ${name} on inode ${ino}`);
    return Buffer.from(value);
  }

  listxattr(ino: number): string[] {
    return Object.keys(this.inode(ino).xattrs ?? {});
  }

  // --- writing ---

  assertWritable(): void {
    if (this.layer.state !== 'writable') {
      throw new StoreError(
        'LCFS_ELAYER_FROZEN',
        'EROFS',
        `EROFS: layer ${this.layer.id} is frozen`,
      );
    }
  }

  putInode(ino: number, rec: InodeRecord): void {
    this.view.put(inodeKey(this.index, ino), rec);
  }

  /**
   * Marks a node gone from this layer, releasing the content the layer itself held. An open
   * file stays readable and writable until its release, through an orphan entry (`o/`) that is
   * also cleared at start, should the store go down before the release.
   */
  dropInode(ino: number, rec: InodeRecord): void {
    if (this.context.isOpen(this.index, ino)) {
      this.putInode(ino, { ...rec, nlink: 0, links: [] });
      this.view.put(orphanKey(this.index, ino), 1);
      return;
    }
    this.dropOwnContent(ino);
    if (this.findInodeAbove(ino)) this.putInode(ino, { ...rec, nlink: 0, links: [] });
    else this.view.del(inodeKey(this.index, ino));
  }

  /** Finishes dropping an unlinked file once its last open handle is released. */
  dropOrphan(ino: number): void {
    if (this.view.get(orphanKey(this.index, ino)) === undefined) return;
    this.view.del(orphanKey(this.index, ino));
    const found = this.findInode(ino);
    if (found && found.rec.nlink === 0) this.dropInode(ino, found.rec);
  }

  dropOwnContent(ino: number): void {
    const own = this.view.get<ContentRecord>(contentKey(this.index, ino));
    if (!own) return;
    this.context.quotas.release(this, this.findInode(ino)?.rec.size ?? 0);
    for (const ref of own) if (ref !== '') this.view.addRef(ref, -1);
    this.view.del(contentKey(this.index, ino));
  }

  setEntry(dir: number, name: string, ino: number): void {
    this.view.put(direntKey(this.index, dir, name), ino);
  }

  /** Removes a name: a whiteout where an ancestor shows it, nothing left where it doesn't. */
  clearEntry(dir: number, name: string): void {
    if (this.inherited(dir, name)) this.view.put(direntKey(this.index, dir, name), 0);
    else this.view.del(direntKey(this.index, dir, name));
  }

  touch(ino: number, rec: InodeRecord, change: Partial<InodeRecord> = {}): InodeRecord {
    const t = now();
    const next = { ...rec, mtime: t, ctime: t, ...change };
    this.putInode(ino, next);
    return next;
  }

  newNode(
    dir: number,
    name: string,
    mode: number,
    caller: Caller,
    extra: Partial<InodeRecord> = {},
  ): Attr {
    this.assertWritable();
    checkName(name);
    const parent = this.dirInode(dir);
    if (this.entry(dir, name) !== undefined)
      throw nodeError('EEXIST', `${name} in directory ${dir}`);
    const dirMode = isDir(mode);
    // As on ext4: a setgid directory hands its group down, and its setgid bit to subdirectories.
    const inheritGid = (parent.mode & S_ISGID) !== 0;
    const t = now();
    const rec: InodeRecord = {
      mode: dirMode && inheritGid ? mode | S_ISGID : mode,
      uid: caller.uid,
      gid: inheritGid ? parent.gid : caller.gid,
      nlink: dirMode ? 2 : 1,
      rdev: 0,
      size: 0,
      atime: t,
      mtime: t,
      ctime: t,
      links: [[dir, name]],
      ...extra,
    };
    const ino = this.context.allocIno();
    this.putInode(ino, rec);
    this.setEntry(dir, name, ino);
    this.touch(dir, parent, dirMode ? { nlink: parent.nlink + 1 } : {});
    return toAttr(ino, rec);
  }

  mkdir(dir: number, name: string, mode: number, caller: Caller): Attr {
    return this.newNode(dir, name, S_IFDIR | (mode & 0o7777), caller);
  }

  mknod(dir: number, name: string, mode: number, rdev: number, caller: Caller): Attr {
    if ((mode & S_IFMT) === S_IFDIR || (mode & S_IFMT) === S_IFLNK) {
      throw nodeError('EINVAL', `mknod ${name}: use mkdir or symlink`);
    }
    return this.newNode(dir, name, mode, caller, { rdev });
  }

  symlink(dir: number, name: string, target: string, caller: Caller): Attr {
    return this.newNode(dir, name, S_IFLNK | 0o777, caller, {
      target,
      size: Buffer.byteLength(target),
    });
  }

  link(ino: number, dir: number, name: string): Attr {
    this.assertWritable();
    checkName(name);
    const rec = this.inode(ino);
    if (isDir(rec.mode)) throw nodeError('EPERM', `hard link to directory inode ${ino}`);
    const parent = this.dirInode(dir);
    if (this.entry(dir, name) !== undefined)
      throw nodeError('EEXIST', `${name} in directory ${dir}`);
    this.setEntry(dir, name, ino);
    const next = {
      ...rec,
      nlink: rec.nlink + 1,
      ctime: now(),
      links: [...rec.links, [dir, name] as const],
    };
    this.putInode(ino, next);
    this.touch(dir, parent);
    return toAttr(ino, next);
  }

  unlink(dir: number, name: string): void {
    this.assertWritable();
    const parent = this.dirInode(dir);
    const ino = this.entry(dir, name);
    if (ino === undefined) throw nodeError('ENOENT', `${name} in directory ${dir}`);
    const rec = this.inode(ino);
    if (isDir(rec.mode)) throw nodeError('EISDIR', `unlink ${name}: is a directory`);
    this.removeName(dir, parent, name, ino, rec);
  }

  rmdir(dir: number, name: string): void {
    this.assertWritable();
    const parent = this.dirInode(dir);
    const ino = this.entry(dir, name);
    if (ino === undefined) throw nodeError('ENOENT', `${name} in directory ${dir}`);
    const rec = this.inode(ino);
    if (!isDir(rec.mode)) throw nodeError('ENOTDIR', `rmdir ${name}: not a directory`);
    if (this.entries(ino).size > 0) throw nodeError('ENOTEMPTY', `rmdir ${name}`);
    this.removeName(dir, parent, name, ino, rec);
  }

  /** Unlinks `name` from `dir` whatever it is; a directory goes with everything under it. */
  removeName(dir: number, parent: InodeRecord, name: string, ino: number, rec: InodeRecord): void {
    this.clearEntry(dir, name);
    const dirGone = isDir(rec.mode);
    this.touch(dir, parent, dirGone ? { nlink: parent.nlink - 1 } : {});
    const links = dropLink(rec.links, dir, name);
    if (dirGone || rec.nlink <= 1) this.dropInode(ino, rec);
    else this.putInode(ino, { ...rec, nlink: rec.nlink - 1, ctime: now(), links });
  }

  rename(dir: number, name: string, newDir: number, newName: string): void {
    this.assertWritable();
    checkName(newName);
    const ino = this.entry(dir, name);
    if (ino === undefined) throw nodeError('ENOENT', `${name} in directory ${dir}`);
    if (dir === newDir && name === newName) return;
    const rec = this.inode(ino);
    this.dirInode(newDir);
    const moveDir = isDir(rec.mode);
    if (moveDir && this.isAncestor(ino, newDir)) {
      throw nodeError('EINVAL', `rename ${name}: a directory cannot move into itself`);
    }
    const target = this.entry(newDir, newName);
    if (target === ino) return;
    if (target !== undefined) {
      const trec = this.inode(target);
      if (moveDir && !isDir(trec.mode)) throw nodeError('ENOTDIR', `rename onto ${newName}`);
      if (!moveDir && isDir(trec.mode)) throw nodeError('EISDIR', `rename onto ${newName}`);
      if (isDir(trec.mode) && this.entries(target).size > 0)
        throw nodeError('ENOTEMPTY', `rename onto ${newName}`);
      this.removeName(newDir, this.inode(newDir), newName, target, trec);
    }
    this.clearEntry(dir, name);
    this.setEntry(newDir, newName, ino);
    const t = now();
    this.putInode(ino, {
      ...rec,
      ctime: t,
      links: [...dropLink(rec.links, dir, name), [newDir, newName]],
    });
    const from = this.inode(dir);
    if (dir === newDir) {
      this.touch(dir, from);
      return;
    }
    this.touch(dir, from, moveDir ? { nlink: from.nlink - 1 } : {});
    const to = this.inode(newDir);
    this.touch(newDir, to, moveDir ? { nlink: to.nlink + 1 } : {});
  }

  /** Attributes other than size; FileData changes size, since that touches content. */
  setattr(ino: number, change: AttrChange): InodeRecord {
    this.assertWritable();
    const rec = this.inode(ino);
    const next: InodeRecord = {
      ...rec,
      mode: change.mode === undefined ? rec.mode : (rec.mode & S_IFMT) | (change.mode & 0o7777),
      uid: change.uid ?? rec.uid,
      gid: change.gid ?? rec.gid,
      atime: change.atime ?? rec.atime,
      mtime: change.mtime ?? rec.mtime,
      ctime: now(),
    };
    this.putInode(ino, next);
    return next;
  }

  setxattr(ino: number, name: string, value: Uint8Array): void {
    this.assertWritable();
    if (name.length === 0 || name.length > NAME_MAX)
      throw nodeError('EINVAL', `xattr name "${name}"`);
    const rec = this.inode(ino);
    this.putInode(ino, {
      ...rec,
      ctime: now(),
      xattrs: { ...rec.xattrs, [name]: Uint8Array.from(value) },
    });
  }

  removexattr(ino: number, name: string): void {
    this.assertWritable();
    const rec = this.inode(ino);
    if (rec.xattrs?.[name] === undefined)
      throw nodeError('ENODATA', `xattr ${name} on inode ${ino}`);
    const xattrs = { ...rec.xattrs };
    delete xattrs[name];
    this.putInode(ino, { ...rec, ctime: now(), xattrs });
  }

  private findInodeAbove(ino: number): boolean {
    return (
      this.walk(`i|${ino}`, (layer) => this.view.get<InodeRecord>(inodeKey(layer, ino)), 1) !==
      undefined
    );
  }

  /** Whether directory `ancestor` is `dir` or contains it. */
  private isAncestor(ancestor: number, dir: number): boolean {
    let cur = dir;
    for (let hops = 0; hops < 4096; hops++) {
      if (cur === ancestor) return true;
      if (cur === this.layer.root) return false;
      const link = this.inode(cur).links[0];
      if (!link) return false;
      cur = link[0];
    }
    return true;
  }
}

function dropLink(
  links: ReadonlyArray<readonly [number, string]>,
  dir: number,
  name: string,
): Array<readonly [number, string]> {
  const i = links.findIndex(([d, n]) => d === dir && n === name);
  return i < 0 ? [...links] : [...links.slice(0, i), ...links.slice(i + 1)];
}

export function checkName(name: string): void {
  if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) {
    throw nodeError('EINVAL', `invalid name "${name}"`);
  }
  if (Buffer.byteLength(name) > NAME_MAX)
    throw nodeError('ENAMETOOLONG', `name ${name.slice(0, 32)}…`);
}
