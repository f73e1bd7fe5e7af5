/**
 * Copy-on-write, layer lifecycle and content-store guarantees of the LayerStore contract:
 * isolation of parent and siblings, frozen layers, removal rules, references, chunk-level copy-up
 * and content dedup (measured with `bytesWritten`).
 */
import assert from 'node:assert/strict';
import { buffer } from 'node:stream/consumers';
import { CHUNK_SIZE, type LayerStore } from '../../fs/layer-store.js';
import type { StoreErrorCode } from '../../fs/errors.js';
import {
  ROOT,
  S_IFDIR,
  S_IFIFO,
  S_IFREG,
  assertTreesEqual,
  buildTar,
  contentSha256,
  expectStoreError,
  headerSizeSum,
  labelledBytes,
  lookupPath,
  mkdirp,
  parentOf,
  readFile,
  readRange,
  removeTree,
  sha256Hex,
  snapshotTree,
  tarReadable,
  treeInvariantViolations,
  useTempStore,
  writeAt,
  writeFile,
  type TreeSnapshot,
} from './helpers/index.js';

const MiB = 1 << 20;
const FROZEN_CODES: StoreErrorCode[] = ['LCFS_ELAYER_FROZEN', 'LCFS_ENODE'];

/** A base layer with a bit of everything. */
async function buildSampleBase(store: LayerStore, id: string): Promise<void> {
  await store.createLayer(id, null);
  mkdirp(store, id, '/dir/sub');
  await writeFile(store, id, '/dir/f1', 'file one content');
  await writeFile(store, id, '/dir/f2', 'file two');
  await writeFile(store, id, '/dir/sub/f3', 'three', { caller: { uid: 7, gid: 8 } });
  const hl1 = await writeFile(store, id, '/hl1', 'hard linked');
  store.link(id, hl1.ino, store.root(id), 'hl2');
  store.symlink(id, store.root(id), 'sym', 'dir/f1', ROOT);
  const x = await writeFile(store, id, '/x', 'xattrs here');
  store.setxattr(id, x.ino, 'user.a', Buffer.from('1'));
  await writeFile(store, id, '/big', labelledBytes('sample big', 2 * MiB + MiB / 2));
  store.mknod(id, store.root(id), 'fifo', S_IFIFO | 0o644, 0, ROOT);
}

function assertInvariants(tree: TreeSnapshot, label: string): void {
  const v = treeInvariantViolations(tree);
  assert.ok(v.length === 0, `${label}: ${v.join('; ')}`);
}

describe('copy-on-write', function () {
  this.timeout(60_000);
  const ts = useTempStore();

  it('a change in a child never shows in the parent or in a sibling', async () => {
    const { store } = ts();
    await buildSampleBase(store, 'base');
    await store.createLayer('c1', 'base');
    await store.createLayer('c2', 'base');
    const baseBefore = await snapshotTree(store, 'base');
    assertInvariants(baseBefore, 'base');
    assertTreesEqual(await snapshotTree(store, 'c1'), baseBefore, 'fresh child c1 vs base', {
      dirMtime: true,
    });

    // c2 changes a few things first.
    await writeAt(store, 'c2', lookupPath(store, 'c2', '/big').ino, 0, Buffer.from('c2 was here'));
    store.unlink('c2', lookupPath(store, 'c2', '/dir').ino, 'f1');
    store.unlink('c2', store.root('c2'), 'hl2');
    const c2After = await snapshotTree(store, 'c2');

    // c1 changes everything it can.
    const c1 = 'c1';
    await writeAt(store, c1, lookupPath(store, c1, '/dir/f1').ino, 5, Buffer.from('ONE'));
    await store.setattr(c1, lookupPath(store, c1, '/big').ino, { size: MiB + 1234 });
    await writeAt(store, c1, lookupPath(store, c1, '/dir/f2').ino, 8, Buffer.from(' appended'));
    await store.setattr(c1, lookupPath(store, c1, '/dir').ino, { mode: 0o700 });
    await store.setattr(c1, lookupPath(store, c1, '/dir/sub/f3').ino, { uid: 1000, gid: 1001 });
    const xIno = lookupPath(store, c1, '/x').ino;
    await store.setattr(c1, xIno, { mtime: [1_000_000_000, 5], atime: [1_000_000_000, 6] });
    store.setxattr(c1, xIno, 'user.a', Buffer.from('2'));
    store.setxattr(c1, xIno, 'user.b', Buffer.from('new'));
    await writeAt(store, c1, lookupPath(store, c1, '/hl1').ino, 0, Buffer.from('HARD'));
    store.rename(c1, lookupPath(store, c1, '/dir').ino, 'sub', store.root(c1), 'moved');
    store.unlink(c1, store.root(c1), 'fifo');
    await writeFile(store, c1, '/new', 'new file');
    store.mkdir(c1, store.root(c1), 'newd', 0o755, ROOT);
    store.symlink(c1, store.root(c1), 'sym2', '/dir/f2', ROOT);
    store.link(
      c1,
      lookupPath(store, c1, '/dir/f2').ino,
      lookupPath(store, c1, '/dir').ino,
      'f2-link',
    );
    store.unlink(c1, store.root(c1), 'sym');

    // c1 sees its own changes…
    assert.equal((await readFile(store, c1, '/dir/f1')).toString(), 'file ONE content');
    assert.equal(lookupPath(store, c1, '/big').size, MiB + 1234);
    assert.equal((await readFile(store, c1, '/dir/f2')).toString(), 'file two appended');
    assert.equal(
      (await readFile(store, c1, '/hl2')).toString(),
      'HARD linked',
      'c1:/hl2 shares /hl1 (same ino)',
    );
    assert.equal(lookupPath(store, c1, '/moved/f3').uid, 1000);
    assert.equal(store.getxattr(c1, xIno, 'user.a').toString(), '2');
    assert.equal(lookupPath(store, c1, '/dir/f2').nlink, 2);
    const c1After = await snapshotTree(store, c1);
    assertInvariants(c1After, 'c1');

    // …and neither the parent nor the sibling does.
    assertTreesEqual(
      await snapshotTree(store, 'base'),
      baseBefore,
      'base after changes in c1 and c2',
      { dirMtime: true },
    );
    assertTreesEqual(await snapshotTree(store, 'c2'), c2After, 'c2 after changes in c1', {
      dirMtime: true,
    });
    assert.equal(lookupPath(store, 'base', '/hl1').nlink, 2, 'base:/hl1 keeps both links');
    assert.equal(lookupPath(store, 'c2', '/hl1').nlink, 1, 'c2:/hl1 lost its second link');
    assert.equal((await readFile(store, 'c2', '/hl1')).toString(), 'hard linked');

    // More changes in c2 leave c1 alone.
    await writeFile(store, 'c2', '/dir/f2', 'c2 rewrote f2');
    removeTree(store, 'c2', '/dir');
    assertTreesEqual(await snapshotTree(store, c1), c1After, 'c1 after more changes in c2', {
      dirMtime: true,
    });
    assertTreesEqual(await snapshotTree(store, 'base'), baseBefore, 'base at the end', {
      dirMtime: true,
    });
  });

  it('a child sees inherited nodes under the same ino, before and after copy-up', async () => {
    const { store } = ts();
    await buildSampleBase(store, 'base');
    await store.createLayer('child', 'base');
    for (const p of ['/dir', '/dir/f1', '/hl1', '/sym', '/big', '/fifo']) {
      assert.equal(
        lookupPath(store, 'child', p).ino,
        lookupPath(store, 'base', p).ino,
        `ino of ${p}`,
      );
    }
    assert.equal(store.root('child'), store.root('base'), 'root ino');
    const f1 = lookupPath(store, 'base', '/dir/f1');
    await writeAt(store, 'child', f1.ino, 0, Buffer.from('FILE'));
    assert.equal(lookupPath(store, 'child', '/dir/f1').ino, f1.ino, 'ino after copy-up');
    assert.equal((await store.read('child', f1.ino, 0, 4)).toString(), 'FILE');
    assert.equal((await store.read('base', f1.ino, 0, 4)).toString(), 'file');
    assert.equal(store.getattr('base', f1.ino).size, f1.size);
  });

  it('a 4 KiB write into an inherited 64 MiB file copies at most one chunk', async function () {
    this.timeout(120_000);
    const { store } = ts();
    const size = 64 * MiB;
    const content = labelledBytes('64 MiB', size);
    await store.createLayer('base', null);
    const before = store.bytesWritten;
    const file = await writeFile(store, 'base', '/large', content, { pieceSize: MiB });
    await store.flush();
    assert.ok(
      store.bytesWritten - before >= size,
      `writing 64 MiB of unique data grew bytesWritten by ${store.bytesWritten - before}`,
    );
    await store.createLayer('child', 'base');
    await store.flush();

    const offset = 32 * MiB + 100_000; // inside one chunk
    const patch = labelledBytes('patch', 4096);
    const start = store.bytesWritten;
    assert.equal(await store.write('child', file.ino, offset, patch), 4096);
    await store.flush();
    const grown = store.bytesWritten - start;
    assert.ok(grown > 0, 'the new chunk must reach the disk by flush');
    assert.ok(
      grown <= CHUNK_SIZE,
      `a 4 KiB write grew bytesWritten by ${grown} bytes (> CHUNK_SIZE ${CHUNK_SIZE})`,
    );

    const expected = Buffer.from(content);
    patch.copy(expected, offset);
    const around = await readRange(store, 'child', file.ino, offset - 10_000, 4096 + 20_000);
    assert.ok(
      around.equals(expected.subarray(offset - 10_000, offset + 4096 + 10_000)),
      'child reads the patch and its surroundings',
    );
    assert.equal(store.getattr('child', file.ino).size, size);
    assert.equal(
      await contentSha256(store, 'child', file.ino, size),
      sha256Hex(expected),
      'child content',
    );
    assert.equal(
      await contentSha256(store, 'base', file.ino, size),
      sha256Hex(content),
      'parent content unchanged',
    );
  });

  it('truncating an inherited multi-chunk file in a child: shrink then extend reads zeros; parent intact', async () => {
    const { store } = ts();
    const content = labelledBytes('trunc', 3 * MiB + 777);
    await store.createLayer('base', null);
    const f = await writeFile(store, 'base', '/f', content);
    await store.createLayer('child', 'base');
    const cut = MiB + 4321;
    await store.setattr('child', f.ino, { size: cut });
    assert.equal(store.getattr('child', f.ino).size, cut);
    await store.setattr('child', f.ino, { size: 3 * MiB });
    const got = await readFile(store, 'child', '/f');
    assert.equal(got.length, 3 * MiB);
    assert.ok(got.subarray(0, cut).equals(content.subarray(0, cut)), 'kept prefix');
    assert.ok(
      got.subarray(cut).equals(Buffer.alloc(3 * MiB - cut)),
      'extended region reads as zeros',
    );
    assert.ok((await readFile(store, 'base', '/f')).equals(content), 'parent unchanged');
  });
});

describe('layer lifecycle', function () {
  this.timeout(30_000);
  const ts = useTempStore();

  it('a frozen layer refuses every write with EROFS and still reads', async () => {
    const { store } = ts();
    await buildSampleBase(store, 'base');
    await store.freeze('base');
    assert.equal(store.layer('base').state, 'frozen');
    const before = await snapshotTree(store, 'base');
    const root = store.root('base');
    const f1 = lookupPath(store, 'base', '/dir/f1');
    const dir = lookupPath(store, 'base', '/dir');
    const x = lookupPath(store, 'base', '/x');
    const expectRofs = (what: string, fn: () => unknown) =>
      expectStoreError(what, fn, { errno: 'EROFS', code: FROZEN_CODES });
    await expectRofs('write', () => store.write('base', f1.ino, 0, Buffer.from('no')));
    await expectRofs('create', () => store.create('base', root, 'nope', S_IFREG | 0o644, ROOT));
    await expectRofs('mkdir', () => store.mkdir('base', root, 'nope', 0o755, ROOT));
    await expectRofs('mknod', () => store.mknod('base', root, 'nope', S_IFIFO | 0o644, 0, ROOT));
    await expectRofs('symlink', () => store.symlink('base', root, 'nope', 'x', ROOT));
    await expectRofs('link', () => store.link('base', f1.ino, root, 'nope'));
    await expectRofs('unlink', () => store.unlink('base', dir.ino, 'f1'));
    await expectRofs('rmdir', () => store.rmdir('base', dir.ino, 'sub'));
    await expectRofs('rename', () => store.rename('base', dir.ino, 'f1', root, 'f1'));
    await expectRofs('setattr size', () => store.setattr('base', f1.ino, { size: 0 }));
    await expectRofs('setattr mode', () => store.setattr('base', f1.ino, { mode: 0o600 }));
    await expectRofs('setattr mtime', () => store.setattr('base', f1.ino, { mtime: [1, 0] }));
    await expectRofs('setxattr', () => store.setxattr('base', x.ino, 'user.z', Buffer.from('z')));
    await expectRofs('removexattr', () => store.removexattr('base', x.ino, 'user.a'));
    const tar = await buildTar([{ name: 'added', content: 'x' }]);
    await expectRofs('applyDiff', () => store.applyDiff('base', null, tarReadable(tar)));
    assertTreesEqual(
      await snapshotTree(store, 'base'),
      before,
      'frozen layer after refused writes',
      { dirMtime: true },
    );
    assert.equal((await readFile(store, 'base', '/dir/f1')).toString(), 'file one content');
  });

  it('creating a child freezes the parent', async () => {
    const { store } = ts();
    await store.createLayer('base', null);
    await writeFile(store, 'base', '/f', 'x');
    assert.equal(store.layer('base').state, 'writable');
    await store.createLayer('child', 'base');
    assert.equal(store.layer('base').state, 'frozen');
    assert.equal(store.layer('child').state, 'writable');
    await expectStoreError('write to the parent', () => writeFile(store, 'base', '/f', 'y'), {
      errno: 'EROFS',
      code: FROZEN_CODES,
    });
    await writeFile(store, 'child', '/f', 'y');
    assert.equal((await readFile(store, 'base', '/f')).toString(), 'x');
  });

  it('refuses to remove a layer with children, and the store stays usable', async () => {
    const { store } = ts();
    await store.createLayer('base', null);
    await writeFile(store, 'base', '/f', 'base data');
    await store.createLayer('child', 'base');
    await writeFile(store, 'child', '/g', 'child data');
    await expectStoreError('removeLayer(base)', () => store.removeLayer('base'), {
      code: 'LCFS_ELAYER_HAS_CHILDREN',
      message: 'base',
    });
    assert.ok(store.exists('base'));
    assert.equal(store.layer('base').children, 1);
    assert.equal((await readFile(store, 'base', '/f')).toString(), 'base data');
    assert.equal((await readFile(store, 'child', '/f')).toString(), 'base data');
    assert.equal((await readFile(store, 'child', '/g')).toString(), 'child data');
    await store.createLayer('child2', 'base');
    assert.equal(store.layer('base').children, 2);
    await store.removeLayer('child');
    await store.removeLayer('child2');
    assert.equal(store.layer('base').children, 0);
    await store.removeLayer('base');
    assert.deepEqual(store.listLayers(), []);
    await expectStoreError('layer(base) after removal', () => store.layer('base'), {
      code: 'LCFS_ELAYER_NOT_FOUND',
    });
    await expectStoreError('root(child) after removal', () => store.root('child'), {
      code: 'LCFS_ELAYER_NOT_FOUND',
    });
    // The ids can be reused, and a re-created layer starts empty.
    await store.createLayer('base', null);
    assert.deepEqual(
      store.readdir('base', store.root('base')).filter((e) => e.name !== '.' && e.name !== '..'),
      [],
    );
  });

  it('counts references with get/put and refuses to remove a layer in use', async () => {
    const { store } = ts();
    await store.createLayer('rw', null);
    assert.equal(store.get('rw'), 1);
    assert.equal(store.get('rw'), 2);
    assert.equal(store.layer('rw').refs, 2);
    await expectStoreError('removeLayer with 2 refs', () => store.removeLayer('rw'), {
      code: 'LCFS_ELAYER_IN_USE',
      message: 'rw',
    });
    assert.equal(store.put('rw'), 1);
    await expectStoreError('removeLayer with 1 ref', () => store.removeLayer('rw'), {
      code: 'LCFS_ELAYER_IN_USE',
    });
    assert.equal(store.put('rw'), 0);
    assert.equal(store.layer('rw').refs, 0);
    await store.removeLayer('rw');
    assert.equal(store.exists('rw'), false);
    await expectStoreError('get on an unknown layer', () => store.get('rw'), {
      code: 'LCFS_ELAYER_NOT_FOUND',
    });
  });

  it('closes cleanly after files were truncated and unlinked, and reopens with the data', async () => {
    const t = ts();
    await t.store.createLayer('l', null);
    await writeFile(t.store, 'l', '/gone', labelledBytes('gone', 2 * MiB));
    await writeFile(t.store, 'l', '/cut', labelledBytes('cut', 2 * MiB));
    await writeFile(t.store, 'l', '/kept', 'kept');
    t.store.unlink('l', t.store.root('l'), 'gone');
    await t.store.setattr('l', lookupPath(t.store, 'l', '/cut').ino, { size: 10 });
    const before = await snapshotTree(t.store, 'l');
    const store = await t.reopen();
    assertTreesEqual(await snapshotTree(store, 'l'), before, 'layer after close and reopen', {
      dirMtime: true,
    });
  });

  it('reports bad layer ids, duplicates and unknown parents', async () => {
    const { store } = ts();
    await store.createLayer('a', null);
    await store.createLayer(
      '0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef-init',
      null,
    );
    await expectStoreError('duplicate id', () => store.createLayer('a', null), {
      code: 'LCFS_ELAYER_EXISTS',
      message: 'a',
    });
    await expectStoreError('unknown parent', () => store.createLayer('b', 'missing'), {
      code: 'LCFS_ELAYER_NOT_FOUND',
      message: 'missing',
    });
    assert.equal(store.exists('b'), false, 'a failed create leaves no layer');
    for (const bad of ['', '.', '..', 'a/b', '../x']) {
      await expectStoreError(
        `createLayer(${JSON.stringify(bad)})`,
        () => store.createLayer(bad, null),
        { code: 'LCFS_ELAYER_BAD_ID' },
      );
    }
    await expectStoreError('changes of an unknown layer', () => store.changes('nope', null), {
      code: 'LCFS_ELAYER_NOT_FOUND',
    });
    await expectStoreError('removeLayer of an unknown layer', () => store.removeLayer('nope'), {
      code: 'LCFS_ELAYER_NOT_FOUND',
    });
    const ids = store
      .listLayers()
      .map((l) => l.id)
      .sort();
    assert.equal(ids.length, 2);
    const indexes = new Set(store.listLayers().map((l) => l.index));
    assert.equal(indexes.size, 2, 'layer indexes are unique');
  });
});

describe('content store: chunks named by content', function () {
  this.timeout(60_000);
  const ts = useTempStore();

  it('stores identical content once: applying the same tar to a second layer writes ~0 bytes', async () => {
    const { store } = ts();
    const entries = [
      { name: 'app', type: 'directory' as const },
      { name: 'app/blob1', content: labelledBytes('dedup-1', 5 * MiB + 12345) },
      { name: 'app/blob2', content: labelledBytes('dedup-2', 3 * MiB) },
      ...Array.from({ length: 20 }, (_, i) => ({
        name: `app/small-${i}`,
        content: labelledBytes(`small-${i}`, 3000 + i),
      })),
    ];
    const tar = await buildTar(entries);
    const total = headerSizeSum(entries);

    await store.createLayer('one', null);
    await store.flush();
    const b0 = store.bytesWritten;
    assert.equal(await store.applyDiff('one', null, tarReadable(tar)), total);
    await store.flush();
    const first = store.bytesWritten - b0;
    assert.ok(
      first >= 8 * MiB,
      `first apply of ${total} bytes of unique content wrote only ${first} bytes`,
    );

    await store.createLayer('two', null);
    await store.flush();
    const b1 = store.bytesWritten;
    assert.equal(await store.applyDiff('two', null, tarReadable(tar)), total);
    await store.flush();
    const second = store.bytesWritten - b1;
    assert.ok(
      second < total / 100,
      `second apply of identical content wrote ${second} bytes (first wrote ${first})`,
    );
    assertTreesEqual(
      await snapshotTree(store, 'two'),
      await snapshotTree(store, 'one'),
      'layer two vs layer one',
    );
  });

  it('re-applying diff() output of a layer into a fresh layer writes < 1% of its size', async () => {
    const { store } = ts();
    await store.createLayer('x', null);
    mkdirp(store, 'x', '/data/deep');
    let size = 0;
    for (let i = 0; i < 4; i++) {
      const c = labelledBytes(`reapply-${i}`, 3 * MiB + 1000 * i);
      size += c.length;
      await writeFile(store, 'x', `/data/file-${i}`, c);
    }
    const odd = labelledBytes('odd writes', 2 * MiB + 5);
    size += odd.length;
    const f = store.create(
      'x',
      lookupPath(store, 'x', '/data/deep').ino,
      'odd',
      S_IFREG | 0o600,
      ROOT,
    );
    await writeAt(store, 'x', f.ino, 0, odd, 100_003); // unaligned pieces
    await store.flush();

    const tar = await buffer(store.diff('x', null));
    await store.createLayer('y', null);
    await store.flush();
    const b0 = store.bytesWritten;
    assert.equal(await store.applyDiff('y', null, tarReadable(tar)), size);
    await store.flush();
    const grown = store.bytesWritten - b0;
    assert.ok(grown < size / 100, `re-applying ${size} bytes wrote ${grown} bytes`);
    assertTreesEqual(await snapshotTree(store, 'y'), await snapshotTree(store, 'x'), 'y vs x');
  });
});

describe('copy-on-write: directory nodes', function () {
  this.timeout(30_000);
  const ts = useTempStore();

  it('renaming and replacing inherited directories in a child leaves the parent intact', async () => {
    const { store } = ts();
    await store.createLayer('base', null);
    mkdirp(store, 'base', '/a/b/c');
    await writeFile(store, 'base', '/a/b/c/f', 'deep');
    await writeFile(store, 'base', '/a/top', 'top');
    const before = await snapshotTree(store, 'base');
    await store.createLayer('child', 'base');
    store.rename('child', store.root('child'), 'a', store.root('child'), 'renamed');
    await writeFile(store, 'child', '/renamed/b/c/f', 'changed');
    store.mkdir('child', store.root('child'), 'a', 0o711, { uid: 5, gid: 5 });
    await writeFile(store, 'child', '/a/top', 'new top');
    const { dir, name } = parentOf(store, 'child', '/renamed/b');
    store.rename('child', dir, name, lookupPath(store, 'child', '/a').ino, 'b2');
    assert.equal((await readFile(store, 'child', '/a/b2/c/f')).toString(), 'changed');
    assert.equal(lookupPath(store, 'child', '/a').mode, S_IFDIR | 0o711);
    assertTreesEqual(await snapshotTree(store, 'base'), before, 'base', { dirMtime: true });
  });
});
