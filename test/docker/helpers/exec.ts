/** Running host commands for the Docker tests: argv in, exit status and output back. */
import { run, type RunResult, type ShOptions } from '../../fuse/helpers/shell.js';
import { sleep } from '../../helpers/cleanup.js';

export type ExecResult = RunResult;
export type ExecOptions = Omit<ShOptions, 'uid' | 'gid'>;

/** Runs argv to completion; never throws on a non-zero exit (it throws if argv[0] cannot run). */
export function exec(argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
  return run(argv, { timeoutMs: 120_000, ...opts });
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
