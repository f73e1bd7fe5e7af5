import { randomBytes } from 'node:crypto';
import { link, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AgentError } from './errors.js';

/**
 * One agent per data directory: the store's metadata database would accept a second writer
 * process, and two agents would then fight over the same layers and mountpoint.
 *
 * The lock is the file `<dataDir>/lcfs.lock` holding the owner's pid. It is created whole with
 * link(2), which fails if the name exists, so no reader ever sees it empty. A lock whose pid is
 * no longer running is stale (the owner crashed) and is taken over.
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
const MAX_ATTEMPTS = 5;

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
 * Moves a stale lock aside, but only if it is still the one we judged stale: another agent may
 * have broken it and written its own in the meantime, and that one must be put back.
 */
async function breakStaleLock(path: string, staleText: string): Promise<void> {
  const aside = scratchName(path, 'stale');
  try {
    await rename(path, aside);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return;
    throw err;
  }
  if ((await readLockText(aside)) !== staleText) {
    try {
      await link(aside, path);
    } catch (err) {
      if (!isErrno(err, 'EEXIST')) throw err;
    }
  }
  await unlink(aside);
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
