/**
 * applyDiff on hand-built layer tars (Docker's format: whiteouts, opaque directories, hard links,
 * devices, PAX xattrs), on hostile tars (each must be rejected, naming the entry, leaving the layer
 * exactly as it was and nothing written outside the store), and on a large streamed tar with
 * bounded memory.
 */
import assert from 'node:assert/strict';
import type { LayerStore } from '../../fs/layer-store.js';
import type { StoreError } from '../../fs/errors.js';
import {
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFREG,
  S_ISGID,
  S_ISUID,
  S_ISVTX,
  assertTreesEqual,
  buildTar,
  describeError,
  encodeUstarHeader,
  expectStoreError,
  fmtMode,
  generateTar,
  headerSizeSum,
  labelledBytes,
  lookupPath,
  makedev,
  outsideFingerprint,
  readFile,
  readRange,
  snapshotTree,
  tarReadable,
  useTempStore,
  writeFile,
  type TarEntrySpec,
} from './helpers/index.js';

const MiB = 1 << 20;
const T0 = new Date(1_600_000_000_000);

/** Applies `entries` to a new layer `id` on `parent`, checking the returned Size. */
async function applyEntries(
  store: LayerStore,
  id: string,
  parent: string | null,
  entries: TarEntrySpec[],
): Promise<void> {
  await store.createLayer(id, parent);
  const size = await store.applyDiff(id, parent, tarReadable(await buildTar(entries)));
  assert.equal(
    size,
    headerSizeSum(entries),
    `applyDiff(${id}) Size is the sum of the header sizes`,
  );
}

function names(store: LayerStore, id: string, path: string): string[] {
  return store
    .readdir(id, lookupPath(store, id, path).ino)
    .map((e) => e.name)
    .filter((n) => n !== '.' && n !== '..')
    .sort();
}

async function expectMissing(store: LayerStore, id: string, path: string): Promise<void> {
  await expectStoreError(`${id}:${path} should not exist`, () => lookupPath(store, id, path), {
    errno: 'ENOENT',
  });
}

describe('applyDiff: layer tars', function () {
  this.timeout(30_000);
  const ts = useTempStore();

  it('regular files and directories keep modes (setuid, setgid, sticky), owners and mtimes', async () => {
    const { store } = ts();
    const entries: TarEntrySpec[] = [
      { name: 'etc/', type: 'directory', mode: 0o755, mtime: T0 },
      {
        name: 'etc/conf',
        content: 'key=value\n',
        mode: 0o640,
        uid: 1234,
        gid: 5678,
        mtime: new Date(1_500_000_000_000),
      },
      { name: 'bin/', type: 'directory', mode: 0o711, uid: 2, gid: 3 },
      { name: 'bin/su', content: labelledBytes('su', 70_000), mode: 0o4755 },
      { name: 'bin/wall', content: 'wall', mode: 0o2755, gid: 5 },
      { name: 'tmp/', type: 'directory', mode: 0o1777 },
      { name: 'empty', content: '', mode: 0o600 },
      { name: 'big', content: labelledBytes('big', 2 * MiB + 3) },
    ];
    await applyEntries(store, 'l', null, entries);
    const conf = lookupPath(store, 'l', '/etc/conf');
    assert.equal(fmtMode(conf.mode), fmtMode(S_IFREG | 0o640));
    assert.deepEqual([conf.uid, conf.gid, conf.size], [1234, 5678, 10]);
    assert.deepEqual([...conf.mtime], [1_500_000_000, 0]);
    assert.equal((await readFile(store, 'l', '/etc/conf')).toString(), 'key=value\n');
    assert.equal(fmtMode(lookupPath(store, 'l', '/bin').mode), fmtMode(S_IFDIR | 0o711));
    assert.deepEqual(
      [lookupPath(store, 'l', '/bin').uid, lookupPath(store, 'l', '/bin').gid],
      [2, 3],
    );
    assert.equal(
      fmtMode(lookupPath(store, 'l', '/bin/su').mode),
      fmtMode(S_IFREG | S_ISUID | 0o755),
    );
    assert.ok((await readFile(store, 'l', '/bin/su')).equals(labelledBytes('su', 70_000)));
    assert.equal(
      fmtMode(lookupPath(store, 'l', '/bin/wall').mode),
      fmtMode(S_IFREG | S_ISGID | 0o755),
    );
    assert.equal(lookupPath(store, 'l', '/bin/wall').gid, 5);
    assert.equal(fmtMode(lookupPath(store, 'l', '/tmp').mode), fmtMode(S_IFDIR | S_ISVTX | 0o777));
    assert.equal(lookupPath(store, 'l', '/empty').size, 0);
    assert.ok((await readFile(store, 'l', '/big')).equals(labelledBytes('big', 2 * MiB + 3)));
    assert.deepEqual(names(store, 'l', '/'), ['big', 'bin', 'empty', 'etc', 'tmp']);
  });

  it('PAX mtimes keep nanoseconds; parents missing from the tar are created 0755 root:root', async () => {
    const { store } = ts();
    await applyEntries(store, 'l', null, [
      {
        name: 'deep/a/b/file',
        content: 'x',
        uid: 10,
        gid: 10,
        pax: { mtime: '1600000000.123456789' },
      },
    ]);
    const f = lookupPath(store, 'l', '/deep/a/b/file');
    assert.deepEqual([...f.mtime], [1_600_000_000, 123_456_789]);
    for (const p of ['/deep', '/deep/a', '/deep/a/b']) {
      const d = lookupPath(store, 'l', p);
      assert.equal(fmtMode(d.mode), fmtMode(S_IFDIR | 0o755), p);
      assert.deepEqual([d.uid, d.gid], [0, 0], p);
    }
  });

  it('hard links, within the tar and to a file of the parent layer', async () => {
    const { store } = ts();
    await applyEntries(store, 'base', null, [
      { name: 'lower', content: 'from the lower layer', mode: 0o600 },
    ]);
    await applyEntries(store, 'l', 'base', [
      { name: 'd/', type: 'directory' },
      // As Go's archive/tar writes them, link headers carry the attributes of the file they name.
      { name: 'd/f', content: 'linked content', mode: 0o751, uid: 3 },
      { name: 'd/g', type: 'link', linkname: 'd/f', mode: 0o751, uid: 3 },
      { name: 'h', type: 'link', linkname: 'd/f', mode: 0o751, uid: 3 },
      { name: 'lower-link', type: 'link', linkname: 'lower', mode: 0o600 },
    ]);
    const f = lookupPath(store, 'l', '/d/f');
    assert.equal(lookupPath(store, 'l', '/d/g').ino, f.ino);
    assert.equal(lookupPath(store, 'l', '/h').ino, f.ino);
    assert.equal(f.nlink, 3);
    assert.equal(fmtMode(lookupPath(store, 'l', '/h').mode), fmtMode(S_IFREG | 0o751));
    assert.equal((await readFile(store, 'l', '/h')).toString(), 'linked content');
    const lower = lookupPath(store, 'l', '/lower');
    assert.equal(lookupPath(store, 'l', '/lower-link').ino, lower.ino);
    assert.equal(lower.nlink, 2);
    assert.equal((await readFile(store, 'l', '/lower-link')).toString(), 'from the lower layer');
    assert.equal(lookupPath(store, 'base', '/lower').nlink, 1, 'the parent layer keeps one link');
  });

  it('symlinks: relative, absolute and dangling targets stored verbatim, with owners and mtimes', async () => {
    const { store } = ts();
    await applyEntries(store, 'l', null, [
      {
        name: 'rel',
        type: 'symlink',
        linkname: '../lib/x.so',
        uid: 7,
        gid: 8,
        mtime: new Date(1_400_000_000_000),
      },
      { name: 'abs', type: 'symlink', linkname: '/etc/passwd' },
      { name: 'up', type: 'symlink', linkname: '../..' },
    ]);
    const rel = lookupPath(store, 'l', '/rel');
    assert.equal(fmtMode(rel.mode & 0o170000), fmtMode(S_IFLNK));
    assert.equal(store.readlink('l', rel.ino), '../lib/x.so');
    assert.equal(rel.size, '../lib/x.so'.length);
    assert.deepEqual([rel.uid, rel.gid, rel.mtime[0]], [7, 8, 1_400_000_000]);
    assert.equal(store.readlink('l', lookupPath(store, 'l', '/abs').ino), '/etc/passwd');
    assert.equal(store.readlink('l', lookupPath(store, 'l', '/up').ino), '../..');
  });

  it('char, block and fifo devices', async () => {
    const { store } = ts();
    await applyEntries(store, 'l', null, [
      { name: 'dev/', type: 'directory' },
      { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
      { name: 'dev/sda1', type: 'block-device', devmajor: 8, devminor: 1, mode: 0o660, gid: 6 },
      { name: 'dev/nvme0n1p300', type: 'block-device', devmajor: 259, devminor: 300, mode: 0o660 },
      { name: 'dev/initctl', type: 'fifo', mode: 0o600 },
    ]);
    const n = lookupPath(store, 'l', '/dev/null');
    assert.equal(fmtMode(n.mode), fmtMode(S_IFCHR | 0o666));
    assert.equal(n.rdev, makedev(1, 3));
    const sda = lookupPath(store, 'l', '/dev/sda1');
    assert.equal(fmtMode(sda.mode), fmtMode(S_IFBLK | 0o660));
    assert.deepEqual([sda.rdev, sda.gid], [makedev(8, 1), 6]);
    assert.equal(lookupPath(store, 'l', '/dev/nvme0n1p300').rdev, makedev(259, 300));
    assert.equal(fmtMode(lookupPath(store, 'l', '/dev/initctl').mode), fmtMode(S_IFIFO | 0o600));
  });

  it('PAX xattrs, a binary security.capability included', async () => {
    const { store } = ts();
    // vfs_cap_data v2 (cap_setfcap+ep): has bytes >= 0x80, written raw as Go's archive/tar does.
    const cap = Buffer.from([
      0x01, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x80, 0, 0, 0, 0, 0x00, 0x00, 0x00, 0x80, 0, 0, 0,
      0,
    ]);
    await applyEntries(store, 'l', null, [
      { name: 'd/', type: 'directory', pax: { 'SCHILY.xattr.user.dir': 'on a dir' } },
      {
        name: 'd/ping',
        content: 'elf',
        mode: 0o755,
        binaryPax: {
          'SCHILY.xattr.security.capability': cap,
          'SCHILY.xattr.user.utf8': Buffer.from('héllo'),
        },
      },
    ]);
    const ping = lookupPath(store, 'l', '/d/ping');
    assert.deepEqual(store.listxattr('l', ping.ino).slice().sort(), [
      'security.capability',
      'user.utf8',
    ]);
    const got = store.getxattr('l', ping.ino, 'security.capability');
    assert.ok(
      got.equals(cap),
      `security.capability: expected ${cap.toString('hex')}, got ${got.toString('hex')}`,
    );
    assert.equal(store.getxattr('l', ping.ino, 'user.utf8').toString(), 'héllo');
    assert.equal(
      store.getxattr('l', lookupPath(store, 'l', '/d').ino, 'user.dir').toString(),
      'on a dir',
    );
    assert.equal((await readFile(store, 'l', '/d/ping')).toString(), 'elf');
  });

  it('whiteouts delete files and whole subtrees; a whiteout of a missing name is a no-op', async () => {
    const { store } = ts();
    await applyEntries(store, 'base', null, [
      { name: 'a/', type: 'directory' },
      { name: 'a/x', content: 'x' },
      { name: 'a/y', content: 'y' },
      { name: 'b/c/d', content: 'deep' },
      { name: 'keep', content: 'keep' },
    ]);
    const entries: TarEntrySpec[] = [
      { name: 'a/', type: 'directory' },
      { name: 'a/.wh.x' },
      { name: '.wh.b' },
      { name: '.wh.never-existed' },
    ];
    await applyEntries(store, 'l', 'base', entries);
    await expectMissing(store, 'l', '/a/x');
    await expectMissing(store, 'l', '/b');
    assert.deepEqual(names(store, 'l', '/'), ['a', 'keep']);
    assert.deepEqual(names(store, 'l', '/a'), ['y']);
    assert.deepEqual(names(store, 'base', '/a'), ['x', 'y'], 'the parent layer is untouched');
    assert.equal((await readFile(store, 'base', '/b/c/d')).toString(), 'deep');
  });

  it('opaque directories hide the lower layer but keep what the same tar put there', async () => {
    const { store } = ts();
    await applyEntries(store, 'base', null, [
      { name: 'd/old1', content: '1' },
      { name: 'd/sub/old2', content: '2' },
      { name: 'e/old3', content: '3' },
      { name: 'f/keep', content: 'f' },
    ]);
    await applyEntries(store, 'l', 'base', [
      { name: 'd/', type: 'directory', mode: 0o700 },
      { name: 'd/.wh..wh..opq' },
      { name: 'd/new', content: 'new' },
      { name: 'e/', type: 'directory' },
      { name: 'e/before-marker', content: 'b' },
      { name: 'e/.wh..wh..opq' },
    ]);
    assert.deepEqual(names(store, 'l', '/d'), ['new']);
    assert.equal(fmtMode(lookupPath(store, 'l', '/d').mode), fmtMode(S_IFDIR | 0o700));
    assert.deepEqual(names(store, 'l', '/e'), ['before-marker']);
    assert.deepEqual(names(store, 'l', '/f'), ['keep']);
    assert.deepEqual(names(store, 'base', '/d'), ['old1', 'sub']);
  });

  it('skips AUFS metadata (.wh..wh.* entries) but resolves hard links into .wh..wh.plnk', async () => {
    const { store } = ts();
    await applyEntries(store, 'l', null, [
      { name: '.wh..wh.plnk/', type: 'directory' },
      { name: '.wh..wh.plnk/123.456', content: 'aufs hard-link store', mode: 0o640 },
      { name: '.wh..wh.aufs', content: '' },
      { name: '.wh..wh.orph/', type: 'directory' },
      { name: 'real', content: 'real' },
      { name: 'linked', type: 'link', linkname: '.wh..wh.plnk/123.456', mode: 0o640 },
    ]);
    assert.deepEqual(names(store, 'l', '/'), ['linked', 'real']);
    assert.equal((await readFile(store, 'l', '/linked')).toString(), 'aufs hard-link store');
  });

  it('entries replace existing nodes: file over directory, directory over file, directory over directory', async () => {
    const { store } = ts();
    await applyEntries(store, 'base', null, [
      { name: 'dir-to-file/child', content: 'c' },
      { name: 'file-to-dir', content: 'f' },
      { name: 'dir/', type: 'directory', mode: 0o755 },
      { name: 'dir/kept', content: 'kept' },
      { name: 'file', content: 'old content', mode: 0o644 },
    ]);
    await applyEntries(store, 'l', 'base', [
      { name: 'dir-to-file', content: 'now a file' },
      { name: 'file-to-dir/', type: 'directory', mode: 0o750 },
      { name: 'file-to-dir/inside', content: 'i' },
      { name: 'dir/', type: 'directory', mode: 0o700, uid: 4 },
      { name: 'file', content: 'new', mode: 0o600 },
    ]);
    assert.equal((await readFile(store, 'l', '/dir-to-file')).toString(), 'now a file');
    assert.equal(fmtMode(lookupPath(store, 'l', '/file-to-dir').mode), fmtMode(S_IFDIR | 0o750));
    assert.deepEqual(names(store, 'l', '/file-to-dir'), ['inside']);
    const dir = lookupPath(store, 'l', '/dir');
    assert.deepEqual([fmtMode(dir.mode), dir.uid], [fmtMode(S_IFDIR | 0o700), 4]);
    assert.deepEqual(
      names(store, 'l', '/dir'),
      ['kept'],
      'a directory entry over a directory keeps its children',
    );
    const file = lookupPath(store, 'l', '/file');
    assert.deepEqual([fmtMode(file.mode), file.size], [fmtMode(S_IFREG | 0o600), 3]);
    assert.equal((await readFile(store, 'l', '/file')).toString(), 'new');
  });

  it("refuses a parent that is not the layer's parent, and unknown layers", async () => {
    const { store } = ts();
    await store.createLayer('base', null);
    await store.createLayer('other', null);
    await store.createLayer('l', 'base');
    const tar = await buildTar([{ name: 'f', content: 'x' }]);
    await expectStoreError(
      'applyDiff with the wrong parent',
      () => store.applyDiff('l', 'other', tarReadable(tar)),
      {
        code: 'LCFS_EPARENT_MISMATCH',
      },
    );
    await expectStoreError(
      'applyDiff to an unknown layer',
      () => store.applyDiff('nope', null, tarReadable(tar)),
      {
        code: 'LCFS_ELAYER_NOT_FOUND',
      },
    );
    await expectMissing(store, 'l', '/f');
  });
});

describe('applyDiff: hostile tars are rejected and leave no trace', function () {
  this.timeout(30_000);
  const ts = useTempStore();

  /** A base, and a writable child 'victim' that already holds changes of its own. */
  async function prepareVictim(store: LayerStore): Promise<void> {
    await applyEntries(store, 'base', null, [
      { name: 'etc/keep', content: 'keep' },
      { name: 'data/file', content: 'original' },
      { name: 'dir/sub/x', content: 'x' },
    ]);
    await store.createLayer('victim', 'base');
    await writeFile(store, 'victim', '/mine', 'written by the container');
  }

  /** Harmless entries first, so a store that applies as it reads has changed things before the bad entry. */
  const prelude: TarEntrySpec[] = [
    { name: 'good/', type: 'directory' },
    { name: 'good/new', content: labelledBytes('prelude', 300_000) },
    { name: '.wh.mine' },
    { name: 'data/file', content: 'overwritten' },
    { name: 'etc/', type: 'directory', mode: 0o700 },
    { name: 'dir/.wh..wh..opq' },
  ];

  async function expectRejected(tar: Buffer, check: (err: StoreError) => void): Promise<void> {
    const t = ts();
    const { store } = t;
    await prepareVictim(store);
    const before = await snapshotTree(store, 'victim');
    const infoBefore = store.layer('victim');
    const outsideBefore = await outsideFingerprint(t);
    const err = await expectStoreError('hostile applyDiff', () =>
      store.applyDiff('victim', 'base', tarReadable(tar)),
    );
    check(err);
    assertTreesEqual(
      await snapshotTree(store, 'victim'),
      before,
      'victim layer after the rejected apply',
      { dirMtime: true },
    );
    assert.deepEqual(store.layer('victim'), infoBefore, 'layer info unchanged');
    assert.deepEqual(
      await outsideFingerprint(t),
      outsideBefore,
      'nothing written outside the store dir',
    );
    // The layer still takes a good tar.
    const good: TarEntrySpec[] = [{ name: 'after', content: 'fine' }];
    assert.equal(await store.applyDiff('victim', 'base', tarReadable(await buildTar(good))), 4);
    assert.equal((await readFile(store, 'victim', '/after')).toString(), 'fine');
    assert.equal((await readFile(store, 'victim', '/mine')).toString(), 'written by the container');
  }

  function unsafe(entryName: string): (err: StoreError) => void {
    return (err) => {
      assert.ok(
        err.errno === 'EINVAL' || err.code === 'LCFS_ETAR_UNSAFE',
        `expected errno EINVAL or code LCFS_ETAR_UNSAFE, got ${describeError(err)}`,
      );
      assert.ok(
        err.message.includes(entryName),
        `the message should name ${JSON.stringify(entryName)}: ${describeError(err)}`,
      );
    };
  }

  const hostile: Array<[string, TarEntrySpec[], string]> = [
    ['a name climbing out: ../x', [{ name: '../x', content: 'escaped' }], '../x'],
    [
      'a name climbing out midway: a/../../x',
      [{ name: 'a/../../x', content: 'escaped' }],
      'a/../../x',
    ],
    [
      'an absolute name: /etc/passwd',
      [{ name: '/etc/passwd', content: 'root::0:0::/:/bin/sh\n' }],
      '/etc/passwd',
    ],
    [
      'a write through a symlink to /etc',
      [
        { name: 'link', type: 'symlink', linkname: '/etc' },
        { name: 'link/passwd', content: 'root::0:0::/:/bin/sh\n' },
      ],
      'link/passwd',
    ],
    [
      'a write through a symlink to ../..',
      [
        { name: 'link', type: 'symlink', linkname: '../..' },
        { name: 'link/x', content: 'escaped' },
      ],
      'link/x',
    ],
    [
      'a hard link to ../outside',
      [{ name: 'evil-hardlink', type: 'link', linkname: '../outside' }],
      'evil-hardlink',
    ],
  ];

  for (const [what, evil, entryName] of hostile) {
    it(`rejects ${what}`, async () => {
      const tar = await buildTar([
        ...prelude,
        ...evil,
        { name: 'trailer', content: 'after the bad entry' },
      ]);
      await expectRejected(tar, unsafe(entryName));
    });
  }

  it('rejects a write through a symlink to the directory next to the store', async () => {
    const tar = await buildTar([
      ...prelude,
      { name: 'canary-link', type: 'symlink', linkname: ts().canary },
      { name: 'canary-link/pwned', content: 'escaped' },
    ]);
    await expectRejected(tar, unsafe('canary-link/pwned'));
  });

  it('rejects a truncated tar (LCFS_ETAR_INVALID), naming the entry cut short', async () => {
    const whole = await buildTar([
      ...prelude,
      { name: 'victim-file', content: labelledBytes('cut', 200_000) },
    ]);
    // Cut in the middle of victim-file's body: its header is the last 512-byte block before its data.
    const bodyStart = whole.length - 1024 - Math.ceil(200_000 / 512) * 512;
    assert.equal(whole.subarray(bodyStart - 512, bodyStart - 512 + 11).toString(), 'victim-file');
    await expectRejected(whole.subarray(0, bodyStart + 50_000), (err) => {
      assert.equal(err.code, 'LCFS_ETAR_INVALID', describeError(err));
      assert.ok(
        err.message.includes('victim-file'),
        `the message should name victim-file: ${describeError(err)}`,
      );
    });
  });

  it('rejects a corrupt header (LCFS_ETAR_INVALID)', async () => {
    const good = await buildTar(prelude, { endOfArchive: false });
    const bad = encodeUstarHeader({ name: 'corrupt', typeflag: '0', size: 10 });
    bad[0] ^= 0xff; // checksum no longer matches
    const tar = Buffer.concat([good, bad, Buffer.alloc(512), Buffer.alloc(1024)]);
    await expectRejected(tar, (err) =>
      assert.equal(err.code, 'LCFS_ETAR_INVALID', describeError(err)),
    );
  });
});

describe('applyDiff: streaming with bounded memory', function () {
  this.timeout(180_000);
  const ts = useTempStore();

  it('applies a 512 MiB tar generated as a stream with RSS growth < 100 MiB', async () => {
    const { store } = ts();
    await store.createLayer('big', null);
    const gen = generateTar(8, 64 * MiB);
    const rssBefore = process.memoryUsage().rss;
    let peak = rssBefore;
    const sampler = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage().rss);
    }, 10);
    let size: number;
    try {
      size = await store.applyDiff('big', null, gen.stream);
    } finally {
      clearInterval(sampler);
    }
    peak = Math.max(peak, process.memoryUsage().rss);
    const growth = peak - rssBefore;
    assert.equal(size, gen.totalSize, 'Size');
    assert.ok(
      growth < 100 * MiB,
      `RSS grew by ${(growth / MiB).toFixed(1)} MiB while applying 512 MiB`,
    );
    for (const [file, chunk] of [
      [0, 0],
      [3, 17],
      [7, 63],
    ]) {
      const a = lookupPath(store, 'big', `/${gen.names[file]}`);
      assert.equal(a.size, 64 * MiB);
      const got = await readRange(store, 'big', a.ino, chunk * MiB, MiB);
      assert.ok(got.equals(gen.chunk(file, chunk)), `content of ${gen.names[file]} chunk ${chunk}`);
    }
  });
});
