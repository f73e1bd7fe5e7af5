import { Readable } from 'node:stream';
import { isSealed } from './chunks.js';
import type { FileData } from './file-data.js';
import { CHUNK_SIZE } from './layer-store.js';
import {
  isDir,
  isReg,
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  type InodeRecord,
} from './records.js';
import {
  encodeHeader,
  END_OF_ARCHIVE,
  padding,
  splitDev,
  type TarHeader,
  type TarType,
} from './tar.js';
import type { LayerTree } from './tree.js';
import { ChangeKind, type Change } from './types.js';

/**
 * What a layer changed against another, as Docker's naive tree comparison defines it, computed
 * from the layer's own records when the other is its parent:
 * - Add: a path the layer has and the other doesn't (everything under an added directory too);
 * - Delete: a path only the other has, reported at the top of a deleted subtree;
 * - Modify: type, mode, owner, rdev, symlink target or xattrs differ, or for non-directories
 *   mtime, size or content; and every directory above a change.
 */
export interface ChangeSource {
  /** The candidates: names the layer set or hid, and nodes it holds its own records for. */
  entries: Iterable<[dir: number, name: string]>;
  inodes: Iterable<number>;
}

type Found = { ino: number; rec: InodeRecord } | undefined;

export class ChangeSet {
  readonly byPath = new Map<string, ChangeKind>();
  /**
   * Against its parent, a directory both layers share changed only if its own records say so.
   * Against any other layer, layers in between may have changed it: every directory is walked.
   */
  private walkAll = false;

  constructor(
    private readonly layer: LayerTree,
    private readonly base: LayerTree | null,
    private readonly data: FileData,
  ) {}

  /** Changes from the layer's own records: cost in proportion to what it changed. */
  async fromRecords(source: ChangeSource): Promise<Change[]> {
    const candidates = new Set<string>();
    for (const [dir, name] of source.entries) {
      for (const p of this.layer.paths(dir)) candidates.add(`${p}/${name}`);
      if (this.base) for (const p of this.base.paths(dir)) candidates.add(`${p}/${name}`);
    }
    for (const ino of source.inodes) for (const p of this.layer.paths(ino)) candidates.add(p);
    for (const path of candidates) {
      if (path !== '') await this.comparePath(path);
    }
    return this.finish();
  }

  /** Changes by walking both trees whole. */
  async fromWalk(): Promise<Change[]> {
    this.walkAll = true;
    await this.compareDirs('', this.layer.layer.root, this.base?.layer.root);
    return this.finish();
  }

  private async comparePath(path: string): Promise<void> {
    const ours = find(this.layer, path);
    const theirs = this.base ? find(this.base, path) : undefined;
    if (ours && !theirs) {
      this.addTree(path, ours);
    } else if (!ours && theirs) {
      const parent = path.slice(0, path.lastIndexOf('/'));
      const op = find(this.layer, parent);
      const tp = this.base ? find(this.base, parent) : undefined;
      if (op && tp && isDir(op.rec.mode) && isDir(tp.rec.mode))
        this.byPath.set(path, ChangeKind.Delete);
    } else if (ours && theirs) {
      await this.compareNodes(path, ours, theirs);
    }
  }

  private async compareNodes(
    path: string,
    ours: NonNullable<Found>,
    theirs: NonNullable<Found>,
  ): Promise<void> {
    if (await this.differs(ours, theirs)) this.byPath.set(path, ChangeKind.Modify);
    if (!isDir(ours.rec.mode)) return;
    if (!isDir(theirs.rec.mode)) {
      for (const [name, ino] of this.layer.entries(ours.ino))
        this.addTree(`${path}/${name}`, { ino, rec: this.layer.inode(ino) });
    } else if (this.walkAll || ours.ino !== theirs.ino) {
      // A directory replaced by another: its records say nothing about what it replaced.
      await this.compareDirs(path, ours.ino, theirs.ino);
    }
  }

  private async compareDirs(path: string, ours: number, theirs: number | undefined): Promise<void> {
    const mine = this.layer.entries(ours);
    const other =
      theirs !== undefined && this.base ? this.base.entries(theirs) : new Map<string, number>();
    for (const name of other.keys()) {
      if (!mine.has(name)) this.byPath.set(`${path}/${name}`, ChangeKind.Delete);
    }
    for (const [name, ino] of mine) {
      const o = { ino, rec: this.layer.inode(ino) };
      const t = other.get(name);
      if (t === undefined || !this.base) this.addTree(`${path}/${name}`, o);
      else await this.compareNodes(`${path}/${name}`, o, { ino: t, rec: this.base.inode(t) });
    }
  }

  private addTree(path: string, node: NonNullable<Found>): void {
    this.byPath.set(path, ChangeKind.Add);
    if (!isDir(node.rec.mode)) return;
    for (const [name, ino] of this.layer.entries(node.ino)) {
      this.addTree(`${path}/${name}`, { ino, rec: this.layer.inode(ino) });
    }
  }

  private async differs(a: NonNullable<Found>, b: NonNullable<Found>): Promise<boolean> {
    const x = a.rec;
    const y = b.rec;
    if (x.mode !== y.mode || x.uid !== y.uid || x.gid !== y.gid || x.rdev !== y.rdev) return true;
    if (x.target !== y.target || !sameXattrs(x.xattrs, y.xattrs)) return true;
    if (isDir(x.mode)) return false;
    if (x.mtime[0] !== y.mtime[0] || x.mtime[1] !== y.mtime[1] || x.size !== y.size) return true;
    return isReg(x.mode) && !(await this.sameContent(a.ino, b.ino, x.size));
  }

  private async sameContent(ours: number, theirs: number, size: number): Promise<boolean> {
    const a = this.layer.findContent(ours).chunks;
    const b = (this.base as LayerTree).findContent(theirs).chunks;
    for (let i = 0; i * CHUNK_SIZE < size; i++) {
      const x = a[i] ?? '';
      const y = b[i] ?? '';
      if (x === y) continue;
      if (isSealed(x) && isSealed(y)) return false;
      const len = Math.min(CHUNK_SIZE, size - i * CHUNK_SIZE);
      const [bx, by] = await Promise.all([
        this.data.read(this.layer, ours, i * CHUNK_SIZE, len),
        this.data.read(this.base as LayerTree, theirs, i * CHUNK_SIZE, len),
      ]);
      if (!bx.equals(by)) return false;
    }
    return true;
  }

  private finish(): Change[] {
    // Docker lists the directories above a change as modified, so their attributes travel too.
    for (const path of [...this.byPath.keys()]) {
      for (let at = path.lastIndexOf('/'); at > 0; at = path.lastIndexOf('/', at - 1)) {
        const dir = path.slice(0, at);
        if (this.byPath.has(dir)) break;
        this.byPath.set(dir, ChangeKind.Modify);
      }
    }
    return [...this.byPath]
      .map(([path, kind]) => ({ path, kind }))
      .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  }
}

function find(tree: LayerTree, path: string): Found {
  try {
    const ino = tree.resolve(path);
    return { ino, rec: tree.inode(ino) };
  } catch {
    return undefined;
  }
}

function sameXattrs(a: InodeRecord['xattrs'], b: InodeRecord['xattrs']): boolean {
  const ka = Object.keys(a ?? {});
  const kb = Object.keys(b ?? {});
  if (ka.length !== kb.length) return false;
  return ka.every((k) => b?.[k] !== undefined && Buffer.from(a![k]).equals(Buffer.from(b[k])));
}

/** Docker's DiffSize: sizes of added or modified non-directories, hard links counted once. */
export function changesSize(tree: LayerTree, changes: Change[]): number {
  const seen = new Set<number>();
  let size = 0;
  for (const c of changes) {
    if (c.kind === ChangeKind.Delete) continue;
    const ino = tree.resolve(c.path);
    const rec = tree.inode(ino);
    if (isDir(rec.mode) || seen.has(ino)) continue;
    if (rec.nlink > 1) seen.add(ino);
    size += rec.size;
  }
  return size;
}

const TYPE_OF: Record<number, TarType> = {
  [S_IFDIR]: 'dir',
  [S_IFLNK]: 'symlink',
  [S_IFCHR]: 'char',
  [S_IFBLK]: 'block',
  [S_IFIFO]: 'fifo',
};

/** Files whose content a diff reads ahead, so their chunks are sealed and read in parallel. */
const READ_AHEAD_FILES = 16;

interface DiffEntry {
  readonly header: TarHeader;
  /** The inode whose content follows the header; undefined for entries without content. */
  readonly ino?: number;
}

/**
 * The changes as a layer tar: deletions as `.wh.` entries, directories before their contents,
 * hard links within the diff as links. An error mid-stream destroys the stream, so a consumer
 * never mistakes a truncated tar for a whole one.
 *
 * The first chunk of the next few files is read (and sealed) ahead while the current one is
 * streamed: a build step that wrote thousands of small files would otherwise wait on each
 * file's reads and links in turn.
 */
export function diffTar(tree: LayerTree, data: FileData, changes: Change[]): Readable {
  // A layer tar can link only to names it holds itself: a file also reachable by an unchanged
  // name is written whole, as Docker writes it, so the tar applies on any driver.
  const firstPath = new Map<number, string>();
  const entryOf = (change: Change): DiffEntry => {
    const rel = change.path.slice(1);
    if (change.kind === ChangeKind.Delete) {
      const at = rel.lastIndexOf('/');
      const name = `${rel.slice(0, at + 1)}.wh.${rel.slice(at + 1)}`;
      return { header: { ...EMPTY, path: name, type: 'file' } };
    }
    const ino = tree.resolve(change.path);
    const rec = tree.inode(ino);
    const [devmajor, devminor] = splitDev(rec.rdev);
    const header: TarHeader = {
      path: rel,
      type: TYPE_OF[rec.mode & S_IFMT] ?? 'file',
      mode: rec.mode & 0o7777,
      uid: rec.uid,
      gid: rec.gid,
      size: 0,
      mtime: rec.mtime,
      linkname: rec.target ?? '',
      devmajor,
      devminor,
      xattrs: Object.fromEntries(
        Object.entries(rec.xattrs ?? {}).map(([k, v]) => [k, Buffer.from(v)]),
      ),
    };
    if (header.type !== 'file') return { header };
    const first = firstPath.get(ino);
    if (first !== undefined) return { header: { ...header, type: 'link', linkname: first } };
    if (rec.nlink > 1) firstPath.set(ino, rel);
    return { header: { ...header, size: rec.size }, ino };
  };

  async function* entries(): AsyncGenerator<Buffer> {
    // Entries planned and not yet streamed, by position; streamed ones are dropped.
    const planned = new Map<number, DiffEntry>();
    let plannedCount = 0;
    const firstChunks = new Map<number, Promise<Buffer>>();
    const readFirstChunk = (entry: DiffEntry): Promise<Buffer> =>
      data.readForDiff(tree, entry.ino!, 0, Math.min(CHUNK_SIZE, entry.header.size));
    let next = 0;
    // Plans entries (and starts their first chunk's read) up to READ_AHEAD_FILES files ahead.
    const planAhead = (at: number): void => {
      let files = 0;
      for (let i = at; i < plannedCount && files < READ_AHEAD_FILES; i++) {
        if (firstChunks.has(i)) files++;
      }
      while (next < changes.length && (files < READ_AHEAD_FILES || plannedCount <= at)) {
        const entry = entryOf(changes[next++]);
        const position = plannedCount++;
        planned.set(position, entry);
        if (entry.ino === undefined || entry.header.size === 0) continue;
        const read = readFirstChunk(entry);
        read.catch(() => undefined); // awaited in order below; never an unhandled rejection
        firstChunks.set(position, read);
        files++;
      }
    };
    for (let i = 0; ; i++) {
      planAhead(i);
      if (i >= plannedCount) break;
      const { header, ino } = planned.get(i)!;
      planned.delete(i);
      yield encodeHeader(header);
      if (ino === undefined || header.size === 0) continue;
      const first = firstChunks.get(i)!;
      firstChunks.delete(i);
      for (let idx = 0; idx * CHUNK_SIZE < header.size; idx++) {
        if (tree.inode(ino).size !== header.size) {
          throw new Error(`/${header.path} changed size during diff`);
        }
        if (idx === 0) {
          yield await first;
          continue;
        }
        const length = Math.min(CHUNK_SIZE, header.size - idx * CHUNK_SIZE);
        yield await data.readForDiff(tree, ino, idx, length);
      }
      yield padding(header.size);
    }
    yield END_OF_ARCHIVE;
  }
  return Readable.from(entries(), { objectMode: false });
}

const EMPTY: TarHeader = {
  path: '',
  type: 'file',
  mode: 0,
  uid: 0,
  gid: 0,
  size: 0,
  mtime: [0, 0],
  linkname: '',
  devmajor: 0,
  devminor: 0,
  xattrs: {},
};
