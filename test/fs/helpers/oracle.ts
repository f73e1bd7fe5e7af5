/**
 * A naive oracle for `changes` and `diffSize`: it compares two full tree snapshots by path, with
 * the rules Docker's archive.ChangesDirs and ChangesSize follow.
 */
import type { Change, ChangeKind } from '../../../fs/types.js';
import { ancestors, parentPath } from './paths.js';
import type { NodeSnapshot, TreeSnapshot } from './tree.js';

/** Docker's numbering; local so tests need not rely on a const enum at run time. */
export const Kind = {
  Modify: 0 as ChangeKind,
  Add: 1 as ChangeKind,
  Delete: 2 as ChangeKind,
} as const;

const KIND_NAMES = ['Modify', 'Add', 'Delete'];

/** True when Docker would report the node at the same path as modified. */
export function nodeChanged(o: NodeSnapshot, n: NodeSnapshot): boolean {
  if (
    o.type !== n.type ||
    o.mode !== n.mode ||
    o.uid !== n.uid ||
    o.gid !== n.gid ||
    o.rdev !== n.rdev
  )
    return true;
  if (o.target !== n.target) return true;
  if (JSON.stringify(o.xattrs) !== JSON.stringify(n.xattrs)) return true;
  if (n.type === 'dir') return false;
  return (
    o.mtime[0] !== n.mtime[0] ||
    o.mtime[1] !== n.mtime[1] ||
    o.size !== n.size ||
    o.sha256 !== n.sha256
  );
}

/**
 * - Add: the path is in `newTree` and not in `oldTree`.
 * - Delete: the path is in `oldTree` and not in `newTree`, reported only at the top of a deleted
 *   subtree: its parent is a directory in both trees.
 * - Modify: the path is in both and `nodeChanged`; and every ancestor directory present in both
 *   trees of any change.
 * - '/' is never listed. The result is sorted by path.
 */
export function expectedChanges(oldTree: TreeSnapshot, newTree: TreeSnapshot): Change[] {
  const kinds = new Map<string, ChangeKind>();
  for (const [p, n] of newTree) {
    if (p === '/') continue;
    const o = oldTree.get(p);
    if (!o) kinds.set(p, Kind.Add);
    else if (nodeChanged(o, n)) kinds.set(p, Kind.Modify);
  }
  for (const p of oldTree.keys()) {
    if (p === '/' || newTree.has(p)) continue;
    const parent = parentPath(p);
    if (oldTree.get(parent)?.type === 'dir' && newTree.get(parent)?.type === 'dir')
      kinds.set(p, Kind.Delete);
  }
  for (const p of [...kinds.keys()]) {
    for (const a of ancestors(p)) {
      if (!kinds.has(a) && oldTree.has(a) && newTree.has(a)) kinds.set(a, Kind.Modify);
    }
  }
  return sortChanges([...kinds].map(([path, kind]) => ({ path, kind })));
}

/**
 * DiffSize as Docker computes it: the size of every added or modified non-directory in the new
 * tree (a symlink's size is its target's length), nodes with nlink > 1 counted once per ino.
 */
export function expectedDiffSize(newTree: TreeSnapshot, changes: readonly Change[]): number {
  let size = 0;
  const seen = new Set<number>();
  for (const c of changes) {
    if (c.kind === Kind.Delete) continue;
    const n = newTree.get(c.path);
    if (!n || n.type === 'dir') continue;
    if (n.nlink > 1) {
      if (seen.has(n.ino)) continue;
      seen.add(n.ino);
    }
    size += n.size;
  }
  return size;
}

export function sortChanges(changes: readonly Change[]): Change[] {
  return changes
    .map((c) => ({ path: c.path, kind: c.kind }))
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : a.kind - b.kind));
}

export function formatChange(c: Change): string {
  return `${KIND_NAMES[c.kind] ?? `kind ${String(c.kind)}`} ${c.path}`;
}

/** Lines only in `expected` (prefixed '-') or only in `actual` ('+'); empty when equal as sets. */
export function changeListDifferences(
  expected: readonly Change[],
  actual: readonly Change[],
): string[] {
  const e = sortChanges(expected).map(formatChange);
  const a = sortChanges(actual).map(formatChange);
  const out: string[] = [];
  const count = (list: string[]) =>
    list.reduce((m, s) => m.set(s, (m.get(s) ?? 0) + 1), new Map<string, number>());
  const ce = count(e);
  const ca = count(a);
  for (const [s, n] of ce)
    for (let i = ca.get(s) ?? 0; i < n; i++) out.push(`- ${s}   (expected, missing)`);
  for (const [s, n] of ca)
    for (let i = ce.get(s) ?? 0; i < n; i++) out.push(`+ ${s}   (reported, not expected)`);
  return out.sort((x, y) => (x.slice(2) < y.slice(2) ? -1 : 1));
}
