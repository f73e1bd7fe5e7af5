/**
 * POSIX node operations through the LayerStore interface, with the errnos FUSE hands to callers.
 */
import assert from 'node:assert/strict';
import type { LayerStore } from '../../fs/layer-store.js';
import type { Caller } from '../../fs/types.js';
import {
  ROOT,
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFREG,
  S_ISGID,
  S_ISUID,
  S_ISVTX,
  expectStoreError,
  fmtMode,
  lookupPath,
  makedev,
  mkdirp,
  readFile,
  readRange,
  useTempStore,
  writeFile,
} from './helpers/index.js';

const MiB = 1 << 20;
const USER: Caller = { uid: 1000, gid: 1000 };
const L = 'layer';

function entryNames(store: LayerStore, dir: number): string[] {
  return store
    .readdir(L, dir)
    .map((e) => e.name)
    .filter((n) => n !== '.' && n !== '..')
    .sort();
}

describe('node operations (POSIX basics)', function () {
  this.timeout(30_000);
  const ts = useTempStore();
  let store: LayerStore;
  let root: number;
  beforeEach(async () => {
    store = ts().store;
    await store.createLayer(L, null);
    root = store.root(L);
  });

  describe('files', () => {
    it('create, write and read', async () => {
      const a = store.create(L, root, 'f', S_IFREG | 0o640, USER);
      assert.equal(fmtMode(a.mode), fmtMode(S_IFREG | 0o640));
      assert.deepEqual([a.uid, a.gid, a.size, a.nlink], [1000, 1000, 0, 1]);
      assert.equal(store.lookup(L, root, 'f').ino, a.ino);
      assert.equal(await store.write(L, a.ino, 0, Buffer.from('hello world')), 11);
      assert.equal(store.getattr(L, a.ino).size, 11);
      assert.equal((await store.read(L, a.ino, 0, 5)).toString(), 'hello');
      assert.equal(
        (await store.read(L, a.ino, 6, 100)).toString(),
        'world',
        'a read past EOF is short',
      );
      assert.equal((await store.read(L, a.ino, 11, 10)).length, 0);
      assert.equal((await store.read(L, a.ino, 1000, 10)).length, 0);
      assert.equal(await store.write(L, a.ino, 6, Buffer.from('WORLD')), 5);
      assert.equal((await readFile(store, L, '/f')).toString(), 'hello WORLD');
      assert.equal(await store.write(L, a.ino, 20, Buffer.from('!')), 1);
      assert.equal(store.getattr(L, a.ino).size, 21);
      const all = await readFile(store, L, '/f');
      assert.ok(
        all.equals(Buffer.concat([Buffer.from('hello WORLD'), Buffer.alloc(9), Buffer.from('!')])),
        'a hole reads as zeros',
      );
    });

    it('writes spanning chunk boundaries read back exactly', async () => {
      const a = store.create(L, root, 'f', S_IFREG | 0o644, ROOT);
      const data = Buffer.alloc(3 * MiB);
      for (let i = 0; i < data.length; i += 4) data.writeUInt32LE(i, i);
      assert.equal(await store.write(L, a.ino, 0, data), data.length);
      const patch = Buffer.alloc(5000, 0xab);
      await store.write(L, a.ino, MiB - 2500, patch);
      patch.copy(data, MiB - 2500);
      assert.ok((await readRange(store, L, a.ino, 0, 3 * MiB)).equals(data));
      assert.ok(
        (await store.read(L, a.ino, MiB - 3000, 6000)).equals(
          data.subarray(MiB - 3000, MiB + 3000),
        ),
      );
    });

    it('truncate: shrink then extend reads zeros', async () => {
      await writeFile(store, L, '/f', 'abcdefgh');
      const ino = lookupPath(store, L, '/f').ino;
      assert.equal((await store.setattr(L, ino, { size: 3 })).size, 3);
      assert.equal((await store.setattr(L, ino, { size: 8 })).size, 8);
      assert.ok((await readFile(store, L, '/f')).equals(Buffer.from('abc\0\0\0\0\0')));
      await store.setattr(L, ino, { size: 0 });
      assert.equal((await readFile(store, L, '/f')).length, 0);
    });

    it('write and truncate update mtime', async () => {
      const a = store.create(L, root, 'f', S_IFREG | 0o644, ROOT);
      await store.setattr(L, a.ino, { mtime: [1_000_000, 0] });
      const t0 = Math.floor(Date.now() / 1000) - 1;
      await store.write(L, a.ino, 0, Buffer.from('x'));
      assert.ok(store.getattr(L, a.ino).mtime[0] >= t0, 'write sets mtime to now');
      await store.setattr(L, a.ino, { mtime: [1_000_000, 0] });
      await store.setattr(L, a.ino, { size: 100 });
      assert.ok(store.getattr(L, a.ino).mtime[0] >= t0, 'truncate sets mtime to now');
    });

    it('unlink removes the name', async () => {
      await writeFile(store, L, '/f', 'x');
      store.unlink(L, root, 'f');
      await expectStoreError('lookup after unlink', () => store.lookup(L, root, 'f'), {
        errno: 'ENOENT',
      });
      assert.deepEqual(entryNames(store, root), []);
      await expectStoreError('unlink again', () => store.unlink(L, root, 'f'), { errno: 'ENOENT' });
    });
  });

  describe('directories', () => {
    it('mkdir and rmdir; ENOTEMPTY, ENOTDIR, ENOENT', async () => {
      const d = store.mkdir(L, root, 'd', 0o750, USER);
      assert.equal(fmtMode(d.mode), fmtMode(S_IFDIR | 0o750));
      assert.deepEqual([d.uid, d.gid], [1000, 1000]);
      await writeFile(store, L, '/d/f', 'x');
      await expectStoreError('rmdir non-empty', () => store.rmdir(L, root, 'd'), {
        errno: 'ENOTEMPTY',
      });
      await expectStoreError('rmdir a file', () => store.rmdir(L, d.ino, 'f'), {
        errno: 'ENOTDIR',
      });
      await expectStoreError('rmdir missing', () => store.rmdir(L, root, 'nope'), {
        errno: 'ENOENT',
      });
      await expectStoreError('unlink a directory', () => store.unlink(L, root, 'd'), {
        errno: 'EISDIR',
      });
      store.unlink(L, d.ino, 'f');
      store.rmdir(L, root, 'd');
      await expectStoreError('lookup after rmdir', () => store.lookup(L, root, 'd'), {
        errno: 'ENOENT',
      });
    });

    it('readdir lists names with the attributes getattr gives', async () => {
      mkdirp(store, L, '/d/e');
      await writeFile(store, L, '/d/f', 'abc');
      store.symlink(L, lookupPath(store, L, '/d').ino, 'l', 'f', ROOT);
      const entries = store
        .readdir(L, lookupPath(store, L, '/d').ino)
        .filter((e) => e.name !== '.' && e.name !== '..');
      assert.deepEqual(entries.map((e) => e.name).sort(), ['e', 'f', 'l']);
      for (const e of entries)
        assert.deepEqual(e.attr, store.getattr(L, e.attr.ino), `attr of ${e.name}`);
    });

    it('resolve walks slash-separated paths without following symlinks', async () => {
      mkdirp(store, L, '/a/b');
      await writeFile(store, L, '/a/b/f', 'x');
      store.symlink(L, root, 'link', 'a/b', ROOT);
      const f = lookupPath(store, L, '/a/b/f');
      assert.equal(store.resolve(L, '/a/b/f').ino, f.ino);
      assert.equal(store.resolve(L, 'a/b/f').ino, f.ino);
      assert.equal(store.resolve(L, '/').ino, root);
      assert.equal(
        store.resolve(L, '/link').mode & 0o170000,
        S_IFLNK,
        'the last component is not followed',
      );
      await expectStoreError('resolve through a symlink', () => store.resolve(L, '/link/f'), {
        errno: 'ENOTDIR',
      });
      await expectStoreError('resolve through a file', () => store.resolve(L, '/a/b/f/x'), {
        errno: 'ENOTDIR',
      });
      await expectStoreError('resolve missing', () => store.resolve(L, '/a/zz'), {
        errno: 'ENOENT',
      });
    });
  });

  describe('rename', () => {
    it('renames over an existing file, replacing it', async () => {
      const src = await writeFile(store, L, '/src', 'source');
      await writeFile(store, L, '/dst', 'destination');
      store.rename(L, root, 'src', root, 'dst');
      await expectStoreError('old name', () => store.lookup(L, root, 'src'), { errno: 'ENOENT' });
      const dst = store.lookup(L, root, 'dst');
      assert.equal(dst.ino, src.ino, 'the target name now points at the source node');
      assert.equal((await readFile(store, L, '/dst')).toString(), 'source');
      assert.deepEqual(entryNames(store, root), ['dst']);
    });

    it('moves files and directories across directories', async () => {
      mkdirp(store, L, '/a/sub');
      mkdirp(store, L, '/b');
      await writeFile(store, L, '/a/sub/f', 'f');
      const a = lookupPath(store, L, '/a').ino;
      const b = lookupPath(store, L, '/b').ino;
      store.rename(L, a, 'sub', b, 'moved');
      assert.equal((await readFile(store, L, '/b/moved/f')).toString(), 'f');
      assert.deepEqual(entryNames(store, a), []);
      store.rename(L, lookupPath(store, L, '/b/moved').ino, 'f', root, 'g');
      assert.equal((await readFile(store, L, '/g')).toString(), 'f');
    });

    it('renaming a hard link onto another link of the same file does nothing', async () => {
      const f = await writeFile(store, L, '/one', 'x');
      store.link(L, f.ino, root, 'two');
      store.rename(L, root, 'one', root, 'two');
      assert.deepEqual(entryNames(store, root), ['one', 'two']);
      assert.equal(store.getattr(L, f.ino).nlink, 2);
    });

    it('refuses bad renames with POSIX errnos', async () => {
      mkdirp(store, L, '/d/inner');
      mkdirp(store, L, '/full/x');
      mkdirp(store, L, '/empty');
      await writeFile(store, L, '/f', 'x');
      const d = lookupPath(store, L, '/d');
      const inner = lookupPath(store, L, '/d/inner');
      await expectStoreError(
        'file over a directory',
        () => store.rename(L, root, 'f', root, 'empty'),
        { errno: 'EISDIR' },
      );
      await expectStoreError('directory over a file', () => store.rename(L, root, 'd', root, 'f'), {
        errno: 'ENOTDIR',
      });
      await expectStoreError(
        'directory over a non-empty directory',
        () => store.rename(L, root, 'd', root, 'full'),
        {
          errno: 'ENOTEMPTY',
        },
      );
      await expectStoreError(
        'directory into itself',
        () => store.rename(L, root, 'd', inner.ino, 'loop'),
        { errno: 'EINVAL' },
      );
      await expectStoreError('missing source', () => store.rename(L, root, 'nope', root, 'x'), {
        errno: 'ENOENT',
      });
      store.rename(L, root, 'd', root, 'empty');
      assert.equal(
        lookupPath(store, L, '/empty').ino,
        d.ino,
        'a directory may replace an empty directory',
      );
      assert.deepEqual(entryNames(store, root), ['empty', 'f', 'full']);
    });
  });

  describe('links', () => {
    it('hard links share the node and count nlink', async () => {
      const f = await writeFile(store, L, '/f', 'shared');
      mkdirp(store, L, '/d');
      const l = store.link(L, f.ino, lookupPath(store, L, '/d').ino, 'g');
      assert.equal(l.ino, f.ino);
      assert.equal(l.nlink, 2);
      assert.equal(lookupPath(store, L, '/f').nlink, 2);
      await store.write(L, lookupPath(store, L, '/d/g').ino, 0, Buffer.from('SHARED'));
      assert.equal((await readFile(store, L, '/f')).toString(), 'SHARED');
      await expectStoreError('link onto an existing name', () => store.link(L, f.ino, root, 'd'), {
        errno: 'EEXIST',
      });
      await expectStoreError(
        'link a directory',
        () => store.link(L, lookupPath(store, L, '/d').ino, root, 'd2'),
        { errno: 'EPERM' },
      );
      store.unlink(L, root, 'f');
      assert.equal(lookupPath(store, L, '/d/g').nlink, 1);
      assert.equal((await readFile(store, L, '/d/g')).toString(), 'SHARED');
    });

    it('symlink and readlink', async () => {
      const s = store.symlink(L, root, 's', '../some/where', USER);
      assert.equal(fmtMode(s.mode), fmtMode(S_IFLNK | 0o777));
      assert.equal(s.size, Buffer.byteLength('../some/where'));
      assert.deepEqual([s.uid, s.gid], [1000, 1000]);
      assert.equal(store.readlink(L, s.ino), '../some/where');
      await writeFile(store, L, '/f', 'x');
      await expectStoreError(
        'readlink a file',
        () => store.readlink(L, lookupPath(store, L, '/f').ino),
        { errno: 'EINVAL' },
      );
      await expectStoreError(
        'symlink onto an existing name',
        () => store.symlink(L, root, 'f', 'x', ROOT),
        { errno: 'EEXIST' },
      );
    });

    it('mknod: fifo, char and block devices keep type and rdev', async () => {
      const fifo = store.mknod(L, root, 'fifo', S_IFIFO | 0o644, 0, ROOT);
      assert.equal(fmtMode(fifo.mode), fmtMode(S_IFIFO | 0o644));
      const null_ = store.mknod(L, root, 'null', S_IFCHR | 0o666, makedev(1, 3), ROOT);
      assert.equal(fmtMode(null_.mode), fmtMode(S_IFCHR | 0o666));
      assert.equal(null_.rdev, makedev(1, 3));
      const sda = store.mknod(L, root, 'sda1', S_IFBLK | 0o660, makedev(8, 1), { uid: 0, gid: 6 });
      assert.equal(fmtMode(sda.mode), fmtMode(S_IFBLK | 0o660));
      assert.deepEqual([sda.rdev, sda.gid], [makedev(8, 1), 6]);
      const nvme = store.mknod(L, root, 'nvme', S_IFBLK | 0o660, makedev(259, 300), ROOT);
      assert.equal(store.getattr(L, nvme.ino).rdev, makedev(259, 300));
      await expectStoreError(
        'mknod onto an existing name',
        () => store.mknod(L, root, 'fifo', S_IFIFO | 0o644, 0, ROOT),
        {
          errno: 'EEXIST',
        },
      );
    });
  });

  describe('attributes', () => {
    it('chmod, chown and utimens through setattr', async () => {
      const f = await writeFile(store, L, '/f', 'x');
      let a = await store.setattr(L, f.ino, { mode: 0o4755 });
      assert.equal(
        fmtMode(a.mode),
        fmtMode(S_IFREG | S_ISUID | 0o755),
        'chmod keeps the file type',
      );
      a = await store.setattr(L, f.ino, { mode: S_IFREG | S_ISGID | 0o600 });
      assert.equal(
        fmtMode(a.mode),
        fmtMode(S_IFREG | S_ISGID | 0o600),
        'chmod with the type bits, as FUSE passes it',
      );
      a = await store.setattr(L, f.ino, { uid: 123, gid: 456 });
      assert.deepEqual([a.uid, a.gid], [123, 456]);
      a = await store.setattr(L, f.ino, {
        atime: [1_500_000_000, 1],
        mtime: [1_600_000_000, 999_999_999],
      });
      assert.deepEqual([...a.mtime], [1_600_000_000, 999_999_999]);
      assert.deepEqual([...a.atime], [1_500_000_000, 1]);
      assert.deepEqual(store.getattr(L, f.ino), a, 'getattr agrees with what setattr returned');
      const d = store.mkdir(L, root, 'd', 0o755, ROOT);
      a = await store.setattr(L, d.ino, { mode: 0o1777 });
      assert.equal(fmtMode(a.mode), fmtMode(S_IFDIR | S_ISVTX | 0o777));
      const s = store.symlink(L, root, 's', 'f', ROOT);
      a = await store.setattr(L, s.ino, { uid: 9, gid: 9, mtime: [1_234_567_890, 0] });
      assert.deepEqual(
        [a.uid, a.gid, a.mtime[0]],
        [9, 9, 1_234_567_890],
        'lchown and lutimes on a symlink',
      );
      assert.equal(store.readlink(L, s.ino), 'f');
    });

    it('xattrs, security.capability included: set, get, list, remove', async () => {
      const f = await writeFile(store, L, '/f', 'x');
      const cap = Buffer.from([
        0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x80, 0, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0,
      ]);
      store.setxattr(L, f.ino, 'security.capability', cap);
      store.setxattr(L, f.ino, 'user.mime', Buffer.from('text/plain'));
      store.setxattr(L, f.ino, 'user.empty', Buffer.alloc(0));
      assert.ok(store.getxattr(L, f.ino, 'security.capability').equals(cap));
      assert.equal(store.getxattr(L, f.ino, 'user.empty').length, 0);
      assert.deepEqual(store.listxattr(L, f.ino).slice().sort(), [
        'security.capability',
        'user.empty',
        'user.mime',
      ]);
      store.setxattr(L, f.ino, 'user.mime', Buffer.from('application/json'));
      assert.equal(store.getxattr(L, f.ino, 'user.mime').toString(), 'application/json');
      store.removexattr(L, f.ino, 'security.capability');
      assert.deepEqual(store.listxattr(L, f.ino).slice().sort(), ['user.empty', 'user.mime']);
      await expectStoreError(
        'getxattr after remove',
        () => store.getxattr(L, f.ino, 'security.capability'),
        { errno: 'ENODATA' },
      );
      await expectStoreError(
        'removexattr missing',
        () => store.removexattr(L, f.ino, 'user.nope'),
        { errno: 'ENODATA' },
      );
      const d = store.mkdir(L, root, 'd', 0o755, ROOT);
      store.setxattr(L, d.ino, 'user.dir', Buffer.from('yes'));
      assert.deepEqual(store.listxattr(L, d.ino), ['user.dir']);
      assert.deepEqual(store.listxattr(L, f.ino).includes('user.dir'), false);
    });
  });

  describe('errnos', () => {
    it('ENOENT, EEXIST, ENOTDIR, EISDIR, ENAMETOOLONG', async () => {
      const f = await writeFile(store, L, '/f', 'x');
      const d = store.mkdir(L, root, 'd', 0o755, ROOT);
      await expectStoreError('lookup missing', () => store.lookup(L, root, 'missing'), {
        errno: 'ENOENT',
        message: 'missing',
      });
      await expectStoreError(
        'create existing',
        () => store.create(L, root, 'f', S_IFREG | 0o644, ROOT),
        { errno: 'EEXIST' },
      );
      await expectStoreError('mkdir existing', () => store.mkdir(L, root, 'f', 0o755, ROOT), {
        errno: 'EEXIST',
      });
      await expectStoreError(
        'mkdir over a directory',
        () => store.mkdir(L, root, 'd', 0o755, ROOT),
        { errno: 'EEXIST' },
      );
      await expectStoreError('lookup in a file', () => store.lookup(L, f.ino, 'x'), {
        errno: 'ENOTDIR',
      });
      await expectStoreError(
        'create in a file',
        () => store.create(L, f.ino, 'x', S_IFREG | 0o644, ROOT),
        { errno: 'ENOTDIR' },
      );
      await expectStoreError('readdir a file', () => store.readdir(L, f.ino), { errno: 'ENOTDIR' });
      await expectStoreError(
        'write a directory',
        () => store.write(L, d.ino, 0, Buffer.from('x')),
        { errno: 'EISDIR' },
      );
      await expectStoreError('truncate a directory', () => store.setattr(L, d.ino, { size: 0 }), {
        errno: 'EISDIR',
      });
      await expectStoreError(
        'name of 256 bytes',
        () => store.create(L, root, 'n'.repeat(256), S_IFREG | 0o644, ROOT),
        {
          errno: 'ENAMETOOLONG',
        },
      );
      store.create(L, root, 'n'.repeat(255), S_IFREG | 0o644, ROOT);
      await expectStoreError('getattr of an unknown ino', () => store.getattr(L, 987_654_321), {
        errno: 'ENOENT',
      });
    });

    it('fsync and statfs answer', async () => {
      const f = await writeFile(store, L, '/f', 'durable');
      await store.fsync(L, f.ino);
      const s = await store.statfs();
      assert.ok(
        s.bsize > 0 && s.blocks > 0 && s.bfree <= s.blocks && s.bavail <= s.blocks,
        JSON.stringify(s),
      );
      assert.ok(s.namelen >= 255, `namelen ${s.namelen}`);
    });
  });
});
