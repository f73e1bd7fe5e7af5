/**
 * POSIX semantics of the LCFS volume, through the real FUSE mount: Node's fs (async) and plain
 * shell tools in this process, the mount served by a separate volume process.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import {
  appendFile,
  chmod,
  chown,
  copyFile,
  link,
  lstat,
  mkdir,
  mkdtemp,
  open,
  readdir,
  readFile,
  readlink,
  rename,
  rm,
  rmdir,
  stat,
  statfs,
  symlink,
  truncate,
  unlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  S_IFSOCK,
} from '../fs/helpers/posix.js';
import { disposeAll, startVolume, type Volume } from './helpers/volume-process.js';
import { expectErrno, py, q, shFails, shOk, sleep, USER } from './helpers/shell.js';

const MiB = 1 << 20;

function sha(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

/** A temp dir outside the mount for building a tar. */
async function makeTarDir(): Promise<{ root: string; dir: string; tar: string }> {
  const root = await mkdtemp(join(tmpdir(), 'lcfs-fuse-tar-'));
  const dir = join(root, 'src');
  await mkdir(dir);
  return { root, dir, tar: join(root, 'layer.tar') };
}

/** stat -c FORMAT, one line per path. */
async function statc(format: string, ...paths: string[]): Promise<string[]> {
  const out = await shOk(`stat -c ${q(format)} -- ${paths.map(q).join(' ')}`);
  return out.trimEnd().split('\n');
}

describe('FUSE volume: POSIX semantics through the mount', function () {
  this.timeout(60_000);
  let vol: Volume;
  let mnt: string;
  /** The writable layer most tests work in. */
  let L: string;
  let seq = 0;
  /** A fresh directory in the writable layer, for one test. */
  const fresh = async (name: string): Promise<string> => {
    const dir = join(L, `${++seq}-${name}`);
    await mkdir(dir);
    return dir;
  };

  before(async function () {
    this.timeout(60_000);
    vol = await startVolume();
    mnt = vol.mountpoint;
    await vol.call('createLayer', 'posix', null);
    L = join(mnt, 'posix');
  });
  after(async function () {
    this.timeout(60_000);
    await disposeAll();
  });

  describe('lookup, getattr, readdir', () => {
    it('the mount root is a directory listing one directory per layer, with . and ..', async () => {
      const root = await stat(mnt);
      assert.ok(root.isDirectory());
      assert.ok((await readdir(mnt)).includes('posix'));
      const ls = (await shOk(`ls -a1 ${q(mnt)}`)).trimEnd().split('\n');
      assert.deepEqual(ls.slice(0, 2), ['.', '..']);
      assert.ok(ls.includes('posix'));
      const l = await stat(L);
      assert.ok(l.isDirectory());
      assert.equal(l.mode & 0o7777, 0o755);
      assert.equal(l.uid, 0);
      assert.equal(l.gid, 0);
    });

    it('readdir lists names with their types; . and .. resolve to the right inodes', async () => {
      const d = await fresh('readdir');
      await writeFile(join(d, 'a'), 'a');
      await writeFile(join(d, 'b'), 'bb');
      await mkdir(join(d, 's'));
      await symlink('a', join(d, 'l'));
      const entries = await readdir(d, { withFileTypes: true });
      const types = Object.fromEntries(
        entries.map((e) => [
          e.name,
          e.isFile() ? 'f' : e.isDirectory() ? 'd' : e.isSymbolicLink() ? 'l' : '?',
        ]),
      );
      assert.deepEqual(types, { a: 'f', b: 'f', s: 'd', l: 'l' });
      const ls = (await shOk(`ls -a1 ${q(d)}`)).trimEnd().split('\n');
      assert.deepEqual(ls, ['.', '..', 'a', 'b', 'l', 's']);

      const [dIno, dotIno, sDotDot, layerIno, dDotDot, rootIno, layerDotDot] = await statc(
        '%i',
        d,
        join(d, '.'),
        join(d, 's', '..'),
        L,
        join(d, '..'),
        mnt,
        join(L, '..'),
      );
      assert.equal(dotIno, dIno, 'd/. is d');
      assert.equal(sDotDot, dIno, 'd/s/.. is d');
      assert.equal(dDotDot, layerIno, 'd/.. is the layer root');
      assert.equal(layerDotDot, rootIno, '<layer>/.. is the mount root');

      // The inode numbers readdir gives (ls -i) are the ones stat gives.
      const listed = (await shOk(`cd ${q(d)} && ls -1id a b l s`)).trim().split('\n');
      const statted = await statc('%i', ...['a', 'b', 'l', 's'].map((n) => join(d, n)));
      assert.deepEqual(
        listed.map((l) => l.trim().split(/\s+/)[0]),
        statted,
      );
    });

    it('stat reports type, size, mode, owner and nlink; directories count their subdirectories', async () => {
      const d = await fresh('stat');
      await writeFile(join(d, 'f'), Buffer.alloc(12345, 7), { mode: 0o640 });
      await mkdir(join(d, 's1'));
      await mkdir(join(d, 's2'));
      const f = await stat(join(d, 'f'));
      assert.equal(f.mode & S_IFMT, S_IFREG);
      assert.equal(f.mode & 0o7777, 0o640);
      assert.equal(f.size, 12345);
      assert.equal(f.nlink, 1);
      assert.equal(f.uid, 0);
      assert.equal(f.gid, 0);
      assert.ok(f.blocks * 512 >= 12345, `st_blocks ${f.blocks} covers the size`);
      const ds = await stat(d);
      assert.equal(ds.mode & S_IFMT, S_IFDIR);
      assert.equal(ds.nlink, 4, 'a directory with two subdirectories has nlink 2 + 2');
      await rmdir(join(d, 's2'));
      assert.equal((await stat(d)).nlink, 3);
    });

    it('lookup of a missing name is ENOENT, and of a name under a file ENOTDIR', async () => {
      const d = await fresh('lookup');
      await writeFile(join(d, 'f'), 'x');
      await expectErrno('stat missing', stat(join(d, 'nope')), 'ENOENT');
      await expectErrno('stat f/x', stat(join(d, 'f', 'x')), 'ENOTDIR');
      await expectErrno('stat missing layer', stat(join(mnt, 'no-such-layer')), 'ENOENT');
    });

    it('a directory of 3000 entries lists each exactly once (readdir continues across calls)', async () => {
      const d = await fresh('big-dir');
      const names: string[] = [];
      for (let i = 0; i < 3000; i++)
        names.push(`entry-with-a-longish-name-${String(i).padStart(5, '0')}`);
      await shOk(
        `cd ${q(d)} && touch ${names.slice(0, 1500).join(' ')} && touch ${names.slice(1500).join(' ')}`,
      );
      const listed = await readdir(d);
      assert.equal(listed.length, 3000);
      assert.deepEqual([...listed].sort(), names);
      const count = (await shOk(`ls -1a ${q(d)} | wc -l`)).trim();
      assert.equal(count, '3002');
    });
  });

  describe('open and create', () => {
    it('O_CREAT|O_EXCL creates a new file and fails with EEXIST on an existing one (or a dangling symlink)', async () => {
      const d = await fresh('excl');
      const fh = await open(join(d, 'f'), 'wx');
      await fh.write('first');
      await fh.close();
      await expectErrno('O_EXCL on existing', open(join(d, 'f'), 'wx'), 'EEXIST');
      assert.equal(await readFile(join(d, 'f'), 'utf8'), 'first');
      await symlink('missing-target', join(d, 'dangling'));
      await expectErrno('O_EXCL on dangling symlink', open(join(d, 'dangling'), 'wx'), 'EEXIST');
      await expectErrno('target not created', lstat(join(d, 'missing-target')), 'ENOENT');
      // bash's noclobber uses O_EXCL too.
      await shFails(`set -C; echo x > ${q(join(d, 'f'))}`, 'cannot overwrite existing file');
    });

    it('O_CREAT without O_EXCL opens an existing file without truncating it', async () => {
      const d = await fresh('creat');
      await writeFile(join(d, 'f'), 'keep me');
      const fh = await open(join(d, 'f'), 'r+');
      await fh.close();
      const fh2 = await open(join(d, 'f'), 'a+');
      await fh2.close();
      assert.equal(await readFile(join(d, 'f'), 'utf8'), 'keep me');
    });

    it('O_TRUNC empties an existing file and bumps its mtime', async () => {
      const d = await fresh('trunc');
      const p = join(d, 'f');
      await writeFile(p, 'a long first content');
      await utimes(p, 1_000_000_000, 1_000_000_000);
      const fh = await open(p, 'w');
      const st = await fh.stat();
      assert.equal(st.size, 0);
      assert.ok(st.mtimeMs > 1_000_000_000_000, 'mtime moved on');
      await fh.write('hi');
      await fh.close();
      assert.equal(await readFile(p, 'utf8'), 'hi');
      assert.equal((await stat(p)).size, 2);
      await shOk(`echo -n short > ${q(p)}`);
      assert.equal(await readFile(p, 'utf8'), 'short');
    });

    it('O_APPEND writes at the end whatever position is asked, across handles', async () => {
      const d = await fresh('append');
      const p = join(d, 'f');
      await writeFile(p, 'start:');
      const a = await open(p, 'a');
      const b = await open(p, 'a');
      await a.write('A1', 0);
      await b.write('B1', 0);
      await a.write('A2', 2);
      await b.write('B2');
      await a.close();
      await b.close();
      assert.equal(await readFile(p, 'utf8'), 'start:A1B1A2B2');
      await appendFile(p, '+end');
      await shOk(`echo -n '+sh' >> ${q(p)}`);
      assert.equal(await readFile(p, 'utf8'), 'start:A1B1A2B2+end+sh');
    });

    it('new files and directories get the requested mode less the umask', async () => {
      const d = await fresh('umask');
      await shOk(
        `cd ${q(d)} && umask 077 && touch f600 && mkdir d700 && umask 022 && touch f644 && mkdir d755`,
      );
      const modes = await statc('%a', ...['f600', 'd700', 'f644', 'd755'].map((n) => join(d, n)));
      assert.deepEqual(modes, ['600', '700', '644', '755']);
      const fh = await open(join(d, 'explicit'), 'wx', 0o600);
      await fh.close();
      assert.equal((await stat(join(d, 'explicit'))).mode & 0o7777, 0o600);
    });
  });

  describe('read and write', () => {
    it('reads back 5 MiB of random data written in one go, and every slice of it', async () => {
      const d = await fresh('rw');
      const data = randomBytes(5 * MiB + 333);
      await writeFile(join(d, 'f'), data);
      const back = await readFile(join(d, 'f'));
      assert.equal(back.length, data.length);
      assert.equal(sha(back), sha(data));
      const fh = await open(join(d, 'f'), 'r');
      for (const [off, len] of [
        [0, 1],
        [MiB - 10, 20],
        [2 * MiB - 1, 2],
        [3 * MiB + 17, MiB + 5],
        [data.length - 7, 100],
      ]) {
        const buf = Buffer.alloc(len);
        const { bytesRead } = await fh.read(buf, 0, len, off);
        const want = data.subarray(off, off + len);
        assert.equal(bytesRead, want.length, `read(${off}, ${len})`);
        assert.ok(buf.subarray(0, bytesRead).equals(want), `read(${off}, ${len}) content`);
      }
      const past = await fh.read(Buffer.alloc(10), 0, 10, data.length + 100);
      assert.equal(past.bytesRead, 0, 'a read past EOF returns 0 bytes');
      await fh.close();
      assert.equal((await shOk(`sha256sum < ${q(join(d, 'f'))}`)).split(' ')[0], sha(data));
    });

    it('a write past EOF leaves a hole that reads as zeros', async () => {
      const d = await fresh('sparse');
      const p = join(d, 'f');
      const fh = await open(p, 'w+');
      await fh.write('head', 0);
      const far = 3 * MiB + 123;
      await fh.write('Z', far);
      assert.equal((await fh.stat()).size, far + 1);
      const all = Buffer.alloc(far + 1);
      const { bytesRead } = await fh.read(all, 0, all.length, 0);
      assert.equal(bytesRead, far + 1);
      assert.equal(all.subarray(0, 4).toString(), 'head');
      assert.ok(all.subarray(4, far).equals(Buffer.alloc(far - 4)), 'the hole reads as zeros');
      assert.equal(all[far], 'Z'.charCodeAt(0));
      // Filling part of the hole leaves the rest zero.
      await fh.write('mid', 2 * MiB - 1);
      await fh.close();
      const back = await readFile(p);
      assert.equal(back.subarray(2 * MiB - 1, 2 * MiB + 2).toString(), 'mid');
      assert.ok(back.subarray(4, 2 * MiB - 1).equals(Buffer.alloc(2 * MiB - 5)));
      assert.ok(back.subarray(2 * MiB + 2, far).equals(Buffer.alloc(far - 2 * MiB - 2)));
      // dd seek past EOF does the same.
      await shOk(`printf X | dd of=${q(join(d, 'dd'))} bs=1 seek=1500000 status=none`);
      const dd = await readFile(join(d, 'dd'));
      assert.equal(dd.length, 1_500_001);
      assert.ok(dd.subarray(0, 1_500_000).equals(Buffer.alloc(1_500_000)));
    });

    it('random overwrites at random offsets match an in-memory copy', async () => {
      const d = await fresh('overwrite');
      const p = join(d, 'f');
      let model = randomBytes(2 * MiB + 100);
      await writeFile(p, model);
      const fh = await open(p, 'r+');
      for (let i = 0; i < 200; i++) {
        const off = Math.floor(Math.random() * 3 * MiB);
        const len = 1 + Math.floor(Math.random() * (i % 10 === 0 ? 300_000 : 5000));
        const chunk = randomBytes(len);
        await fh.write(chunk, 0, len, off);
        if (off + len > model.length)
          model = Buffer.concat([model, Buffer.alloc(off + len - model.length)]);
        chunk.copy(model, off);
      }
      await fh.close();
      const back = await readFile(p);
      assert.equal(back.length, model.length);
      assert.ok(back.equals(model), 'content matches the model');
    });

    it('writes update mtime and ctime', async () => {
      const d = await fresh('mtime');
      const p = join(d, 'f');
      await writeFile(p, 'x');
      await utimes(p, 1_000_000_000, 1_000_000_000);
      const before = await stat(p, { bigint: true });
      await sleep(20);
      await appendFile(p, 'y');
      const after = await stat(p, { bigint: true });
      assert.ok(after.mtimeNs > before.mtimeNs, 'mtime moves on write');
      assert.ok(after.ctimeNs > before.ctimeNs, 'ctime moves on write');
    });
  });

  describe('truncate and ftruncate', () => {
    it('truncate shrinks, and extending again reads zeros where data was', async () => {
      const d = await fresh('truncate');
      const p = join(d, 'f');
      const data = randomBytes(100);
      await writeFile(p, data);
      await truncate(p, 10);
      assert.equal((await stat(p)).size, 10);
      assert.ok((await readFile(p)).equals(data.subarray(0, 10)));
      await truncate(p, 5000);
      const back = await readFile(p);
      assert.equal(back.length, 5000);
      assert.ok(back.subarray(0, 10).equals(data.subarray(0, 10)));
      assert.ok(
        back.subarray(10).equals(Buffer.alloc(4990)),
        'the extension reads zeros, not the old bytes',
      );
      await shOk(`truncate -s 0 ${q(p)}`);
      assert.equal((await stat(p)).size, 0);
    });

    it('ftruncate across chunk boundaries: shrink to 1.5 MiB, extend to 3 MiB', async () => {
      const d = await fresh('ftruncate');
      const p = join(d, 'f');
      const data = randomBytes(3 * MiB);
      await writeFile(p, data);
      const fh = await open(p, 'r+');
      await fh.truncate(1.5 * MiB);
      assert.equal((await fh.stat()).size, 1.5 * MiB);
      await fh.truncate(3 * MiB);
      const back = Buffer.alloc(3 * MiB);
      await fh.read(back, 0, back.length, 0);
      await fh.close();
      assert.ok(back.subarray(0, 1.5 * MiB).equals(data.subarray(0, 1.5 * MiB)));
      assert.ok(
        back.subarray(1.5 * MiB).equals(Buffer.alloc(1.5 * MiB)),
        'extended range reads zeros',
      );
      assert.ok((await readFile(p)).equals(back), 'a fresh open sees the same');
    });

    it('truncate moves mtime and ctime; extending an empty file gives zeros', async () => {
      const d = await fresh('truncate-times');
      const p = join(d, 'f');
      await writeFile(p, '');
      await utimes(p, 1_000_000_000, 1_000_000_000);
      const before = await stat(p, { bigint: true });
      await truncate(p, 4096);
      const after = await stat(p, { bigint: true });
      assert.ok(after.mtimeNs > before.mtimeNs);
      assert.ok(after.ctimeNs > before.ctimeNs);
      assert.ok((await readFile(p)).equals(Buffer.alloc(4096)));
    });
  });

  describe('mkdir, unlink, rmdir', () => {
    it('mkdir, then EEXIST; unlink and rmdir remove names; errors as on ext4', async () => {
      const d = await fresh('dirs');
      await mkdir(join(d, 'sub'), { mode: 0o750 });
      assert.equal((await stat(join(d, 'sub'))).mode & 0o7777, 0o750);
      await expectErrno('mkdir existing', mkdir(join(d, 'sub')), 'EEXIST');
      await writeFile(join(d, 'sub', 'f'), 'x');
      await expectErrno('mkdir over file', mkdir(join(d, 'sub', 'f')), 'EEXIST');
      await expectErrno('rmdir non-empty', rmdir(join(d, 'sub')), 'ENOTEMPTY');
      await expectErrno('rmdir file', rmdir(join(d, 'sub', 'f')), 'ENOTDIR');
      await expectErrno('unlink dir', unlink(join(d, 'sub')), 'EISDIR');
      await expectErrno('unlink missing', unlink(join(d, 'nope')), 'ENOENT');
      await unlink(join(d, 'sub', 'f'));
      await expectErrno('stat unlinked', stat(join(d, 'sub', 'f')), 'ENOENT');
      assert.deepEqual(await readdir(join(d, 'sub')), []);
      await rmdir(join(d, 'sub'));
      assert.deepEqual(await readdir(d), []);
      await expectErrno('stat removed dir', stat(join(d, 'sub')), 'ENOENT');
    });

    it('rm -rf removes a nested tree; the names can be created again', async () => {
      const d = await fresh('rmrf');
      await shOk(
        `cd ${q(d)} && mkdir -p t/a/b/c t/x && for i in $(seq 1 50); do echo $i > t/a/b/c/f$i; echo $i > t/x/g$i; done && ln -s a t/l`,
      );
      await shOk(`rm -rf ${q(join(d, 't'))}`);
      assert.deepEqual(await readdir(d), []);
      await mkdir(join(d, 't', 'a'), { recursive: true });
      await writeFile(join(d, 't', 'a', 'f1'), 'new');
      assert.equal(await readFile(join(d, 't', 'a', 'f1'), 'utf8'), 'new');
      assert.deepEqual(await readdir(join(d, 't', 'a')), ['f1']);
    });
  });

  describe('rename', () => {
    it('over an existing file: the target takes the source inode and content', async () => {
      const d = await fresh('rename-file');
      await writeFile(join(d, 'a'), 'AAA');
      await writeFile(join(d, 'b'), 'BBBBBB');
      const ino = (await stat(join(d, 'a'))).ino;
      await rename(join(d, 'a'), join(d, 'b'));
      await expectErrno('source gone', stat(join(d, 'a')), 'ENOENT');
      const b = await stat(join(d, 'b'));
      assert.equal(b.ino, ino);
      assert.equal(b.size, 3);
      assert.equal(await readFile(join(d, 'b'), 'utf8'), 'AAA');
      assert.deepEqual(await readdir(d), ['b']);
    });

    it('a directory over an empty directory succeeds; over a non-empty one ENOTEMPTY; type clashes fail', async () => {
      const d = await fresh('rename-dir');
      await mkdir(join(d, 'src'));
      await writeFile(join(d, 'src', 'inside'), 'i');
      await mkdir(join(d, 'empty'));
      await mkdir(join(d, 'full'));
      await writeFile(join(d, 'full', 'x'), 'x');
      await writeFile(join(d, 'file'), 'f');
      await expectErrno(
        'dir over non-empty dir',
        rename(join(d, 'src'), join(d, 'full')),
        'ENOTEMPTY',
      );
      await expectErrno('dir over file', rename(join(d, 'src'), join(d, 'file')), 'ENOTDIR');
      await expectErrno('file over dir', rename(join(d, 'file'), join(d, 'empty')), 'EISDIR');
      await expectErrno('dir into itself', rename(join(d, 'src'), join(d, 'src', 'sub')), 'EINVAL');
      await rename(join(d, 'src'), join(d, 'empty'));
      assert.equal(await readFile(join(d, 'empty', 'inside'), 'utf8'), 'i');
      assert.deepEqual((await readdir(d)).sort(), ['empty', 'file', 'full']);
      assert.equal((await stat(d)).nlink, 4, 'the parent lost one subdirectory');
    });

    it('a directory moved to another directory keeps its tree, and its .. follows', async () => {
      const d = await fresh('rename-across');
      await shOk(
        `cd ${q(d)} && mkdir -p a/moving/deep b && echo deep > a/moving/deep/f && echo top > a/moving/g`,
      );
      await rename(join(d, 'a', 'moving'), join(d, 'b', 'moved'));
      assert.deepEqual(await readdir(join(d, 'a')), []);
      assert.equal(await readFile(join(d, 'b', 'moved', 'deep', 'f'), 'utf8'), 'deep\n');
      assert.equal(await readFile(join(d, 'b', 'moved', 'g'), 'utf8'), 'top\n');
      const [bIno, dotdot] = await statc('%i', join(d, 'b'), join(d, 'b', 'moved', '..'));
      assert.equal(dotdot, bIno);
      assert.equal((await stat(join(d, 'a'))).nlink, 2);
      assert.equal((await stat(join(d, 'b'))).nlink, 3);
    });

    it('renaming one hard link onto another of the same inode does nothing', async () => {
      const d = await fresh('rename-same');
      await writeFile(join(d, 'a'), 'x');
      await link(join(d, 'a'), join(d, 'b'));
      await rename(join(d, 'a'), join(d, 'b'));
      assert.deepEqual((await readdir(d)).sort(), ['a', 'b']);
      assert.equal((await stat(join(d, 'a'))).nlink, 2);
    });

    it('rename and link across layers fail with EXDEV; mv falls back to a copy', async () => {
      await vol.call('createLayer', 'posix-other', null);
      const other = join(mnt, 'posix-other');
      const d = await fresh('exdev');
      await writeFile(join(d, 'f'), 'cross');
      await expectErrno('rename across layers', rename(join(d, 'f'), join(other, 'f')), 'EXDEV');
      await expectErrno('link across layers', link(join(d, 'f'), join(other, 'f')), 'EXDEV');
      await shOk(`mv ${q(join(d, 'f'))} ${q(join(other, 'moved'))}`);
      assert.equal(await readFile(join(other, 'moved'), 'utf8'), 'cross');
      await expectErrno('moved away', stat(join(d, 'f')), 'ENOENT');
    });
  });

  describe('links', () => {
    it('link shares the inode; nlink counts names; writes show through every name', async () => {
      const d = await fresh('link');
      await writeFile(join(d, 'a'), 'one');
      await mkdir(join(d, 'sub'));
      await link(join(d, 'a'), join(d, 'b'));
      await link(join(d, 'a'), join(d, 'sub', 'c'));
      const [a, b, c] = await Promise.all(['a', 'b', 'sub/c'].map((n) => stat(join(d, n))));
      assert.equal(a.nlink, 3);
      assert.equal(b.ino, a.ino);
      assert.equal(c.ino, a.ino);
      assert.equal(c.nlink, 3);
      await writeFile(join(d, 'b'), 'two');
      assert.equal(await readFile(join(d, 'sub', 'c'), 'utf8'), 'two');
      await unlink(join(d, 'a'));
      assert.equal((await stat(join(d, 'b'))).nlink, 2);
      await unlink(join(d, 'sub', 'c'));
      assert.equal((await stat(join(d, 'b'))).nlink, 1);
      assert.equal(await readFile(join(d, 'b'), 'utf8'), 'two');
      await expectErrno('link to an existing name', link(join(d, 'b'), join(d, 'sub')), 'EEXIST');
      await expectErrno('link a directory', link(join(d, 'sub'), join(d, 'sub2')), 'EPERM');
    });
  });

  describe('symlinks', () => {
    it('symlink and readlink; lstat shows the link, stat follows it', async () => {
      const d = await fresh('symlink');
      await mkdir(join(d, 'dir'));
      await writeFile(join(d, 'dir', 'file'), 'through');
      await symlink('dir/file', join(d, 'rel'));
      await symlink(join(d, 'dir'), join(d, 'abs'));
      await symlink('nowhere', join(d, 'dangling'));
      await symlink('loop2', join(d, 'loop1'));
      await symlink('loop1', join(d, 'loop2'));
      const long = 'x/'.repeat(1500) + 'end';
      await symlink(long, join(d, 'long'));
      assert.equal(await readlink(join(d, 'rel')), 'dir/file');
      assert.equal(await readlink(join(d, 'long')), long);
      const ls = await lstat(join(d, 'rel'));
      assert.equal(ls.mode & S_IFMT, S_IFLNK);
      assert.equal(ls.size, 'dir/file'.length);
      assert.equal((await stat(join(d, 'rel'))).mode & S_IFMT, S_IFREG);
      assert.equal(await readFile(join(d, 'rel'), 'utf8'), 'through');
      assert.equal(await readFile(join(d, 'abs', 'file'), 'utf8'), 'through');
      await expectErrno('stat dangling', stat(join(d, 'dangling')), 'ENOENT');
      await expectErrno('stat loop', stat(join(d, 'loop1')), 'ELOOP');
      await expectErrno('symlink over existing', symlink('x', join(d, 'rel')), 'EEXIST');
      await expectErrno('readlink on a file', readlink(join(d, 'dir', 'file')), 'EINVAL');
    });
  });

  describe('special files', () => {
    it('mkfifo makes a FIFO that works as a pipe', async () => {
      const d = await fresh('fifo');
      const p = join(d, 'p');
      await shOk(`mkfifo -m 0640 ${q(p)}`);
      assert.deepEqual(await statc('%F %a', p), ['fifo 640']);
      assert.equal((await lstat(p)).mode & S_IFMT, S_IFIFO);
      const out = await shOk(`(echo through-the-fifo > ${q(p)} &) ; timeout 10 cat ${q(p)}`);
      assert.equal(out, 'through-the-fifo\n');
    });

    it('mknod makes character and block devices with their numbers, and they work (mount has dev)', async () => {
      const d = await fresh('devices');
      await shOk(
        `cd ${q(d)} && mknod null c 1 3 && mknod zero c 1 5 && mknod loop b 7 0 && mknod big c 259 70000 && chmod 666 null`,
      );
      assert.deepEqual(
        await statc('%F %t %T', join(d, 'null'), join(d, 'zero'), join(d, 'loop'), join(d, 'big')),
        [
          'character special file 1 3',
          'character special file 1 5',
          'block special file 7 0',
          'character special file 103 11170',
        ],
      );
      assert.equal((await lstat(join(d, 'zero'))).mode & S_IFMT, S_IFCHR);
      assert.equal((await lstat(join(d, 'loop'))).mode & S_IFMT, S_IFBLK);
      assert.equal(
        await shOk(`head -c 8 ${q(join(d, 'zero'))} | od -An -tx1 | tr -d ' \\n'`),
        '0000000000000000',
      );
      await shOk(`echo discarded > ${q(join(d, 'null'))}`);
      assert.equal((await readFile(join(d, 'null'))).length, 0);
    });

    it('a unix socket can be bound inside the mount', async () => {
      const d = await fresh('socket');
      await py(
        `import socket\ns = socket.socket(socket.AF_UNIX)\ns.bind(${JSON.stringify(join(d, 'sock'))})\ns.close()`,
      );
      assert.equal((await lstat(join(d, 'sock'))).mode & S_IFMT, S_IFSOCK);
    });
  });

  describe('ownership, modes and times', () => {
    it('chmod changes the mode and ctime but not mtime', async () => {
      const d = await fresh('chmod');
      const p = join(d, 'f');
      await writeFile(p, 'x');
      const before = await stat(p, { bigint: true });
      await sleep(20);
      await chmod(p, 0o604);
      const after = await stat(p, { bigint: true });
      assert.equal(Number(after.mode) & 0o7777, 0o604);
      assert.ok(after.ctimeNs > before.ctimeNs, `ctime ${after.ctimeNs} > ${before.ctimeNs}`);
      assert.equal(after.mtimeNs, before.mtimeNs);
      await shOk(`chmod 4755 ${q(p)}`);
      assert.deepEqual(await statc('%a', p), ['4755']);
      await shOk(`chmod 1777 ${q(d)}`);
      assert.deepEqual(await statc('%a', d), ['1777']);
    });

    it('chown changes owner and group (and, on a file, clears setuid/setgid as on ext4)', async () => {
      const d = await fresh('chown');
      const p = join(d, 'f');
      await writeFile(p, 'x');
      await chown(p, 1234, 5678);
      const st = await stat(p);
      assert.equal(st.uid, 1234);
      assert.equal(st.gid, 5678);
      await chmod(p, 0o6755);
      await chown(p, 0, 0);
      assert.deepEqual(await statc('%u %g %a', p), ['0 0 755']);
      await mkdir(join(d, 'sub'));
      await chmod(join(d, 'sub'), 0o2775);
      await chown(join(d, 'sub'), 42, 43);
      assert.deepEqual(
        await statc('%u %g %a', join(d, 'sub')),
        ['42 43 2775'],
        'a directory keeps its setgid bit',
      );
      await shOk(
        `chown -h 7:8 ${q(d)} && ln -s f ${q(join(d, 'l'))} && chown -h 9:10 ${q(join(d, 'l'))}`,
      );
      assert.deepEqual(
        await statc('%u %g', join(d, 'l'), p),
        ['9 10', '0 0'],
        'chown -h changes the link only',
      );
    });

    it('utimes sets atime and mtime to the nanosecond; touch -a / -m change only one', async () => {
      const d = await fresh('times');
      const p = join(d, 'f');
      await writeFile(p, 'x');
      await utimes(p, 1_000_000_000.5, 1_200_000_000.25);
      let st = await stat(p, { bigint: true });
      assert.equal(st.atimeNs, 1_000_000_000_500_000_000n);
      assert.equal(st.mtimeNs, 1_200_000_000_250_000_000n);
      await shOk(`touch -d '2001-02-03 04:05:06.123456789 UTC' ${q(p)}`);
      assert.deepEqual(await statc('%X.%x|%Y', p), [
        `981173106.2001-02-03 04:05:06.123456789 +0000|981173106`,
      ]);
      await shOk(`touch -a -d '2010-01-01 00:00:01.000000001 UTC' ${q(p)}`);
      st = await stat(p, { bigint: true });
      assert.equal(st.atimeNs, 1_262_304_001_000_000_001n, 'touch -a sets atime');
      assert.equal(st.mtimeNs, 981_173_106_123_456_789n, 'touch -a leaves mtime');
      await shOk(`touch -m -d '2012-06-01 12:00:00.5 UTC' ${q(p)}`);
      st = await stat(p, { bigint: true });
      assert.equal(st.mtimeNs, 1_338_552_000_500_000_000n, 'touch -m sets mtime');
      assert.equal(st.atimeNs, 1_262_304_001_000_000_001n, 'touch -m leaves atime');
      // touch with no date: both become now (UTIME_NOW), only mtime with -m.
      const t0 = BigInt(Date.now() - 2000) * 1_000_000n;
      await shOk(`touch -m ${q(p)}`);
      st = await stat(p, { bigint: true });
      assert.ok(st.mtimeNs > t0, 'touch -m: mtime is now');
      assert.equal(st.atimeNs, 1_262_304_001_000_000_001n, 'touch -m (now) leaves atime');
      await shOk(`touch ${q(p)}`);
      st = await stat(p, { bigint: true });
      assert.ok(st.atimeNs > t0 && st.mtimeNs > t0, 'touch: both are now');
      // futimes through a handle.
      const fh = await open(p, 'r+');
      await fh.utimes(1_111_111_111, 1_222_222_222);
      await fh.close();
      st = await stat(p, { bigint: true });
      assert.equal(st.atimeNs, 1_111_111_111_000_000_000n);
      assert.equal(st.mtimeNs, 1_222_222_222_000_000_000n);
      // and on a directory and (without following) a symlink
      await shOk(
        `ln -s f ${q(join(d, 'l'))} && touch -d '@1300000000' ${q(d)} && touch -h -d '@1400000000' ${q(join(d, 'l'))}`,
      );
      assert.deepEqual(await statc('%Y', d, join(d, 'l'), p), [
        '1300000000',
        '1400000000',
        '1222222222',
      ]);
    });
  });

  describe('extended attributes', () => {
    it('set, get, list and remove user xattrs, binary and large values included', async () => {
      const d = await fresh('xattr');
      const p = join(d, 'f');
      await writeFile(p, 'x');
      await shOk(
        `setfattr -n user.alpha -v one ${q(p)} && setfattr -n user.beta -v 0x00ff10 ${q(p)}`,
      );
      assert.equal(await shOk(`getfattr --only-values -n user.alpha ${q(p)}`), 'one');
      assert.equal(
        await shOk(`getfattr -e hex -n user.beta ${q(p)} | grep beta`),
        'user.beta=0x00ff10\n',
      );
      const names = (
        await shOk(`getfattr -d -m '' --absolute-names ${q(p)} | grep -v '^#' | cut -d= -f1 | sort`)
      ).trim();
      assert.deepEqual(names.split('\n'), ['user.alpha', 'user.beta']);
      const big = randomBytes(16 * 1024)
        .toString('hex')
        .slice(0, 30000);
      const out = await py(
        [
          `p = ${JSON.stringify(p)}`,
          `os.setxattr(p, 'user.big', ${JSON.stringify(big)}.encode())`,
          `print(os.getxattr(p, 'user.big').decode() == ${JSON.stringify(big)})`,
          `print(errno_of(os.setxattr, p, 'user.alpha', b'x', os.XATTR_CREATE))`,
          `print(errno_of(os.setxattr, p, 'user.nope', b'x', os.XATTR_REPLACE))`,
          `os.setxattr(p, 'user.alpha', b'two', os.XATTR_REPLACE)`,
          `print(os.getxattr(p, 'user.alpha'))`,
          `print(errno_of(os.getxattr, p, 'user.missing'))`,
          `print(errno_of(os.removexattr, p, 'user.missing'))`,
          `os.removexattr(p, 'user.beta')`,
          `print(sorted(os.listxattr(p)))`,
          `os.setxattr(p, 'user.empty', b'')`,
          `print(repr(os.getxattr(p, 'user.empty')))`,
        ].join('\n'),
      );
      assert.equal(
        out,
        `True\nEEXIST\nENODATA\nb'two'\nENODATA\nENODATA\n['user.alpha', 'user.big']\nb''\n`,
      );
    });

    it('xattrs on directories, and trusted.* as root; a non-root user cannot set trusted.*', async () => {
      const d = await fresh('xattr-dir');
      await shOk(`setfattr -n user.d -v dirval ${q(d)} && setfattr -n trusted.t -v secret ${q(d)}`);
      assert.equal(await shOk(`getfattr --only-values -n user.d ${q(d)}`), 'dirval');
      assert.equal(await shOk(`getfattr --only-values -n trusted.t ${q(d)}`), 'secret');
      await chmod(d, 0o777);
      await writeFile(join(d, 'mine'), 'x');
      await chown(join(d, 'mine'), USER.uid, USER.gid);
      await shFails(
        `setfattr -n trusted.x -v y ${q(join(d, 'mine'))}`,
        'Operation not permitted',
        USER,
      );
      await shOk(`setfattr -n user.ok -v y ${q(join(d, 'mine'))}`, USER);
      assert.equal(await shOk(`getfattr --only-values -n user.ok ${q(join(d, 'mine'))}`), 'y');
    });

    it('security.capability: setcap/getcap round trip, and a write drops it as on ext4', async () => {
      const d = await fresh('caps');
      const p = join(d, 'ping');
      await copyFile('/usr/bin/true', p);
      await chmod(p, 0o755);
      await shOk(`setcap cap_net_raw,cap_net_bind_service+ep ${q(p)}`);
      assert.match(await shOk(`getcap ${q(p)}`), /cap_net_bind_service,cap_net_raw[=+]ep/);
      const hex = await shOk(`getfattr -e hex -n security.capability ${q(p)} | grep security`);
      assert.match(hex, /^security\.capability=0x0[12]0000/);
      assert.ok(
        (await shOk(`getfattr -d -m - ${q(p)}`)).includes('security.capability'),
        'listxattr shows it',
      );
      // A capability-bearing binary still runs.
      await shOk(`${q(p)}`);
      // Writing to the file strips the capability (the kernel asks the filesystem to remove it).
      await appendFile(p, Buffer.alloc(0));
      const fh = await open(p, 'r+');
      await fh.write(Buffer.from([0x7f]), 0, 1, 0);
      await fh.close();
      assert.equal(await shOk(`getcap ${q(p)}`), '', 'capability removed by a write');
      // setfattr with a raw value works too.
      await shOk(`setfattr -n security.capability -v 0sAQAAAgAgAAAAAAAAAAAAAAAAAAA= ${q(p)}`);
      assert.match(await shOk(`getcap ${q(p)}`), /cap_net_raw[=+]ep/);
      await shOk(`setcap -r ${q(p)}`);
      assert.equal(await shOk(`getcap ${q(p)}`), '');
    });
  });

  describe('statfs and fsync', () => {
    it('statfs (df, stat -f, fs.statfs) reports the store numbers', async () => {
      const want = await vol.call('statfs');
      const st = await statfs(L);
      assert.equal(st.bsize, want.bsize);
      assert.equal(st.blocks, want.blocks);
      assert.ok(st.blocks > 0 && st.bfree <= st.blocks && st.bavail <= st.bfree);
      assert.ok(st.files > 0, 'files');
      const df = (await shOk(`df -P ${q(L)} | tail -1`)).split(/\s+/);
      assert.equal(df[0], 'lcfs');
      assert.equal(df[5], mnt);
      assert.ok(Number(df[1]) > 0, 'df total');
      // FUSE_SUPER_MAGIC, with the store's block size and block count.
      assert.equal(
        await shOk(`stat -f -c '%t %S %b' ${q(L)}`),
        `65735546 ${want.bsize} ${want.blocks}\n`,
      );
    });

    it('fsync and fdatasync on files, and fsync on a directory, succeed', async () => {
      const d = await fresh('fsync');
      const fh = await open(join(d, 'f'), 'w+');
      await fh.write(randomBytes(300_000));
      await fh.sync();
      await fh.write('more');
      await fh.datasync();
      await fh.close();
      assert.equal((await stat(join(d, 'f'))).size, 300_004);
      await shOk(
        `dd if=/dev/urandom of=${q(join(d, 'dd'))} bs=64k count=20 conv=fsync status=none`,
      );
      assert.equal((await stat(join(d, 'dd'))).size, 20 * 65536);
      assert.equal(
        await py(
          `fd = os.open(${JSON.stringify(d)}, os.O_RDONLY | os.O_DIRECTORY)\nos.fsync(fd)\nos.close(fd)\nprint('ok')`,
        ),
        'ok\n',
      );
      await shOk(`sync -f ${q(join(d, 'f'))} && sync -d ${q(join(d, 'dd'))}`);
    });
  });

  describe('mmap', () => {
    it('shared mmap writes reach the file; mmap reads see write()s', async () => {
      const d = await fresh('mmap');
      const p = join(d, 'f');
      const data = randomBytes(3 * MiB);
      await writeFile(p, data);
      const out = await py(
        [
          'import hashlib',
          `p = ${JSON.stringify(p)}`,
          "with open(p, 'r+b') as f:",
          '    m = mmap.mmap(f.fileno(), 0)',
          '    print(hashlib.sha256(m[:]).hexdigest())',
          "    m[0:5] = b'HELLO'",
          `    m[${MiB - 2}:${MiB + 2}] = b'XXXX'`,
          "    m[len(m)-3:] = b'END'",
          '    m.flush()',
          '    m.close()',
          // Reading back through read(), in the same process.
          "with open(p, 'rb') as f:",
          `    f.seek(${MiB - 2}); print(f.read(4))`,
        ].join('\n'),
      );
      const [hash, readBack] = out.trim().split('\n');
      assert.equal(hash, sha(data), 'mmap read sees the written data');
      assert.equal(readBack, "b'XXXX'");
      const want = Buffer.from(data);
      want.write('HELLO', 0);
      want.write('XXXX', MiB - 2);
      want.write('END', want.length - 3);
      const back = await readFile(p);
      assert.ok(back.equals(want), 'the mmap writes are in the file');

      // A write() after the mapping exists shows in the mapping.
      const coherent = await py(
        [
          `p = ${JSON.stringify(p)}`,
          "f = open(p, 'r+b')",
          'm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)',
          'before = m[100:104]',
          "os.pwrite(f.fileno(), b'abcd', 100)",
          'print(m[100:104], before != m[100:104])',
        ].join('\n'),
      );
      assert.equal(coherent, "b'abcd' True\n");
    });

    it('mmap of a new file grown with ftruncate, written through the map', async () => {
      const d = await fresh('mmap-new');
      const p = join(d, 'g');
      await py(
        [
          `fd = os.open(${JSON.stringify(p)}, os.O_RDWR | os.O_CREAT, 0o644)`,
          'os.ftruncate(fd, 2 * 1024 * 1024 + 10)',
          'm = mmap.mmap(fd, 0)',
          'for i in range(0, len(m), 4096): m[i] = (i // 4096) % 256',
          'm.flush(); m.close(); os.close(fd)',
        ].join('\n'),
      );
      const back = await readFile(p);
      assert.equal(back.length, 2 * MiB + 10);
      for (let i = 0; i < back.length; i++) {
        const want = i % 4096 === 0 ? (i / 4096) % 256 : 0;
        if (back[i] !== want) assert.fail(`byte ${i}: ${back[i]} != ${want}`);
      }
    });
  });

  describe('open files that lose their name', () => {
    it('an unlinked file stays readable and writable through its open handle until closed', async () => {
      const d = await fresh('unlinked-open');
      const p = join(d, 'f');
      await writeFile(p, 'before unlink;');
      const fh = await open(p, 'r+');
      await unlink(p);
      await expectErrno('name gone', stat(p), 'ENOENT');
      assert.deepEqual(await readdir(d), []);
      await fh.write('after unlink', 14);
      const st = await fh.stat();
      assert.equal(st.nlink, 0);
      assert.equal(st.size, 26);
      const buf = Buffer.alloc(26);
      await fh.read(buf, 0, 26, 0);
      assert.equal(buf.toString(), 'before unlink;after unlink');
      await fh.truncate(6);
      assert.equal((await fh.stat()).size, 6);
      // The name is free for a new, unrelated file.
      await writeFile(p, 'new file');
      const b2 = Buffer.alloc(6);
      await fh.read(b2, 0, 6, 0);
      assert.equal(b2.toString(), 'before');
      await fh.close();
      assert.equal(await readFile(p, 'utf8'), 'new file');
    });

    it('the same holds for a file replaced by rename, seen from python', async () => {
      const d = await fresh('renamed-open');
      const out = await py(
        [
          `d = ${JSON.stringify(d)}`,
          "open(d + '/target', 'w').write('old content')",
          "open(d + '/new', 'w').write('new content')",
          "f = open(d + '/target', 'r+')",
          "os.rename(d + '/new', d + '/target')",
          "f.seek(0, 2); f.write(' + appended'); f.flush()",
          'f.seek(0); print(f.read())',
          'print(os.fstat(f.fileno()).st_nlink)',
          'f.close()',
          "print(open(d + '/target').read())",
          'print(os.listdir(d))',
        ].join('\n'),
      );
      assert.equal(out, "old content + appended\n0\nnew content\n['target']\n");
    });
  });

  describe('frozen layers', () => {
    let base: string;
    before(async () => {
      await vol.call('createLayer', 'frz-base', null);
      base = join(mnt, 'frz-base');
      await mkdir(join(base, 'dir'));
      await writeFile(join(base, 'dir', 'file'), 'frozen content');
      await symlink('file', join(base, 'dir', 'link'));
      await shOk(`setfattr -n user.x -v 1 ${q(join(base, 'dir', 'file'))}`);
      await vol.call('createLayer', 'frz-child', 'frz-base');
      assert.equal((await vol.call('layer', 'frz-base')).state, 'frozen');
    });

    it('refuses every kind of write with EROFS, and still reads', async () => {
      const f = join(base, 'dir', 'file');
      const dir = join(base, 'dir');
      assert.equal(await readFile(f, 'utf8'), 'frozen content');
      await expectErrno('open for write', open(f, 'r+'), 'EROFS');
      await expectErrno('O_TRUNC', writeFile(f, 'x'), 'EROFS');
      await expectErrno('append', appendFile(f, 'x'), 'EROFS');
      await expectErrno('create', writeFile(join(dir, 'new'), 'x'), 'EROFS');
      await expectErrno('mkdir', mkdir(join(dir, 'sub')), 'EROFS');
      await expectErrno('unlink', unlink(f), 'EROFS');
      await expectErrno('rmdir', rmdir(dir), 'EROFS');
      await expectErrno('rename', rename(f, join(dir, 'renamed')), 'EROFS');
      await expectErrno('link', link(f, join(dir, 'hard')), 'EROFS');
      await expectErrno('symlink', symlink('x', join(dir, 'sym')), 'EROFS');
      await expectErrno('chmod', chmod(f, 0o600), 'EROFS');
      await expectErrno('chown', chown(f, 1, 1), 'EROFS');
      await expectErrno('utimes', utimes(f, 1, 1), 'EROFS');
      await expectErrno('truncate', truncate(f, 1), 'EROFS');
      await shFails(`mkfifo ${q(join(dir, 'fifo'))}`, 'Read-only file system');
      await shFails(`setfattr -n user.y -v 2 ${q(f)}`, 'Read-only file system');
      await shFails(`setfattr -x user.x ${q(f)}`, 'Read-only file system');
      await shFails(`touch ${q(f)}`, 'Read-only file system');
      assert.equal(await readFile(f, 'utf8'), 'frozen content');
      assert.equal(await readlink(join(dir, 'link')), 'file');
      assert.deepEqual((await readdir(dir)).sort(), ['file', 'link']);
      assert.equal(await shOk(`getfattr --only-values -n user.x ${q(f)}`), '1');
    });

    it('the child sees the parent tree and changes it copy-on-write', async () => {
      const child = join(mnt, 'frz-child');
      assert.equal(await readFile(join(child, 'dir', 'file'), 'utf8'), 'frozen content');
      await appendFile(join(child, 'dir', 'file'), ' + child');
      await writeFile(join(child, 'dir', 'added'), 'added');
      await unlink(join(child, 'dir', 'link'));
      assert.equal(await readFile(join(child, 'dir', 'file'), 'utf8'), 'frozen content + child');
      assert.deepEqual((await readdir(join(child, 'dir'))).sort(), ['added', 'file']);
      assert.equal(await readFile(join(base, 'dir', 'file'), 'utf8'), 'frozen content');
      assert.deepEqual((await readdir(join(base, 'dir'))).sort(), ['file', 'link']);
    });

    it('freeze through the engine takes effect on the mount at once, including open handles', async () => {
      await vol.call('createLayer', 'frz-direct', null);
      const l = join(mnt, 'frz-direct');
      await writeFile(join(l, 'f'), 'v1');
      const fh = await open(join(l, 'f'), 'r+');
      await vol.call('freeze', 'frz-direct');
      await expectErrno('write after freeze', writeFile(join(l, 'f'), 'v2'), 'EROFS');
      await expectErrno('create after freeze', writeFile(join(l, 'g'), 'v2'), 'EROFS');
      await expectErrno('write through a handle opened before freeze', fh.write('v3', 0), 'EROFS');
      await fh.close();
      assert.equal(await readFile(join(l, 'f'), 'utf8'), 'v1');
    });
  });

  describe('copy-on-write in a child layer', () => {
    let parent: string;
    let child: string;
    const pdata = randomBytes(3 * MiB + 77);
    before(async () => {
      await vol.call('createLayer', 'cow-parent', null);
      parent = join(mnt, 'cow-parent');
      await shOk(
        `cd ${q(parent)} && mkdir -p tree/sub/deep other && for i in 1 2 3; do echo f$i > tree/f$i; echo d$i > tree/sub/deep/g$i; done` +
          ` && echo a > other/a && ln other/a other/a-link && echo keep > keep && setfattr -n user.p -v parent keep`,
      );
      await writeFile(join(parent, 'big'), pdata);
      await vol.call('createLayer', 'cow-child', 'cow-parent');
      child = join(mnt, 'cow-child');
    });

    const parentUnchanged = async () => {
      assert.equal(
        await shOk(`cd ${q(parent)} && find . -printf '%p %y %n %s\\n' | sort`),
        [
          '. d 4 0',
          './big f 1 3145805',
          './keep f 1 5',
          './other d 2 0',
          './other/a f 2 2',
          './other/a-link f 2 2',
          './tree d 3 0',
          './tree/f1 f 1 3',
          './tree/f2 f 1 3',
          './tree/f3 f 1 3',
          './tree/sub d 3 0',
          './tree/sub/deep d 2 0',
          './tree/sub/deep/g1 f 1 3',
          './tree/sub/deep/g2 f 1 3',
          './tree/sub/deep/g3 f 1 3',
          '',
        ].join('\n'),
      );
      assert.ok((await readFile(join(parent, 'big'))).equals(pdata), 'parent big file unchanged');
      assert.equal(await readFile(join(parent, 'other', 'a'), 'utf8'), 'a\n');
    };

    it('truncating an inherited file and extending it again reads zeros, not the parent data', async () => {
      await truncate(join(child, 'big'), 100);
      await truncate(join(child, 'big'), pdata.length);
      const back = await readFile(join(child, 'big'));
      assert.ok(back.subarray(0, 100).equals(pdata.subarray(0, 100)));
      assert.ok(back.subarray(100).equals(Buffer.alloc(pdata.length - 100)), 'extension is zeros');
      await parentUnchanged();
    });

    it('a small write into an inherited file keeps the rest of its chunk', async () => {
      await writeFile(join(child, 'big2'), ''); // unrelated name, so big stays as the previous test left it
      await copyFile(join(parent, 'big'), join(child, 'big'));
      const fh = await open(join(child, 'big'), 'r+');
      await fh.write('PATCH', MiB + 10);
      await fh.close();
      const want = Buffer.from(pdata);
      want.write('PATCH', MiB + 10);
      assert.ok((await readFile(join(child, 'big'))).equals(want));
      await parentUnchanged();
    });

    it('a write through one hard link of an inherited file shows through the other; nlink stays', async () => {
      await appendFile(join(child, 'other', 'a'), 'more\n');
      assert.equal(await readFile(join(child, 'other', 'a-link'), 'utf8'), 'a\nmore\n');
      const [a, b] = await Promise.all([
        stat(join(child, 'other', 'a')),
        stat(join(child, 'other', 'a-link')),
      ]);
      assert.equal(a.ino, b.ino);
      assert.equal(a.nlink, 2);
      await link(join(child, 'keep'), join(child, 'keep-link'));
      assert.equal((await stat(join(child, 'keep'))).nlink, 2);
      await parentUnchanged();
    });

    it('deleting an inherited tree, then making the same directory, gives an empty directory', async () => {
      await expectErrno('rmdir inherited non-empty', rmdir(join(child, 'tree')), 'ENOTEMPTY');
      await shOk(`rm -rf ${q(join(child, 'tree'))}`);
      await expectErrno('tree gone', stat(join(child, 'tree')), 'ENOENT');
      await mkdir(join(child, 'tree'));
      assert.deepEqual(await readdir(join(child, 'tree')), []);
      await mkdir(join(child, 'tree', 'sub'));
      assert.deepEqual(await readdir(join(child, 'tree', 'sub')), []);
      await parentUnchanged();
    });

    it('renaming inherited files and directories, and chmod/xattr changes, stay in the child', async () => {
      await rename(join(child, 'other'), join(child, 'renamed'));
      assert.deepEqual((await readdir(join(child, 'renamed'))).sort(), ['a', 'a-link']);
      await rename(join(child, 'renamed', 'a'), join(child, 'keep'));
      assert.equal(await readFile(join(child, 'keep'), 'utf8'), 'a\nmore\n');
      assert.equal((await stat(join(child, 'keep'))).nlink, 2, 'renamed link keeps its nlink');
      await chmod(join(child, 'renamed'), 0o700);
      await shOk(`setfattr -n user.c -v child ${q(join(child, 'keep'))}`);
      assert.equal(
        await shOk(`getfattr --only-values -n user.p ${q(join(parent, 'keep'))}`),
        'parent',
      );
      await shFails(`getfattr -n user.c ${q(join(parent, 'keep'))}`, 'No such attribute');
      await parentUnchanged();
    });

    it('an inherited file unlinked while open in the child stays readable there', async () => {
      await writeFile(join(parent, '..', 'cow-child', 'tmp-open'), 'x'); // make sure the child is writable
      const fh = await open(join(child, 'big'), 'r');
      await unlink(join(child, 'big'));
      const buf = Buffer.alloc(5);
      await fh.read(buf, 0, 5, MiB + 10);
      assert.equal(buf.toString(), 'PATCH');
      await fh.close();
      await expectErrno('gone in child', stat(join(child, 'big')), 'ENOENT');
      await parentUnchanged();
    });
  });

  describe('engine writes into a mounted layer', () => {
    let n = 0;
    /** A fresh writable layer holding `present` ("old"), and a tar that adds `added` and rewrites `present`. */
    const setup = async () => {
      const id = `apply-live-${++n}`;
      await vol.call('createLayer', id, null);
      const l = join(mnt, id);
      await writeFile(join(l, 'present'), 'old');
      const src = await makeTarDir();
      await writeFile(join(src.dir, 'added'), 'from the tar');
      await writeFile(join(src.dir, 'present'), 'new and longer');
      await shOk(`tar -C ${q(src.dir)} -cf ${q(src.tar)} added present`);
      return { id, l, src };
    };

    it('a name looked up (ENOENT) before applyDiff is visible as soon as applyDiff resolves', async () => {
      const { id, l, src } = await setup();
      try {
        await expectErrno('not there yet', stat(join(l, 'added')), 'ENOENT');
        await vol.call('applyDiff', id, null, src.tar);
        assert.equal(await readFile(join(l, 'added'), 'utf8'), 'from the tar');
      } finally {
        await rm(src.root, { recursive: true, force: true });
      }
    });

    it('a file read before applyDiff shows the new content as soon as applyDiff resolves', async () => {
      const { id, l, src } = await setup();
      try {
        assert.equal(await readFile(join(l, 'present'), 'utf8'), 'old');
        await vol.call('applyDiff', id, null, src.tar);
        assert.equal(await readFile(join(l, 'present'), 'utf8'), 'new and longer');
      } finally {
        await rm(src.root, { recursive: true, force: true });
      }
    });

    it('(control) after the 1 s attribute/entry timeout both are visible', async () => {
      const { id, l, src } = await setup();
      try {
        await expectErrno('not there yet', stat(join(l, 'added')), 'ENOENT');
        assert.equal(await readFile(join(l, 'present'), 'utf8'), 'old');
        await vol.call('applyDiff', id, null, src.tar);
        await sleep(1100);
        assert.equal(await readFile(join(l, 'added'), 'utf8'), 'from the tar');
        assert.equal(await readFile(join(l, 'present'), 'utf8'), 'new and longer');
      } finally {
        await rm(src.root, { recursive: true, force: true });
      }
    });
  });

  describe('more file edge cases', () => {
    it('names up to 255 bytes, unicode and odd characters work; 256 bytes is ENAMETOOLONG', async () => {
      const d = await fresh('names');
      const names = [
        'x'.repeat(255),
        'ünïcödé-名前-🙂',
        'with space',
        'new\nline',
        '-dash',
        '.hidden',
        '...',
      ];
      for (const n of names) await writeFile(join(d, n), n);
      assert.deepEqual((await readdir(d)).sort(), [...names].sort());
      for (const n of names) assert.equal(await readFile(join(d, n), 'utf8'), n);
      await expectErrno('256-byte name', writeFile(join(d, 'y'.repeat(256)), 'x'), 'ENAMETOOLONG');
      await expectErrno('256-byte mkdir', mkdir(join(d, 'z'.repeat(256))), 'ENAMETOOLONG');
      assert.equal((await shOk(`stat -f -c %l ${q(d)}`)).trim(), '255');
    });

    it('offsets beyond 4 GiB: a sparse 5 GiB file reads back its tail and zeros', async () => {
      const d = await fresh('huge');
      const p = join(d, 'f');
      const off = 5 * 1024 * MiB + 12345;
      const fh = await open(p, 'w+');
      await fh.write('tail', off);
      assert.equal((await fh.stat()).size, off + 4);
      const buf = Buffer.alloc(4 + 4096);
      const { bytesRead } = await fh.read(buf, 0, buf.length, off - 4096);
      assert.equal(bytesRead, 4100);
      assert.ok(buf.subarray(0, 4096).equals(Buffer.alloc(4096)));
      assert.equal(buf.subarray(4096).toString(), 'tail');
      await fh.truncate(4 * 1024 * MiB + 1);
      assert.equal((await fh.stat()).size, 4 * 1024 * MiB + 1);
      await fh.close();
      await unlink(p);
    });

    it('directory mtime and ctime move when entries are added, removed or renamed', async () => {
      const d = await fresh('dir-times');
      const check = async (what: string, op: () => Promise<unknown>) => {
        await utimes(d, 1_000_000_000, 1_000_000_000);
        const before = await stat(d, { bigint: true });
        await op();
        const after = await stat(d, { bigint: true });
        assert.ok(after.mtimeNs > before.mtimeNs, `${what}: mtime`);
        assert.ok(after.ctimeNs >= before.ctimeNs, `${what}: ctime`);
      };
      await check('create', () => writeFile(join(d, 'a'), 'x'));
      await check('mkdir', () => mkdir(join(d, 's')));
      await check('symlink', () => symlink('a', join(d, 'l')));
      await check('link', () => link(join(d, 'a'), join(d, 'h')));
      await check('rename', () => rename(join(d, 'h'), join(d, 'h2')));
      await check('unlink', () => unlink(join(d, 'h2')));
      await check('rmdir', () => rmdir(join(d, 's')));
    });

    it('a file renamed while open keeps taking writes under its new name', async () => {
      const d = await fresh('rename-open');
      const fh = await open(join(d, 'old'), 'w');
      await fh.write('one,');
      await rename(join(d, 'old'), join(d, 'new'));
      await fh.write('two');
      await fh.close();
      assert.equal(await readFile(join(d, 'new'), 'utf8'), 'one,two');
    });

    it('cp of a large file within the mount, O_DIRECT writes and posix_fallocate', async () => {
      const d = await fresh('copy');
      const data = randomBytes(4 * MiB + 1);
      await writeFile(join(d, 'src'), data);
      await shOk(
        `cp ${q(join(d, 'src'))} ${q(join(d, 'dst'))} && cp --sparse=always ${q(join(d, 'src'))} ${q(join(d, 'dst2'))}`,
      );
      assert.ok((await readFile(join(d, 'dst'))).equals(data));
      assert.ok((await readFile(join(d, 'dst2'))).equals(data));
      await shOk(
        `dd if=${q(join(d, 'src'))} of=${q(join(d, 'direct'))} bs=1M count=4 oflag=direct status=none`,
      );
      assert.ok((await readFile(join(d, 'direct'))).equals(data.subarray(0, 4 * MiB)));
      assert.equal(
        await py(
          `fd = os.open(${JSON.stringify(join(d, 'alloc'))}, os.O_RDWR | os.O_CREAT)\nos.posix_fallocate(fd, 0, 3000000)\nprint(os.fstat(fd).st_size)`,
        ),
        '3000000\n',
      );
      assert.ok((await readFile(join(d, 'alloc'))).equals(Buffer.alloc(3_000_000)));
    });

    it('a member of the directory group may write in a 0770 directory; others may not', async () => {
      const d = await fresh('group');
      await chown(d, 0, USER.gid);
      await chmod(d, 0o770);
      await shOk(`echo via-group > ${q(join(d, 'g'))}`, USER);
      assert.deepEqual(await statc('%u %g', join(d, 'g')), ['1000 1000']);
      await shFails(`ls ${q(d)}`, 'Permission denied', { uid: 1001, gid: 1001 });
    });

    it('fcntl and flock locks exclude another process', async () => {
      const d = await fresh('locks');
      const p = join(d, 'lockfile');
      await writeFile(p, '');
      const out = await py(
        [
          'import fcntl',
          `p = ${JSON.stringify(p)}`,
          "f = open(p, 'r+')",
          'fcntl.lockf(f, fcntl.LOCK_EX)',
          'def other_process_tries():',
          '    r, w = os.pipe()',
          '    pid = os.fork()',
          '    if pid == 0:',
          "        g = open(p, 'r+')",
          '        os.write(w, errno_of(fcntl.lockf, g, fcntl.LOCK_EX | fcntl.LOCK_NB).encode())',
          '        os._exit(0)',
          '    os.waitpid(pid, 0)',
          '    return os.read(r, 100).decode()',
          'print(other_process_tries())',
          'fcntl.lockf(f, fcntl.LOCK_UN)',
          'print(other_process_tries())',
        ].join('\n'),
      );
      assert.match(out, /^(EAGAIN|EACCES)\nOK\n$/);
      const held = await shOk(
        `flock ${q(p)} -c 'flock -n ${q(p)} -c true && echo free || echo busy'`,
      );
      assert.equal(held, 'busy\n');
    });

    it('many files open at once, written in parallel, read back intact', async () => {
      const d = await fresh('parallel');
      const blobs = Array.from({ length: 64 }, (_, i) => randomBytes(10_000 + i * 3001));
      const handles = await Promise.all(blobs.map((_, i) => open(join(d, `f${i}`), 'w')));
      await Promise.all(handles.map((h, i) => h.write(blobs[i])));
      await Promise.all(handles.map((h) => h.close()));
      const back = await Promise.all(blobs.map((_, i) => readFile(join(d, `f${i}`))));
      back.forEach((b, i) => assert.ok(b.equals(blobs[i]), `f${i}`));
    });
  });

  describe('layers appear and disappear', () => {
    it('a layer created through the engine shows at once, and a removed one is gone at once', async () => {
      // Look first, so a stale negative entry would show.
      await expectErrno('not yet', stat(join(mnt, 'flash')), 'ENOENT');
      await vol.call('createLayer', 'flash', null);
      assert.ok((await readdir(mnt)).includes('flash'));
      assert.ok((await stat(join(mnt, 'flash'))).isDirectory());
      await writeFile(join(mnt, 'flash', 'f'), 'first life');
      await vol.call('removeLayer', 'flash');
      assert.ok(!(await readdir(mnt)).includes('flash'));
      await expectErrno('stat removed layer', stat(join(mnt, 'flash')), 'ENOENT');
      await expectErrno('stat file of removed layer', stat(join(mnt, 'flash', 'f')), 'ENOENT');
      // The same id again is a new, empty layer.
      await vol.call('createLayer', 'flash', null);
      assert.deepEqual(await readdir(join(mnt, 'flash')), []);
      await expectErrno('old file not visible', stat(join(mnt, 'flash', 'f')), 'ENOENT');
      await vol.call('removeLayer', 'flash');
    });

    it('the same for a frozen layer whose names and pages the kernel caches for long', async () => {
      await vol.call('createLayer', 'flash-frozen', null);
      const l = join(mnt, 'flash-frozen');
      await mkdir(join(l, 'd'));
      await writeFile(join(l, 'd', 'f'), 'cached');
      await vol.call('freeze', 'flash-frozen');
      assert.equal(await readFile(join(l, 'd', 'f'), 'utf8'), 'cached');
      assert.equal((await stat(join(l, 'd', 'f'))).size, 6);
      await vol.call('removeLayer', 'flash-frozen');
      await expectErrno('stat file of removed frozen layer', stat(join(l, 'd', 'f')), 'ENOENT');
      await expectErrno('read file of removed frozen layer', readFile(join(l, 'd', 'f')), 'ENOENT');
      await vol.call('createLayer', 'flash-frozen', null);
      assert.deepEqual(await readdir(l), []);
      await expectErrno('old dir not visible', stat(join(l, 'd')), 'ENOENT');
      await vol.call('removeLayer', 'flash-frozen');
    });

    it('layer directories cannot be made or removed through the mount root', async () => {
      await expectErrno('mkdir in root', mkdir(join(mnt, 'by-hand')), 'EPERM');
      await expectErrno('rmdir a layer', rmdir(L), 'EPERM');
      await expectErrno('create in root', writeFile(join(mnt, 'file'), 'x'), 'EPERM');
    });

    it('engine errors keep their code and errno across the harness', async () => {
      let err: (Error & { code?: string; errno?: unknown }) | undefined;
      try {
        await vol.call('removeLayer', 'no-such-layer');
      } catch (e) {
        err = e as typeof err;
      }
      assert.ok(err, 'removeLayer of an unknown id fails');
      assert.equal(err.code, 'LCFS_ELAYER_NOT_FOUND');
      assert.equal(err.errno, 'ENOENT');
    });
  });

  describe('other users', () => {
    let d: string;
    before(async () => {
      d = await fresh('users');
    });

    it('a non-root user gets EACCES in a root-owned 0755 dir, and creates files it owns in a 0777 dir', async () => {
      await mkdir(join(d, 'closed'), { mode: 0o755 });
      await mkdir(join(d, 'open'));
      await chmod(join(d, 'open'), 0o777);
      await shFails(`echo x > ${q(join(d, 'closed', 'f'))}`, 'Permission denied', USER);
      await shFails(`mkdir ${q(join(d, 'closed', 'sub'))}`, 'Permission denied', USER);
      await shOk(
        `cd ${q(join(d, 'open'))} && echo mine > f && mkdir own && echo deeper > own/g && chmod 700 own`,
        USER,
      );
      assert.deepEqual(
        await statc(
          '%u:%g %a',
          join(d, 'open', 'f'),
          join(d, 'open', 'own'),
          join(d, 'open', 'own', 'g'),
        ),
        ['1000:1000 644', '1000:1000 700', '1000:1000 644'],
      );
      assert.equal(await shOk(`cat ${q(join(d, 'open', 'own', 'g'))}`, USER), 'deeper\n');
    });

    it('permission checks: reading a 0600 root file, chmod/chown of others files, the sticky bit', async () => {
      await writeFile(join(d, 'secret'), 'root only', { mode: 0o600 });
      await shFails(`cat ${q(join(d, 'secret'))}`, 'Permission denied', USER);
      await shFails(`chmod 777 ${q(join(d, 'secret'))}`, 'Operation not permitted', USER);
      await mkdir(join(d, 'sticky'));
      await chmod(join(d, 'sticky'), 0o1777);
      await writeFile(join(d, 'sticky', 'roots'), 'r');
      await chmod(join(d, 'sticky', 'roots'), 0o666);
      await shFails(`rm -f ${q(join(d, 'sticky', 'roots'))}`, 'Operation not permitted', USER);
      await shOk(
        `echo mine > ${q(join(d, 'sticky', 'users'))} && chmod 600 ${q(join(d, 'sticky', 'users'))}`,
        USER,
      );
      await shFails(`chown 0 ${q(join(d, 'sticky', 'users'))}`, 'Operation not permitted', USER);
      await shOk(`rm ${q(join(d, 'sticky', 'users'))}`, USER);
      await shOk(`echo appended >> ${q(join(d, 'sticky', 'roots'))}`, USER);
      assert.equal(await readFile(join(d, 'sticky', 'roots'), 'utf8'), 'rappended\n');
    });

    it('a setgid directory hands its group to new files, and group and setgid bit to new subdirs', async () => {
      const g = join(d, 'setgid');
      await mkdir(g);
      await chown(g, 0, 4321);
      await chmod(g, 0o2777);
      assert.deepEqual(await statc('%a %g', g), ['2777 4321']);
      await shOk(
        `cd ${q(g)} && echo u > ufile && mkdir udir && mkdir udir/nested && echo n > udir/nested/f`,
        USER,
      );
      await shOk(`cd ${q(g)} && echo r > rfile && mkdir rdir`);
      assert.deepEqual(
        await statc(
          '%n %u %g %a',
          ...['ufile', 'udir', 'udir/nested', 'udir/nested/f', 'rfile', 'rdir'].map((n) =>
            join(g, n),
          ),
        ),
        [
          `${join(g, 'ufile')} 1000 4321 644`,
          `${join(g, 'udir')} 1000 4321 2755`,
          `${join(g, 'udir/nested')} 1000 4321 2755`,
          `${join(g, 'udir/nested/f')} 1000 4321 644`,
          `${join(g, 'rfile')} 0 4321 644`,
          `${join(g, 'rdir')} 0 4321 2755`,
        ],
      );
    });

    it('the setuid bit survives on a file, and a setuid-root binary runs with euid 0 (mount has suid)', async () => {
      const bin = join(d, 'bin');
      await mkdir(bin);
      await copyFile('/usr/bin/id', join(bin, 'id'));
      await chown(join(bin, 'id'), 0, 0);
      await shOk(`chmod u+s ${q(join(bin, 'id'))}`);
      assert.deepEqual(await statc('%a %U', join(bin, 'id')), ['4755 root']);
      const plain = await shOk(`/usr/bin/id -u`, USER);
      assert.equal(plain.trim(), '1000', 'the unprivileged user is 1000');
      const euid = await shOk(`${q(join(bin, 'id'))} -u`, USER);
      assert.equal(euid.trim(), '0', 'the setuid bit on the mount takes effect');
      const real = await shOk(`${q(join(bin, 'id'))} -ru`, USER);
      assert.equal(real.trim(), '1000');
      // setgid binary: egid becomes the file's group.
      await copyFile('/usr/bin/id', join(bin, 'gid'));
      await chown(join(bin, 'gid'), 0, 4321);
      await chmod(join(bin, 'gid'), 0o2755);
      assert.equal((await shOk(`${q(join(bin, 'gid'))} -g`, USER)).trim(), '4321');
    });

    it('a write by a non-owner clears the setuid bit, as on ext4', async () => {
      const p = join(d, 'suid-writable');
      await writeFile(p, 'x');
      await chmod(p, 0o4777);
      await shOk(`echo more >> ${q(p)}`, USER);
      assert.deepEqual(await statc('%a', p), ['777']);
    });
  });
});
