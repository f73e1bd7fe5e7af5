/**
 * Process and mount cleanup shared by the integration harnesses (dockerd, containerd, agents):
 * every test stops what it starts, and a test process that dies without running its `after`
 * hooks still kills its daemons and lazily unmounts what they left.
 */
import { execFile, spawnSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';

const run = promisify(execFile);

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Whether a process with this pid exists. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Mount points listed in mountinfo; it escapes space, tab, newline and backslash as octal. */
function mountPoints(mountinfo: string): string[] {
  return mountinfo
    .split('\n')
    .filter(Boolean)
    .map((line) =>
      line
        .split(' ')[4]
        .replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))),
    );
}

const under = (path: string) => (m: string) => m === path || m.startsWith(path + '/');

/** Mount points at `path` or below it, in mount order. */
export async function mountsUnder(path: string): Promise<string[]> {
  return mountPoints(await readFile('/proc/self/mountinfo', 'utf8')).filter(under(path));
}

/** `umount -l` on everything mounted at or under `path`, deepest (latest) first. */
export async function unmountAllUnder(path: string): Promise<string[]> {
  const mounts = (await mountsUnder(path)).reverse();
  for (const m of mounts) await run('umount', ['-l', m]).catch(() => undefined);
  const left = await mountsUnder(path);
  if (left.length > 0) throw new Error(`still mounted after umount -l: ${left.join(', ')}`);
  return mounts;
}

/** The same, synchronously: for a process 'exit' handler, where nothing async runs. */
export function unmountAllUnderSync(path: string): void {
  const text = spawnSync('cat', ['/proc/self/mountinfo'], { encoding: 'utf8' }).stdout ?? '';
  for (const m of mountPoints(text).filter(under(path)).reverse()) spawnSync('umount', ['-l', m]);
}

const exitCleanups = new Set<() => void>();
let exitHookInstalled = false;

/** Registers a synchronous last-resort cleanup for process exit; returns its unregister. */
export function onProcessExit(cleanup: () => void): () => void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const fn of [...exitCleanups].reverse()) {
        try {
          fn();
        } catch {
          // best effort: the process is going anyway
        }
      }
    });
  }
  exitCleanups.add(cleanup);
  return () => exitCleanups.delete(cleanup);
}
