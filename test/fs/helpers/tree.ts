/**
 * A full snapshot of a layer's tree taken through the public LayerStore API only, and an exact
 * comparison of two snapshots (types, modes, owners, sizes, content hashes, symlink targets,
 * xattrs, mtimes, rdev, hard-link groups).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type { LayerStore } from '../../../fs/layer-store.js';
import type { Timespec } from '../../../fs/types.js';
import { joinPath } from './paths.js';
import { fmtMode, nodeType, type NodeType } from './posix.js';

export interface NodeSnapshot {
  readonly path: string;
  readonly ino: number;
  readonly type: NodeType;
  /** Full st_mode, type bits included. */
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly nlink: number;
  readonly rdev: number;
  readonly size: number;
  readonly mtime: Timespec;
  /** Symlinks only. */
  readonly target?: string;
  /** Regular files only, when walked with content. */
  readonly sha256?: string;
  /** name → value as hex. */
  readonly xattrs: Readonly<Record<string, string>>;
}

/** path → node; '/' is the root. */
export type TreeSnapshot = ReadonlyMap<string, NodeSnapshot>;

const READ_PIECE = 1 << 20;

/** sha256 of a file's content read in 1 MiB pieces; checks that exactly `size` bytes are there. */
export async function contentSha256(
  store: LayerStore,
  id: string,
  ino: number,
  size: number,
  label = String(ino),
): Promise<string> {
  const h = createHash('sha256');
  let off = 0;
  while (off < size) {
    const want = Math.min(READ_PIECE, size - off);
    const buf = await store.read(id, ino, off, want);
    if (buf.length === 0)
      throw new Error(`${id}:${label}: read at ${off} returned no bytes, size is ${size}`);
    if (buf.length > want)
      throw new Error(`${id}:${label}: read of ${want} at ${off} returned ${buf.length} bytes`);
    h.update(buf);
    off += buf.length;
  }
  const tail = await store.read(id, ino, size, 4096);
  if (tail.length !== 0)
    throw new Error(`${id}:${label}: read past EOF (size ${size}) returned ${tail.length} bytes`);
  return h.digest('hex');
}

export interface SnapshotOptions {
  /** Hash regular files' content (default true). */
  content?: boolean;
}

/**
 * Walks the whole layer: root, readdir, getattr, readlink, read, listxattr, getxattr. Fails on
 * inconsistencies (a name listed twice, readdir and getattr disagreeing, a directory reached twice).
 * '.' and '..' entries, if the store lists them, are skipped.
 */
export async function snapshotTree(
  store: LayerStore,
  id: string,
  options: SnapshotOptions = {},
): Promise<TreeSnapshot> {
  const withContent = options.content ?? true;
  const out = new Map<string, NodeSnapshot>();
  const seenDirs = new Set<number>();

  const visit = async (path: string, ino: number): Promise<void> => {
    const a = store.getattr(id, ino);
    const type = nodeType(a.mode);
    const xattrs: Record<string, string> = {};
    if (type === 'file' || type === 'dir') {
      for (const name of store.listxattr(id, ino).slice().sort()) {
        xattrs[name] = store.getxattr(id, ino, name).toString('hex');
      }
    }
    const node: NodeSnapshot = {
      path,
      ino: a.ino,
      type,
      mode: a.mode,
      uid: a.uid,
      gid: a.gid,
      nlink: a.nlink,
      rdev: a.rdev,
      size: a.size,
      mtime: [a.mtime[0], a.mtime[1]],
      ...(type === 'symlink' ? { target: store.readlink(id, ino) } : {}),
      ...(type === 'file' && withContent
        ? { sha256: await contentSha256(store, id, ino, a.size, path) }
        : {}),
      xattrs,
    };
    out.set(path, node);
    if (type !== 'dir') return;
    if (seenDirs.has(a.ino)) throw new Error(`${id}:${path}: directory ino ${a.ino} reached twice`);
    seenDirs.add(a.ino);
    const names = new Set<string>();
    const entries = store.readdir(id, ino).filter((e) => e.name !== '.' && e.name !== '..');
    entries.sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
    for (const e of entries) {
      if (e.name === '' || e.name.includes('/'))
        throw new Error(`${id}:${path}: readdir lists a bad name ${JSON.stringify(e.name)}`);
      if (names.has(e.name)) throw new Error(`${id}:${path}: readdir lists ${e.name} twice`);
      names.add(e.name);
      const childPath = joinPath(path, e.name);
      const g = store.getattr(id, e.attr.ino);
      if (
        g.mode !== e.attr.mode ||
        g.size !== e.attr.size ||
        g.uid !== e.attr.uid ||
        g.gid !== e.attr.gid
      ) {
        throw new Error(
          `${id}:${childPath}: readdir attr (mode ${fmtMode(e.attr.mode)} size ${e.attr.size} ${e.attr.uid}:${e.attr.gid}) ` +
            `!= getattr (mode ${fmtMode(g.mode)} size ${g.size} ${g.uid}:${g.gid})`,
        );
      }
      await visit(childPath, e.attr.ino);
    }
  };

  await visit('/', store.root(id));
  return out;
}

/**
 * Hard-link groups as a layer tar carries them when `changed` are the paths it writes: it can
 * link only names it holds, so a group keeps its changed names together and its unchanged names
 * together, never across.
 */
function splitGroups(groups: string[][], changed: ReadonlySet<string> | undefined): string[][] {
  if (!changed) return groups;
  return groups
    .flatMap((g) => [g.filter((p) => changed.has(p)), g.filter((p) => !changed.has(p))])
    .filter((g) => g.length > 1)
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

/** Hard-link groups (paths sharing an ino, non-directories, 2 or more paths), each sorted, sorted. */
export function hardLinkGroups(tree: TreeSnapshot): string[][] {
  const byIno = new Map<number, string[]>();
  for (const n of tree.values()) {
    if (n.type === 'dir') continue;
    const list = byIno.get(n.ino) ?? [];
    list.push(n.path);
    byIno.set(n.ino, list);
  }
  return [...byIno.values()]
    .filter((g) => g.length > 1)
    .map((g) => g.sort())
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

/**
 * Invariants any tree must keep: a non-directory's nlink equals the number of its paths; a
 * symlink's size is its target's length; nodes sharing an ino agree on every attribute.
 */
export function treeInvariantViolations(tree: TreeSnapshot): string[] {
  const problems: string[] = [];
  const byIno = new Map<number, NodeSnapshot[]>();
  for (const n of tree.values()) {
    if (n.type === 'dir') continue;
    byIno.set(n.ino, [...(byIno.get(n.ino) ?? []), n]);
    if (n.type === 'symlink' && n.size !== Buffer.byteLength(n.target ?? '')) {
      problems.push(
        `${n.path}: symlink size ${n.size} != target length ${Buffer.byteLength(n.target ?? '')}`,
      );
    }
  }
  for (const [ino, nodes] of byIno) {
    for (const n of nodes) {
      if (n.nlink !== nodes.length)
        problems.push(`${n.path}: nlink ${n.nlink} but ino ${ino} has ${nodes.length} path(s)`);
      const a = describeNode(nodes[0], { dirMtime: true });
      if (describeNode(n, { dirMtime: true }) !== a)
        problems.push(`${n.path}: differs from ${nodes[0].path} although both are ino ${ino}`);
    }
  }
  return problems;
}

export interface CompareOptions {
  /** Compare directories' mtimes too (default false: a diff does not carry them reliably). */
  dirMtime?: boolean;
  /**
   * The tree was rebuilt from a layer tar that wrote these paths: expect the expected tree's
   * hard-link groups split between written and unwritten names (see splitGroups).
   */
  linksSplitAt?: ReadonlySet<string>;
}

/** One line holding everything compared about a node (not its path, ino or nlink). */
export function describeNode(n: NodeSnapshot, options: CompareOptions = {}): string {
  const parts = [n.type, fmtMode(n.mode), `${n.uid}:${n.gid}`];
  if (n.type !== 'dir') parts.push(`size=${n.size}`);
  if (n.type !== 'dir' || options.dirMtime)
    parts.push(`mtime=${n.mtime[0]}.${String(n.mtime[1]).padStart(9, '0')}`);
  if (n.type === 'char' || n.type === 'block') parts.push(`rdev=${n.rdev}`);
  if (n.target !== undefined) parts.push(`target=${JSON.stringify(n.target)}`);
  if (n.sha256 !== undefined) parts.push(`sha256=${n.sha256.slice(0, 16)}`);
  const x = Object.keys(n.xattrs);
  if (x.length > 0) parts.push(`xattrs={${x.map((k) => `${k}=${n.xattrs[k]}`).join(',')}}`);
  return parts.join(' ');
}

/** Human-readable differences between two trees; empty when they are equal. */
export function treeDifferences(
  expected: TreeSnapshot,
  actual: TreeSnapshot,
  options: CompareOptions = {},
): string[] {
  const diffs: string[] = [];
  const paths = [...new Set([...expected.keys(), ...actual.keys()])].sort();
  for (const p of paths) {
    const e = expected.get(p);
    const a = actual.get(p);
    if (!a) diffs.push(`${p}: missing (expected ${describeNode(e!, options)})`);
    else if (!e) diffs.push(`${p}: unexpected (${describeNode(a, options)})`);
    else {
      const de = describeNode(e, options);
      const da = describeNode(a, options);
      if (de !== da) diffs.push(`${p}: expected ${de}\n${' '.repeat(p.length + 2)}actual   ${da}`);
    }
  }
  const ge = JSON.stringify(splitGroups(hardLinkGroups(expected), options.linksSplitAt));
  const ga = JSON.stringify(hardLinkGroups(actual));
  if (ge !== ga) diffs.push(`hard-link groups: expected ${ge}, actual ${ga}`);
  return diffs;
}

export function assertTreesEqual(
  actual: TreeSnapshot,
  expected: TreeSnapshot,
  label: string,
  options: CompareOptions = {},
): void {
  const diffs = treeDifferences(expected, actual, options);
  if (diffs.length > 0) {
    const shown = diffs.slice(0, 25).join('\n  ');
    assert.fail(
      `${label}: ${diffs.length} difference(s)\n  ${shown}${diffs.length > 25 ? '\n  …' : ''}`,
    );
  }
}

/** A multi-line listing of a tree, for failure messages. */
export function formatTree(tree: TreeSnapshot, options: CompareOptions = {}): string {
  return [...tree.values()]
    .map((n) => `${n.path} ino=${n.ino} nlink=${n.nlink} ${describeNode(n, options)}`)
    .join('\n');
}
