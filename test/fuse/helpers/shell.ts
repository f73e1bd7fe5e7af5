/** Shell tools, other users, mount table and errno assertions for the FUSE tests. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface ShOptions {
  /** Run as this uid (and `gid`, default the same) with no supplementary groups, via setpriv. */
  uid?: number;
  gid?: number;
  cwd?: string;
  env?: Record<string, string>;
  input?: string | Buffer;
  timeoutMs?: number;
}

/** The unprivileged user the tests act as (exists in /etc/passwd on this image). */
export const USER = { uid: 1000, gid: 1000 };

/** Debian's python3, which every uid can run (the pyenv shim in root's PATH is root-only). */
export const PYTHON = '/usr/bin/python3';

/** Runs `script` with bash -e -o pipefail; never throws on a non-zero exit. */
export function sh(script: string, opts: ShOptions = {}): Promise<RunResult> {
  const bash = ['bash', '-e', '-o', 'pipefail', '-c', script];
  const argv =
    opts.uid === undefined
      ? bash
      : [
          'setpriv',
          `--reuid=${opts.uid}`,
          `--regid=${opts.gid ?? opts.uid}`,
          '--clear-groups',
          ...bash,
        ];
  return run(argv, opts);
}

export function run(argv: string[], opts: ShOptions = {}): Promise<RunResult> {
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
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      stderr += `\n[killed after ${opts.timeoutMs} ms]`;
    }, opts.timeoutMs ?? 60_000);
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

/** Runs `script`; fails the test with its output unless it exits 0. Resolves to stdout. */
export async function shOk(script: string, opts: ShOptions = {}): Promise<string> {
  const r = await sh(script, opts);
  if (r.code !== 0) {
    assert.fail(
      `command failed (code ${r.code}, signal ${r.signal})${opts.uid !== undefined ? ` as uid ${opts.uid}` : ''}:\n` +
        `$ ${script}\n--- stdout\n${r.stdout}--- stderr\n${r.stderr}`,
    );
  }
  return r.stdout;
}

/** Runs `script`, which must fail, and whose stderr must show `strerror` (e.g. 'Permission denied'). */
export async function shFails(
  script: string,
  strerror: string,
  opts: ShOptions = {},
): Promise<RunResult> {
  const r = await sh(script, opts);
  assert.notEqual(
    r.code,
    0,
    `expected failure with "${strerror}" but it succeeded:\n$ ${script}\n${r.stdout}`,
  );
  assert.ok(
    r.stderr.includes(strerror),
    `expected "${strerror}" from:\n$ ${script}\n--- stderr\n${r.stderr}--- stdout\n${r.stdout}`,
  );
  return r;
}

/**
 * Runs a python3 snippet (Debian's /usr/bin/python3) and returns its stdout. An OSError it does
 * not catch fails the test with the errno name; use `errno_of(fn)` in the snippet to print one.
 */
export async function py(code: string, opts: ShOptions = {}): Promise<string> {
  const prelude = [
    'import os, sys, errno, mmap, stat',
    'def errno_of(fn, *a, **k):',
    '    try:',
    '        fn(*a, **k)',
    "        return 'OK'",
    '    except OSError as e:',
    '        return errno.errorcode[e.errno]',
    '',
  ].join('\n');
  const script = `${prelude}\n${code}`;
  const argv =
    opts.uid === undefined
      ? [PYTHON, '-c', script]
      : [
          'setpriv',
          `--reuid=${opts.uid}`,
          `--regid=${opts.gid ?? opts.uid}`,
          '--clear-groups',
          PYTHON,
          '-c',
          script,
        ];
  const r = await run(argv, opts);
  if (r.code !== 0)
    assert.fail(
      `python3 failed (code ${r.code}):\n${code}\n--- stderr\n${r.stderr}--- stdout\n${r.stdout}`,
    );
  return r.stdout;
}

/** Single-quotes a string for bash. */
export function q(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** mountinfo escapes space, tab, newline and backslash as octal. */
function unescapeMount(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export interface MountEntry {
  mountpoint: string;
  fstype: string;
  source: string;
  options: string;
}

export async function mountTable(): Promise<MountEntry[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const [left, right] = line.split(' - ');
    const f = left.split(' ');
    const r = (right ?? '').split(' ');
    out.push({ mountpoint: unescapeMount(f[4]), options: f[5], fstype: r[0], source: r[1] });
  }
  return out;
}

/** Mount points at `path` or below it, in mount order. */
export async function mountsUnder(path: string): Promise<string[]> {
  return (await mountTable())
    .map((m) => m.mountpoint)
    .filter((m) => m === path || m.startsWith(path + '/'));
}

export async function mountAt(path: string): Promise<MountEntry | undefined> {
  return (await mountTable()).filter((m) => m.mountpoint === path).pop();
}

/** `umount -l`; for stale mounts a test left behind. */
export async function lazyUnmount(path: string): Promise<void> {
  const r = await run(['umount', '-l', path]);
  if (r.code !== 0 && (await mountsUnder(path)).includes(path)) {
    throw new Error(`umount -l ${path} failed: ${r.stderr}`);
  }
}

/** Awaits `p` (or calls `fn`), which must reject with a Node errno error of `code`. */
export async function expectErrno(
  what: string,
  p: Promise<unknown> | (() => Promise<unknown>),
  code: string,
): Promise<void> {
  let err: NodeJS.ErrnoException | undefined;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e as NodeJS.ErrnoException;
  }
  if (!err) assert.fail(`${what}: expected ${code}, but it succeeded`);
  assert.equal(err.code, code, `${what}: expected ${code}, got ${err.code}: ${err.message}`);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
