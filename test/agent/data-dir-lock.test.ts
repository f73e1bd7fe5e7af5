import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DataDirLockedError, LOCK_FILE_NAME, lockDataDir } from '../../agent/data-dir-lock.js';

/** The pid of a process that has already exited, so it is certainly not running. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], {
    encoding: 'utf8',
  });
  return Number(child.stdout.trim());
}

describe('data directory lock', () => {
  let dir: string;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lcfs-lock-'));
  });

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('writes our pid into the lock file and removes it on release', async () => {
    const lock = await lockDataDir(dir);
    assert.equal(lock.path, join(dir, LOCK_FILE_NAME));
    assert.equal(await readFile(lock.path, 'utf8'), `${process.pid}\n`);
    assert.equal(lock.takenOverFromPid, undefined);
    await lock.release();
    await lock.release();
    assert.deepEqual(await readdir(dir), []);
  });

  it('refuses a second lock while the owner runs, naming its pid', async () => {
    const first = await lockDataDir(dir);
    const err: unknown = await lockDataDir(dir).then(
      () => assert.fail('second lock was granted'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof DataDirLockedError);
    assert.equal(err.code, 'LCFS_EDATADIR_LOCKED');
    assert.equal(err.ownerPid, process.pid);
    assert.match(err.message, new RegExp(`pid ${process.pid}`));
    // The refused attempt leaves the owner's lock and no litter behind.
    assert.deepEqual(await readdir(dir), [LOCK_FILE_NAME]);
    await first.release();
  });

  it('takes over a stale lock left by a dead process', async () => {
    const stalePid = deadPid();
    await writeFile(join(dir, LOCK_FILE_NAME), `${stalePid}\n`);
    const lock = await lockDataDir(dir);
    assert.equal(lock.takenOverFromPid, stalePid);
    assert.equal(await readFile(lock.path, 'utf8'), `${process.pid}\n`);
    assert.deepEqual(await readdir(dir), [LOCK_FILE_NAME]);
    await lock.release();
  });

  it('takes over a lock file whose content is not a pid', async () => {
    await writeFile(join(dir, LOCK_FILE_NAME), 'garbage');
    const lock = await lockDataDir(dir);
    assert.equal(lock.takenOverFromPid, undefined);
    assert.equal(await readFile(lock.path, 'utf8'), `${process.pid}\n`);
    await lock.release();
  });

  it('does not remove a lock that another agent now owns', async () => {
    const lock = await lockDataDir(dir);
    const otherPid = deadPid();
    await writeFile(lock.path, `${otherPid}\n`);
    await lock.release();
    assert.equal(await readFile(lock.path, 'utf8'), `${otherPid}\n`);
  });

  it('lets exactly one of several concurrent contenders for a stale lock win', async () => {
    await writeFile(join(dir, LOCK_FILE_NAME), `${deadPid()}\n`);
    // In one process all contenders share a pid, so each sees the winner's lock as running.
    const outcomes = await Promise.allSettled([
      lockDataDir(dir),
      lockDataDir(dir),
      lockDataDir(dir),
    ]);
    const winners = outcomes.filter((o) => o.status === 'fulfilled');
    assert.equal(winners.length, 1, JSON.stringify(outcomes.map((o) => o.status)));
    for (const o of outcomes) {
      if (o.status === 'rejected') assert.ok(o.reason instanceof DataDirLockedError);
    }
    await winners[0]?.value.release();
    assert.deepEqual(await readdir(dir), []);
  });
});
