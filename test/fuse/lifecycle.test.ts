/**
 * Mount lifecycle of the LCFS volume: clean stop and SIGTERM, a crash (SIGKILL) leaving a stale
 * mount that the next start clears, and a stop while the mount is busy.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdir, open, readdir, readFile, readlink, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  disposeAll,
  makeTempRoot,
  startVolume,
  type LogLine,
  type Volume,
} from './helpers/volume-process.js';
import { expectErrno, mountTable, q, shOk, sleep } from './helpers/shell.js';

const BUSY_STOP_LIMIT_MS = 5000;

async function mountsAt(path: string) {
  return (await mountTable()).filter((m) => m.mountpoint === path);
}

function sha(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

function logged(vol: Volume, msg: string): LogLine | undefined {
  return vol.logs.find((l) => l.msg === msg);
}

describe('FUSE volume: mount lifecycle', function () {
  this.timeout(60_000);
  afterEach(async function () {
    this.timeout(60_000);
    await disposeAll();
  });

  it('stop unmounts, closes the store and exits 0; a restart serves the same data', async () => {
    const vol = await startVolume();
    const mnt = vol.mountpoint;
    const [entry] = await mountsAt(mnt);
    assert.ok(entry, 'mounted');
    assert.equal(entry.fstype, 'fuse.lcfs');
    assert.equal(entry.source, 'lcfs');
    await vol.call('createLayer', 'l1', null);
    await writeFile(join(mnt, 'l1', 'f'), 'persisted');
    const exit = await vol.stop();
    assert.deepEqual(exit, { code: 0, signal: null });
    assert.deepEqual(await mountsAt(mnt), [], 'no mount left at the mountpoint');
    assert.deepEqual(await readdir(mnt), [], 'the mountpoint is a plain empty directory again');
    assert.ok(logged(vol, 'volume unmounted'), 'logged the unmount');
    assert.equal(
      vol.logs.filter((l) => (l.level ?? 0) >= 50).length,
      0,
      `no errors logged: ${JSON.stringify(vol.logs)}`,
    );

    const again = await startVolume({ dir: vol.dir, mountpoint: mnt });
    assert.equal(await readFile(join(mnt, 'l1', 'f'), 'utf8'), 'persisted');
    assert.equal(
      logged(again, 'cleared a stale FUSE mount left by a crash'),
      undefined,
      'nothing stale to clear',
    );
    assert.deepEqual(await again.stop(), { code: 0, signal: null });
    assert.deepEqual(await mountsAt(mnt), []);
  });

  it('SIGTERM unmounts cleanly and exits 0', async () => {
    const vol = await startVolume();
    await vol.call('createLayer', 'l1', null);
    await writeFile(join(vol.mountpoint, 'l1', 'f'), 'x');
    const exit = await vol.signal('SIGTERM');
    assert.deepEqual(exit, { code: 0, signal: null });
    assert.deepEqual(await mountsAt(vol.mountpoint), []);
    assert.ok(logged(vol, 'volume unmounted'));
  });

  it('losing its parent (IPC disconnect) unmounts and exits 0', async () => {
    const vol = await startVolume();
    vol.child.disconnect();
    const exit = await vol.exited;
    assert.deepEqual(exit, { code: 0, signal: null });
    assert.deepEqual(await mountsAt(vol.mountpoint), []);
  });

  it('a second volume on a live mountpoint refuses with EBUSY and leaves the first one serving', async () => {
    const vol = await startVolume();
    await vol.call('createLayer', 'l1', null);
    const root = await makeTempRoot();
    let err: (Error & { code?: string; errno?: unknown }) | undefined;
    try {
      await startVolume({ dir: join(root, 'store'), mountpoint: vol.mountpoint });
    } catch (e) {
      err = e as typeof err;
    } finally {
      await shOk(`rm -rf ${q(root)}`);
    }
    assert.ok(err, 'the second start fails');
    assert.equal(err.code, 'LCFS_EMOUNT');
    assert.equal(err.errno, 'EBUSY');
    assert.deepEqual(await readdir(vol.mountpoint), ['l1']);
    assert.equal((await mountsAt(vol.mountpoint)).length, 1);
  });

  it('after SIGKILL the mount is stale (ENOTCONN); a new volume clears it and serves the same data', async () => {
    const vol = await startVolume();
    const mnt = vol.mountpoint;
    await vol.call('createLayer', 'base', null);
    const big = randomBytes(3 * 1024 * 1024 + 5);
    await writeFile(join(mnt, 'base', 'big'), big);
    await shOk(
      `cd ${q(join(mnt, 'base'))} && mkdir -p a/b && echo hello > a/b/c && ln -s a/b/c link && chmod 640 a/b/c`,
    );
    await vol.call('createLayer', 'top', 'base'); // freezes base: durable
    assert.equal((await vol.call('layer', 'base')).state, 'frozen');
    // A file in the writable layer, made durable by fsync.
    const fh = await open(join(mnt, 'top', 'synced'), 'w');
    await fh.write('fsynced before the crash');
    await fh.sync();
    await fh.close();

    const exit = await vol.kill();
    assert.equal(exit.signal, 'SIGKILL');
    const stale = await mountsAt(mnt);
    assert.equal(stale.length, 1, 'the mount is still in the table');
    await expectErrno('stat on the stale mount', stat(mnt), 'ENOTCONN');
    await expectErrno('readdir on the stale mount', readdir(join(mnt, 'base')), 'ENOTCONN');

    const vol2 = await startVolume({ dir: vol.dir, mountpoint: mnt });
    assert.ok(
      logged(vol2, 'cleared a stale FUSE mount left by a crash'),
      'the stale mount was reported',
    );
    assert.equal((await mountsAt(mnt)).length, 1, 'exactly one (new) mount at the mountpoint');
    assert.deepEqual((await readdir(mnt)).sort(), ['base', 'top']);
    assert.equal((await vol2.call('layer', 'base')).state, 'frozen');
    assert.equal(sha(await readFile(join(mnt, 'base', 'big'))), sha(big));
    assert.equal(await readFile(join(mnt, 'base', 'link'), 'utf8'), 'hello\n');
    assert.equal((await stat(join(mnt, 'base', 'a', 'b', 'c'))).mode & 0o777, 0o640);
    assert.equal(
      sha(await readFile(join(mnt, 'top', 'big'))),
      sha(big),
      'the child sees the parent',
    );
    assert.equal(await readFile(join(mnt, 'top', 'synced'), 'utf8'), 'fsynced before the crash');
    await expectErrno('base is still frozen', writeFile(join(mnt, 'base', 'new'), 'x'), 'EROFS');
    await writeFile(join(mnt, 'top', 'after'), 'writable after restart');
    assert.deepEqual(await vol2.stop(), { code: 0, signal: null });
    assert.deepEqual(await mountsAt(mnt), []);
  });

  it('a busy mount at stop is reported and detached, and the stop completes without hanging', async () => {
    const vol = await startVolume();
    const mnt = vol.mountpoint;
    await vol.call('createLayer', 'busy', null);
    await mkdir(join(mnt, 'busy', 'cwd'));
    // A shell sitting in the mount, as a container's process would, waiting for a line on stdin.
    const shell = spawn(
      'bash',
      [
        '-c',
        `cd ${q(join(mnt, 'busy', 'cwd'))} && echo ready && read line; ls . 2>&1; echo "rc=$?"`,
      ],
      {
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    let out = '';
    shell.stdout.setEncoding('utf8').on('data', (c: string) => (out += c));
    const shellExit = once(shell, 'exit');
    while (!out.includes('ready')) await sleep(20);
    assert.equal(await readlink(`/proc/${shell.pid}/cwd`), join(mnt, 'busy', 'cwd'));

    const t0 = performance.now();
    const exit = await vol.stop();
    const ms = performance.now() - t0;
    console.log(`      stop with a busy mount took ${ms.toFixed(0)} ms`);
    try {
      assert.deepEqual(exit, { code: 0, signal: null });
      const busy = logged(vol, 'mount busy at stop; detaching it lazily');
      assert.ok(busy, `the busy mount was reported: ${JSON.stringify(vol.logs.map((l) => l.msg))}`);
      assert.equal(busy.level, 40, 'as a warning');
      assert.deepEqual(await mountsAt(mnt), [], 'detached from the mount table');
      // The shell is still alive; its cwd is now a dead connection.
      shell.stdin.end('go\n');
      await shellExit;
      assert.match(out, /Transport endpoint is not connected/);
      assert.ok(
        ms < BUSY_STOP_LIMIT_MS,
        `stop took ${ms.toFixed(0)} ms, over ${BUSY_STOP_LIMIT_MS} ms`,
      );
    } finally {
      if (shell.exitCode === null) shell.kill('SIGKILL');
    }
  });
});
