/**
 * moby's graphdriver graphtest behaviours (daemon/graphdriver/graphtest), ported onto the
 * LayerStore interface: CreateEmpty, CreateBase, CreateSnap, DeepLayerRead, DiffApply, Changes.
 */
import assert from 'node:assert/strict';
import { buffer } from 'node:stream/consumers';
import type { LayerStore } from '../../fs/layer-store.js';
import type { Change } from '../../fs/types.js';
import {
  Kind,
  ROOT,
  S_IFDIR,
  S_IFREG,
  S_ISUID,
  S_ISVTX,
  assertTreesEqual,
  changeListDifferences,
  expectStoreError,
  expectedChanges,
  expectedDiffSize,
  fmtMode,
  labelledBytes,
  lookupPath,
  mkdirp,
  parentOf,
  parseTar,
  readFile,
  removeTree,
  snapshotTree,
  sortChanges,
  tarReadable,
  useTempStore,
  writeFile,
} from './helpers/index.js';

function names(store: LayerStore, id: string, dir: number): string[] {
  return store
    .readdir(id, dir)
    .map((e) => e.name)
    .filter((n) => n !== '.' && n !== '..')
    .sort();
}

/** graphtest's createBase: "a subdir" 0705|sticky owned 1:2, "a file" 0222|setuid owned 0:0. */
async function createBase(store: LayerStore, id: string): Promise<void> {
  await store.createLayer(id, null);
  const root = store.root(id);
  store.mkdir(id, root, 'a subdir', 0o705 | S_ISVTX, { uid: 1, gid: 2 });
  const file = store.create(id, root, 'a file', S_IFREG | S_ISUID | 0o222, ROOT);
  assert.equal(await store.write(id, file.ino, 0, Buffer.from('Some data')), 9);
}

/** graphtest's verifyBase; `exactRoot` also requires the root to hold nothing else. */
async function verifyBase(store: LayerStore, id: string, exactRoot = true): Promise<void> {
  const subdir = lookupPath(store, id, '/a subdir');
  assert.equal(
    fmtMode(subdir.mode),
    fmtMode(S_IFDIR | S_ISVTX | 0o705),
    `${id}: mode of "a subdir"`,
  );
  assert.deepEqual([subdir.uid, subdir.gid], [1, 2], `${id}: owner of "a subdir"`);
  const file = lookupPath(store, id, '/a file');
  assert.equal(fmtMode(file.mode), fmtMode(S_IFREG | S_ISUID | 0o222), `${id}: mode of "a file"`);
  assert.deepEqual([file.uid, file.gid], [0, 0], `${id}: owner of "a file"`);
  assert.equal(
    (await readFile(store, id, '/a file')).toString(),
    'Some data',
    `${id}: content of "a file"`,
  );
  if (exactRoot)
    assert.deepEqual(
      names(store, id, store.root(id)),
      ['a file', 'a subdir'],
      `${id}: root entries`,
    );
}

/** graphtest's addFiles: file-a (100 B), dir-b/file-b (200 B), file-c (300 B), content from `seed`. */
async function addFiles(store: LayerStore, id: string, seed: number): Promise<void> {
  await writeFile(store, id, '/file-a', labelledBytes(`seed-${seed}`, 100));
  mkdirp(store, id, '/dir-b');
  await writeFile(store, id, '/dir-b/file-b', labelledBytes(`seed-${seed + 1}`, 200));
  await writeFile(store, id, '/file-c', labelledBytes(`seed-${seed + 2}`, 300));
}

function assertAbsolutePaths(changes: readonly Change[], label: string): void {
  for (const c of changes) {
    assert.ok(
      c.path.startsWith('/') && c.path !== '/' && !c.path.endsWith('/') && !c.path.includes('//'),
      `${label}: bad path ${JSON.stringify(c.path)}`,
    );
  }
}

function assertChanges(
  actual: readonly Change[],
  expected: readonly Change[],
  label: string,
): void {
  assertAbsolutePaths(actual, label);
  const d = changeListDifferences(expected, actual);
  assert.ok(d.length === 0, `${label}: change lists differ\n  ${d.join('\n  ')}`);
}

/** A tar entry name as Docker writes it, normalized: no leading './' or '/', no trailing '/'. */
function normalizeName(name: string): string {
  return name.replace(/^\.?\/+/, '').replace(/\/+$/, '');
}

describe('graphtest: moby graph driver behaviours', function () {
  this.timeout(60_000);
  const ts = useTempStore();

  it('CreateEmpty: a base layer is an empty 0755 root owned by 0:0', async () => {
    const { store } = ts();
    const info = await store.createLayer('empty', null);
    assert.equal(info.id, 'empty');
    assert.equal(info.parent, null);
    assert.equal(info.state, 'writable');
    assert.equal(info.children, 0);
    assert.equal(info.refs, 0);
    assert.ok(store.exists('empty'));
    assert.deepEqual(
      store.listLayers().map((l) => l.id),
      ['empty'],
    );
    const root = store.getattr('empty', store.root('empty'));
    assert.equal(fmtMode(root.mode), fmtMode(S_IFDIR | 0o755));
    assert.deepEqual([root.uid, root.gid], [0, 0]);
    assert.deepEqual(names(store, 'empty', root.ino), []);
    await store.removeLayer('empty');
    assert.equal(store.exists('empty'), false);
    assert.deepEqual(store.listLayers(), []);
  });

  it('CreateBase: modes with sticky and setuid bits and owners survive exactly', async () => {
    const { store } = ts();
    await createBase(store, 'base');
    await verifyBase(store, 'base');
  });

  it('CreateBase: the base survives flush, close and reopen', async () => {
    const t = ts();
    await createBase(t.store, 'base');
    await t.store.flush();
    const store = await t.reopen();
    await verifyBase(store, 'base');
  });

  it('CreateSnap: a child shows the same state as its parent', async () => {
    const { store } = ts();
    await createBase(store, 'base');
    const snap = await store.createLayer('snap', 'base');
    assert.equal(snap.parent, 'base');
    assert.equal(snap.state, 'writable');
    assert.equal(snap.depth, store.layer('base').depth + 1);
    assert.equal(store.layer('base').children, 1);
    await verifyBase(store, 'snap');
    await verifyBase(store, 'base');
  });

  it('DeepLayerRead(128): a 128-deep chain reads back right from the top', async function () {
    this.timeout(120_000);
    const { store } = ts();
    const count = 128;
    const content = 'test content';
    await createBase(store, 'layer-0');
    await writeFile(store, 'layer-0', '/testfile.txt', content);
    for (let i = 1; i <= count; i++) {
      const id = `layer-${i}`;
      await store.createLayer(id, `layer-${i - 1}`);
      await writeFile(store, id, '/top-id', id);
      await writeFile(store, id, `/file-${i}`, `written in layer ${i}`);
    }
    const top = `layer-${count}`;
    assert.equal(store.layer(top).depth - store.layer('layer-0').depth, count);
    assert.equal((await readFile(store, top, '/top-id')).toString(), top);
    assert.equal((await readFile(store, top, '/testfile.txt')).toString(), content);
    for (let i = 1; i <= count; i++) {
      assert.equal(
        (await readFile(store, top, `/file-${i}`)).toString(),
        `written in layer ${i}`,
        `${top}:/file-${i}`,
      );
    }
    await verifyBase(store, top, false);
    // A layer in the middle sees its own state only.
    assert.equal((await readFile(store, 'layer-64', '/top-id')).toString(), 'layer-64');
    await expectStoreError(
      'lookup /file-65 in layer-64',
      () => lookupPath(store, 'layer-64', '/file-65'),
      { errno: 'ENOENT' },
    );
    assert.equal(
      names(store, top, store.root(top)).length,
      2 + 2 + count,
      'root entries of the top layer',
    );
  });

  it('DiffApply: Diff(upper, base) applied on a new child of base reproduces upper; Size = DiffSize', async () => {
    const { store } = ts();
    const deleteFile = '/file-remove.txt';
    const deleteFileContent = 'This file should get removed in upper!';
    await createBase(store, 'base');
    await addFiles(store, 'base', 3);
    await writeFile(store, 'base', deleteFile, deleteFileContent);
    mkdirp(store, 'base', '/var/lib');

    await store.createLayer('upper', 'base');
    await addFiles(store, 'upper', 6);
    store.unlink('upper', store.root('upper'), 'file-remove.txt');
    removeTree(store, 'upper', '/var/lib');

    const diffSize = await store.diffSize('upper', 'base');
    assert.equal(diffSize, 100 + 200 + 300, 'DiffSize: the three rewritten files');

    await store.createLayer('diff', 'base');
    assert.equal((await readFile(store, 'diff', deleteFile)).toString(), deleteFileContent);
    const tarBytes = await buffer(store.diff('upper', 'base'));
    const applied = await store.applyDiff('diff', 'base', tarReadable(tarBytes));
    assert.equal(applied, diffSize, 'ApplyDiff Size equals DiffSize');

    await expectStoreError(
      `${deleteFile} after apply`,
      () => lookupPath(store, 'diff', deleteFile),
      { errno: 'ENOENT' },
    );
    await expectStoreError('/var/lib after apply', () => lookupPath(store, 'diff', '/var/lib'), {
      errno: 'ENOENT',
    });
    assert.equal(lookupPath(store, 'diff', '/var').mode & S_IFDIR, S_IFDIR);

    const upperTree = await snapshotTree(store, 'upper');
    assertTreesEqual(await snapshotTree(store, 'diff'), upperTree, 'diff layer vs upper');
    assertChanges(
      await store.changes('diff', 'base'),
      await store.changes('upper', 'base'),
      'changes(diff) vs changes(upper)',
    );

    // Docker's Diff format: whiteouts as empty .wh. entries, a directory before its children.
    const entries = await parseTar(tarReadable(tarBytes));
    const tarNames = entries.map((e) => normalizeName(e.name));
    assert.deepEqual(
      [...tarNames].sort(),
      ['.wh.file-remove.txt', 'dir-b', 'dir-b/file-b', 'file-a', 'file-c', 'var', 'var/.wh.lib'],
      `diff tar entries: ${tarNames.join(', ')}`,
    );
    for (const e of entries) {
      const n = normalizeName(e.name);
      if (n.split('/').pop()!.startsWith('.wh.')) {
        assert.equal(e.type, 'file', `${n} is a regular file`);
        assert.equal(e.size, 0, `${n} is empty`);
      }
      const parent = n.includes('/') ? n.slice(0, n.lastIndexOf('/')) : '';
      if (parent)
        assert.ok(tarNames.indexOf(parent) < tarNames.indexOf(n), `${parent} comes before ${n}`);
    }
    assert.equal(
      entries.reduce((s, e) => s + e.size, 0),
      applied,
      'ApplyDiff Size is the sum of the tar headers sizes',
    );
  });

  it('Changes: an exact list (modify 0, add 1, delete 2) with parents as Modify and deletions at their top', async () => {
    const { store } = ts();
    await store.createLayer('base', null);
    mkdirp(store, 'base', '/etc/conf.d');
    await writeFile(store, 'base', '/etc/hosts', '127.0.0.1 localhost\n');
    await writeFile(store, 'base', '/etc/conf.d/a', 'a');
    mkdirp(store, 'base', '/usr/bin');
    await writeFile(store, 'base', '/usr/bin/tool', 'tool', { mode: 0o755 });
    mkdirp(store, 'base', '/var/lib/db/sub');
    await writeFile(store, 'base', '/var/lib/db/x', 'x');
    await writeFile(store, 'base', '/var/lib/db/sub/y', 'y');
    await writeFile(store, 'base', '/var/lib/keep', 'keep');
    mkdirp(store, 'base', '/home/user');
    await writeFile(store, 'base', '/home/user/.profile', 'PATH=/bin');
    mkdirp(store, 'base', '/opt/dir-to-file');
    await writeFile(store, 'base', '/opt/dir-to-file/c', 'c');
    await writeFile(store, 'base', '/opt/file-to-dir', 'f');
    mkdirp(store, 'base', '/srv/untouched');
    await writeFile(store, 'base', '/srv/untouched/file', 'same');
    const baseTree = await snapshotTree(store, 'base');

    await store.createLayer('upper', 'base');
    const u = 'upper';
    await writeFile(store, u, '/etc/hosts', '127.0.0.1 localhost lcfs\n');
    await writeFile(store, u, '/etc/conf.d/b', 'b');
    await store.setattr(u, lookupPath(store, u, '/usr/bin/tool').ino, { mode: 0o700 });
    removeTree(store, u, '/var/lib/db');
    mkdirp(store, u, '/newdir/sub');
    await writeFile(store, u, '/newdir/f', 'f');
    await writeFile(store, u, '/newdir/sub/g', 'g');
    {
      const { dir, name } = parentOf(store, u, '/opt/file-to-dir');
      store.unlink(u, dir, name);
      store.mkdir(u, dir, name, 0o755, ROOT);
      await writeFile(store, u, '/opt/file-to-dir/x', 'x');
    }
    removeTree(store, u, '/opt/dir-to-file');
    await writeFile(store, u, '/opt/dir-to-file', 'now a file');
    store.setxattr(
      u,
      lookupPath(store, u, '/home/user/.profile').ino,
      'user.note',
      Buffer.from('hello'),
    );

    const expected: Change[] = [
      { path: '/etc', kind: Kind.Modify },
      { path: '/etc/hosts', kind: Kind.Modify },
      { path: '/etc/conf.d', kind: Kind.Modify },
      { path: '/etc/conf.d/b', kind: Kind.Add },
      { path: '/usr', kind: Kind.Modify },
      { path: '/usr/bin', kind: Kind.Modify },
      { path: '/usr/bin/tool', kind: Kind.Modify },
      { path: '/var', kind: Kind.Modify },
      { path: '/var/lib', kind: Kind.Modify },
      { path: '/var/lib/db', kind: Kind.Delete },
      { path: '/newdir', kind: Kind.Add },
      { path: '/newdir/f', kind: Kind.Add },
      { path: '/newdir/sub', kind: Kind.Add },
      { path: '/newdir/sub/g', kind: Kind.Add },
      { path: '/opt', kind: Kind.Modify },
      { path: '/opt/file-to-dir', kind: Kind.Modify },
      { path: '/opt/file-to-dir/x', kind: Kind.Add },
      { path: '/opt/dir-to-file', kind: Kind.Modify },
      { path: '/home', kind: Kind.Modify },
      { path: '/home/user', kind: Kind.Modify },
      { path: '/home/user/.profile', kind: Kind.Modify },
    ];
    const actual = await store.changes('upper', 'base');
    assertChanges(actual, expected, 'changes(upper, base)');
    // The oracle agrees with the hand-written list (guards the oracle used by diff-oracle.test.ts).
    assert.deepEqual(
      expectedChanges(baseTree, await snapshotTree(store, 'upper')),
      sortChanges(expected),
    );
    for (const c of actual) assert.ok([0, 1, 2].includes(c.kind), `kind of ${c.path} is ${c.kind}`);
  });

  it('SetQuota: with a 50M quota, 25 MiB fits and 50 MiB more fails with ENOSPC', async () => {
    const { store } = ts();
    await store.createLayer('base', null);
    const info = await store.createLayer('rw', 'base', { quota: 50 << 20 });
    assert.equal(info.quota, 50 << 20);
    await writeFile(store, 'rw', '/first', Buffer.alloc(25 << 20, 1));
    const big = store.create('rw', store.root('rw'), 'second', 0o644, { uid: 0, gid: 0 });
    await expectStoreError(
      'writing 50 MiB more',
      async () => {
        for (let mib = 0; mib < 50; mib++) {
          await store.write('rw', big.ino, mib << 20, Buffer.alloc(1 << 20, 2));
        }
      },
      { errno: 'ENOSPC', code: 'LCFS_EQUOTA' },
    );
    // Freed space can be used again, and a layer without a quota has no limit.
    store.unlink('rw', store.root('rw'), 'first');
    await store.write('rw', big.ino, 40 << 20, Buffer.alloc(1 << 20, 3));
    await store.createLayer('free', 'base');
    await writeFile(store, 'free', '/big', Buffer.alloc(80 << 20, 4));
  });

  it('Changes of a base layer against no parent: every path is an Add', async () => {
    const { store } = ts();
    await store.createLayer('base', null);
    mkdirp(store, 'base', '/a/b');
    await writeFile(store, 'base', '/a/b/c', 'c');
    store.symlink('base', store.root('base'), 'l', 'a/b/c', ROOT);
    const actual = await store.changes('base', null);
    assertChanges(
      actual,
      ['/a', '/a/b', '/a/b/c', '/l'].map((path) => ({ path, kind: Kind.Add })),
      'changes(base, null)',
    );
    assert.equal(await store.diffSize('base', null), 1 + Buffer.byteLength('a/b/c'));
  });

  it('Changes and Diff against a grandparent walk both trees', async () => {
    const { store } = ts();
    await store.createLayer('base', null);
    mkdirp(store, 'base', '/d');
    await writeFile(store, 'base', '/d/old', 'old');
    await writeFile(store, 'base', '/keep', 'keep');
    await store.createLayer('mid', 'base');
    await writeFile(store, 'mid', '/d/mid', 'from mid');
    await writeFile(store, 'mid', '/keep', 'changed in mid');
    await store.createLayer('top', 'mid');
    await writeFile(store, 'top', '/d/mid', 'changed in top');
    store.unlink('top', lookupPath(store, 'top', '/d').ino, 'old');

    const baseTree = await snapshotTree(store, 'base');
    const topTree = await snapshotTree(store, 'top');
    const expected = expectedChanges(baseTree, topTree);
    assert.deepEqual(
      expected.map((c) => `${c.kind} ${c.path}`),
      ['0 /d', '1 /d/mid', '2 /d/old', '0 /keep'],
    );
    assertChanges(await store.changes('top', 'base'), expected, 'changes(top, base)');
    assert.equal(await store.diffSize('top', 'base'), expectedDiffSize(topTree, expected));

    await store.createLayer('copy', 'base');
    const size = await store.applyDiff('copy', 'base', store.diff('top', 'base'));
    assert.equal(size, Buffer.byteLength('changed in top') + Buffer.byteLength('changed in mid'));
    assertTreesEqual(
      await snapshotTree(store, 'copy'),
      topTree,
      'diff(top, base) applied onto base',
    );
  });
});
