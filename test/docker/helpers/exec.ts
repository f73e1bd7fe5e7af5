/** Running host commands for the Docker tests: argv in, exit status and output back. */
import { spawn, spawnSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';

export interface ExecResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  input?: string | Buffer;
  env?: Record<string, string>;
  cwd?: string;
  timeoutMs?: number;
}

/** Runs argv to completion; never throws on a non-zero exit (it throws if argv[0] cannot run). */
export function exec(argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), {
      cwd: opts.cwd ?? '/',
      env: { ...process.env, LC_ALL: 'C', TZ: 'UTC', ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const timeoutMs = opts.timeoutMs ?? 120_000;
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      stderr += `\n[killed after ${timeoutMs} ms]`;
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
  });
}

export function describeResult(argv: string[], r: ExecResult): string {
  return (
    `$ ${argv.join(' ')}\n(exit ${r.code}${r.signal ? `, signal ${r.signal}` : ''})\n` +
    `--- stdout\n${r.stdout}--- stderr\n${r.stderr}`
  );
}

/** Runs argv; throws with its whole output unless it exits 0. Resolves to stdout. */
export async function execOk(argv: string[], opts: ExecOptions = {}): Promise<string> {
  const r = await exec(argv, opts);
  if (r.code !== 0) throw new Error(`command failed:\n${describeResult(argv, r)}`);
  return r.stdout;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `probe` until it returns a value other than undefined, or throws after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs: number,
  intervalMs = 200,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

/** mountinfo escapes space, tab, newline and backslash as octal. */
function unescapeMount(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

function parseMountinfo(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split('\n')) {
    if (line) out.push(unescapeMount(line.split(' ')[4]));
  }
  return out;
}

/** Mount points at `path` or below it, in mount order. */
export async function mountsUnder(path: string): Promise<string[]> {
  return parseMountinfo(await readFile('/proc/self/mountinfo', 'utf8')).filter(
    (m) => m === path || m.startsWith(path + '/'),
  );
}

/** `umount -l` on everything mounted at or under `path`, deepest (latest) first. */
export async function unmountAllUnder(path: string): Promise<string[]> {
  const mounts = (await mountsUnder(path)).reverse();
  for (const m of mounts) await exec(['umount', '-l', m]);
  const left = await mountsUnder(path);
  if (left.length > 0) throw new Error(`still mounted after umount -l: ${left.join(', ')}`);
  return mounts;
}

/** The same, synchronously: for a process 'exit' handler, where nothing async runs. */
export function unmountAllUnderSync(path: string): void {
  let text: string;
  try {
    text = spawnSync('cat', ['/proc/self/mountinfo'], { encoding: 'utf8' }).stdout;
  } catch {
    return;
  }
  const mounts = parseMountinfo(text)
    .filter((m) => m === path || m.startsWith(path + '/'))
    .reverse();
  for (const m of mounts) spawnSync('umount', ['-l', m]);
}

/** Whether a process with this pid exists (and is not a zombie we could reap). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Last-resort cleanup for a test process that dies without running its `after` hooks: each
 * harness registers what to kill and unmount, synchronously, on process exit.
 */
const exitCleanups = new Set<() => void>();
let exitHookInstalled = false;

export function onProcessExit(cleanup: () => void): () => void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const fn of [...exitCleanups].reverse()) {
        try {
          fn();
        } catch {
          // best effort
        }
      }
    });
  }
  exitCleanups.add(cleanup);
  return () => exitCleanups.delete(cleanup);
}
