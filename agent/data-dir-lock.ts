import { randomBytes } from 'node:crypto';
import { link, readFile, stat, unlink, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { AgentError } from './errors.js';

/**
 * One agent per data directory: the store's metadata database would accept a second writer
 * process, and two agents would then fight over the same layers and mountpoint.
 *
 * The lock is the file `<dataDir>/lcfs.lock` holding the owner's pid. It is created whole with
 * link(2), which fails if the name exists, so no reader ever sees it empty. A lock whose pid is
 * no longer running is stale (the owner crashed) and is taken over.
 *
 * Only one contender at a time may break a stale lock: the one that holds `lcfs.lock.break`
 * (created the same way). Without it, a contender that judged the lock stale a moment ago could
 * remove the lock another contender has just taken, and both would win.
 */

export const LOCK_FILE_NAME = 'lcfs.lock';

export class DataDirLockedError extends AgentError {
  readonly lockPath: string;
  readonly ownerPid: number;

  constructor(lockPath: string, ownerPid: number) {
    super(
      'LCFS_EDATADIR_LOCKED',
      `data directory is in use by another lcfs agent (pid ${ownerPid}); lock file ${lockPath}. ` +
        'Stop that agent, or use another dataDir.',
    );
    this.name = 'DataDirLockedError';
    this.lockPath = lockPath;
    this.ownerPid = ownerPid;
  }
}

export interface DataDirLock {
  readonly path: string;
  /** The pid of the crashed agent whose stale lock was taken over, if any. */
  readonly takenOverFromPid: number | undefined;
  /** Removes the lock file if it is still ours. Safe to call more than once. */
  release(): Promise<void>;
}

/** Attempts before giving up when other agents keep creating and breaking locks around us. */
const MAX_ATTEMPTS = 50;
/** A breaker file this old was left by an agent that crashed while breaking a lock. */
const BREAKER_STALE_MS = 10_000;

function isErrno(err: unknown, code: string): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === code;
}

function isRunning(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to another user.
    return !isErrno(err, 'ESRCH');
  }
}

/** The lock's text, or undefined if there is no lock file. */
async function readLockText(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw err;
  }
}

/** A name beside the lock that no other attempt, in this process or another, will use. */
function scratchName(path: string, purpose: string): string {
  return `${path}.${purpose}.${process.pid}.${randomBytes(4).toString('hex')}`;
}

function parsePid(text: string): number | undefined {
  const pid = Number(text.trim());
  return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
}

/**
 * Removes the lock if it still holds `staleText`, as the one breaker. A contender that finds
 * another breaking returns to try again: by then the lock is gone, or someone else's.
 */
async function breakStaleLock(path: string, staleText: string): Promise<void> {
  const breaker = `${path}.break`;
  const draft = scratchName(path, 'breaker');
  await writeFile(draft, `${process.pid}\n`);
  try {
    try {
      await link(draft, breaker);
    } catch (err) {
      if (!isErrno(err, 'EEXIST')) throw err;
      const since = await stat(breaker).then(
        (info) => Date.now() - info.mtimeMs,
        () => 0,
      );
      if (since > BREAKER_STALE_MS) await unlink(breaker).catch(() => undefined);
      await sleep(5);
      return;
    }
    try {
      // Only the breaker unlinks the lock, so it cannot change between this read and unlink.
      if ((await readLockText(path)) === staleText) await unlink(path);
    } finally {
      await unlink(breaker);
    }
  } finally {
    await unlink(draft);
  }
}

/** Takes the data directory lock, or throws DataDirLockedError naming the running owner. */
export async function lockDataDir(dataDir: string): Promise<DataDirLock> {
  const path = join(dataDir, LOCK_FILE_NAME);
  const ownText = `${process.pid}\n`;
  const draft = scratchName(path, 'new');
  let takenOverFromPid: number | undefined;

  await writeFile(draft, ownText, { mode: 0o644 });
  try {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      try {
        await link(draft, path);
        return {
          path,
          takenOverFromPid,
          release: async () => {
            if ((await readLockText(path)) === ownText) await unlink(path);
          },
        };
      } catch (err) {
        if (!isErrno(err, 'EEXIST')) throw err;
      }
      const text = await readLockText(path);
      if (text === undefined) continue; // released between our link and our read
      const pid = parsePid(text);
      if (pid !== undefined && isRunning(pid)) throw new DataDirLockedError(path, pid);
      await breakStaleLock(path, text);
      takenOverFromPid = pid;
    }
    throw new AgentError(
      'LCFS_EDATADIR_CONTENDED',
      `could not take the lock ${path}: other agents keep racing for it`,
    );
  } finally {
    await unlink(draft);
  }
}
