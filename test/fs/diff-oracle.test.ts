/**
 * Randomized property test of `changes`, `diffSize`, `diff` and `applyDiff`: a random base tree,
 * frozen; a child with random mutations; the store's answers compared with a naive oracle that
 * walks both trees through the public API (helpers/oracle.ts), and diff + applyDiff onto a fresh
 * child of the base compared with the child, node by node.
 *
 * Seeds: 1..LCFS_ORACLE_SEEDS (default 40); LCFS_ORACLE_SEED=n runs seed n alone.
 */
import assert from 'node:assert/strict';
import { buffer } from 'node:stream/consumers';
import type { LayerStore } from '../../fs/layer-store.js';
import type { Change } from '../../fs/types.js';
import {
  Kind,
  RandomTreeWriter,
  SeededRandom,
  assertTreesEqual,
  changeListDifferences,
  expectedChanges,
  expectedDiffSize,
  formatChange,
  lookupPath,
  parseTar,
  snapshotTree,
  tarReadable,
  treeInvariantViolations,
  useTempStore,
  writeFile,
} from './helpers/index.js';

function seeds(): number[] {
  if (process.env.LCFS_ORACLE_SEED) return [Number(process.env.LCFS_ORACLE_SEED)];
  const n = Number(process.env.LCFS_ORACLE_SEEDS ?? 40);
  return Array.from({ length: n }, (_, i) => i + 1);
}

/** Tar entry name → layer path, and what it stands for. */
function tarPath(name: string): { path: string; whiteout?: 'file' | 'opaque' } {
  const clean = '/' + name.replace(/^\.?\/+/, '').replace(/\/+$/, '');
  const slash = clean.lastIndexOf('/');
  const dir = clean.slice(0, slash) || '/';
  const base = clean.slice(slash + 1);
  if (base === '.wh..wh..opq') return { path: dir, whiteout: 'opaque' };
  if (base.startsWith('.wh.'))
    return { path: (dir === '/' ? '' : dir) + '/' + base.slice(4), whiteout: 'file' };
  return { path: clean };
}

function checkChanges(
  actual: readonly Change[],
  expected: readonly Change[],
  what: string,
): string | undefined {
  const bad = actual.filter(
    (c) => !c.path.startsWith('/') || c.path === '/' || c.path.endsWith('/'),
  );
  if (bad.length > 0)
    return `${what}: malformed paths ${bad.map((c) => JSON.stringify(c.path)).join(', ')}`;
  const d = changeListDifferences(expected, actual);
  if (d.length > 0)
    return `${what}: ${d.length} difference(s) from the oracle\n  ${d.join('\n  ')}`;
  return undefined;
}

async function runSeed(store: LayerStore, seed: number, log: string[]): Promise<void> {
  const rng = new SeededRandom(seed);
  await store.createLayer('base', null);
  const baseWriter = new RandomTreeWriter(store, 'base', rng);
  log.push('--- base');
  try {
    await baseWriter.populate();
  } finally {
    log.push(...baseWriter.log);
  }
  await store.freeze('base');
  const baseTree = await snapshotTree(store, 'base');

  await store.createLayer('child', 'base');
  const childWriter = new RandomTreeWriter(store, 'child', rng);
  log.push('--- child');
  try {
    await childWriter.mutate(rng.int(10, 40));
  } finally {
    log.push(...childWriter.log);
  }

  const oldTree = await snapshotTree(store, 'base');
  assertTreesEqual(oldTree, baseTree, 'the frozen base after the child changed', {
    dirMtime: true,
  });
  const newTree = await snapshotTree(store, 'child');
  const violations = treeInvariantViolations(newTree);
  assert.ok(violations.length === 0, `child tree invariants: ${violations.join('; ')}`);

  // changes
  const expected = expectedChanges(oldTree, newTree);
  const actual = await store.changes('child', 'base');
  const problem = checkChanges(actual, expected, 'changes(child, base)');
  if (problem) assert.fail(`${problem}\n  oracle: ${expected.map(formatChange).join(', ')}`);

  // diffSize
  assert.equal(
    await store.diffSize('child', 'base'),
    expectedDiffSize(newTree, expected),
    'diffSize(child, base)',
  );

  // diff: only changed paths, and it applies back to the same tree
  const tarBytes = await buffer(store.diff('child', 'base'));
  const entries = await parseTar(tarReadable(tarBytes));
  const changed = new Map(expected.map((c) => [c.path, c.kind]));
  const written = new Set<string>();
  for (const e of entries) {
    const t = tarPath(e.name);
    // Self-contained: a hard link names an entry earlier in the same tar, so it loads anywhere.
    if (e.type === 'link') {
      assert.ok(
        written.has(tarPath(e.linkname ?? '').path),
        `diff link ${e.name} -> ${e.linkname} is not in the tar`,
      );
    }
    written.add(t.path);
    if (t.whiteout === 'file') {
      assert.ok(oldTree.has(t.path), `diff whiteout ${e.name}: ${t.path} is not in the base`);
      assert.equal(e.size, 0, `whiteout ${e.name} is empty`);
    } else {
      const k = changed.get(t.path);
      assert.ok(
        k === Kind.Add || k === Kind.Modify,
        `diff entry ${e.name} (${e.type}) is not an added or modified path`,
      );
    }
  }
  const headerSum = entries.reduce((s, e) => s + e.size, 0);

  await store.createLayer('copy', 'base');
  const applied = await store.applyDiff('copy', 'base', tarReadable(tarBytes));
  assert.equal(applied, headerSum, 'applyDiff returns the sum of the diff tar header sizes');
  const copyTree = await snapshotTree(store, 'copy');
  const writtenPaths = new Set(expected.filter((c) => c.kind !== Kind.Delete).map((c) => c.path));
  assertTreesEqual(copyTree, newTree, 'diff(child, base) applied on a fresh child of base', {
    linksSplitAt: writtenPaths,
  });
  const again = checkChanges(await store.changes('copy', 'base'), expected, 'changes(copy, base)');
  if (again) assert.fail(again);
}

describe('diff oracle: random trees, random mutations', function () {
  this.timeout(60_000);
  const ts = useTempStore();

  for (const seed of seeds()) {
    it(`seed ${seed}`, async () => {
      const log: string[] = [];
      try {
        await runSeed(ts().store, seed, log);
      } catch (err) {
        const tail = log.length > 80 ? ['…', ...log.slice(-80)] : log;
        if (err instanceof Error) {
          const frames = (err.stack ?? '').split('\n').filter((l) => /^\s+at /.test(l));
          err.message =
            `[seed ${seed}: rerun with LCFS_ORACLE_SEED=${seed} npx mocha test/fs/diff-oracle.test.ts]\n` +
            `${err.message}\noperations:\n  ${tail.join('\n  ')}`;
          // mocha prints the stack, which holds the message as it was when the error was made.
          err.stack = `${err.name}: ${err.message}\n${frames.join('\n')}`;
        }
        throw err;
      }
    });
  }
});

describe('diff + applyDiff and hard links: the tar holds every link target', function () {
  this.timeout(30_000);
  const ts = useTempStore();

  /** Builds base (two files, one pair of links), runs `change` on a child, then round-trips the diff. */
  async function roundTrip(change: (store: LayerStore) => Promise<void> | void): Promise<void> {
    const { store } = ts();
    await store.createLayer('base', null);
    const d = await writeFile(store, 'base', '/d', 'lower file');
    await writeFile(store, 'base', '/other', 'other');
    store.link('base', d.ino, store.root('base'), 'd-link');
    await store.createLayer('child', 'base');
    await change(store);
    const childTree = await snapshotTree(store, 'child');
    const tarBytes = await buffer(store.diff('child', 'base'));
    const names = new Set<string>();
    for (const e of await parseTar(tarReadable(tarBytes))) {
      if (e.type === 'link') {
        assert.ok(
          names.has(e.linkname ?? ''),
          `link ${e.name} -> ${e.linkname} points outside the tar`,
        );
      }
      names.add(e.name);
    }
    const changes = await store.changes('child', 'base');
    await store.createLayer('copy', 'base');
    await store.applyDiff('copy', 'base', tarReadable(tarBytes));
    assertTreesEqual(
      await snapshotTree(store, 'copy'),
      childTree,
      'diff(child, base) applied on a fresh child of base',
      { linksSplitAt: new Set(changes.filter((c) => c.kind !== Kind.Delete).map((c) => c.path)) },
    );
  }

  it('a new link to an unchanged file of the parent', () =>
    roundTrip((store) => {
      store.link(
        'child',
        lookupPath(store, 'child', '/other').ino,
        store.root('child'),
        'other-link',
      );
    }));

  it('one name of an inherited link pair renamed', () =>
    roundTrip((store) =>
      store.rename('child', store.root('child'), 'd-link', store.root('child'), 'renamed'),
    ));

  it('an inherited link pair written through one name', () =>
    roundTrip(async (store) => {
      await store.write('child', lookupPath(store, 'child', '/d').ino, 0, Buffer.from('LOWER'));
    }));
});
