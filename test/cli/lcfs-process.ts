import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';

/** Helpers to run the `lcfs` CLI from its TypeScript sources (bin/dev.js) as a real process. */

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const DEV_BIN = fileURLToPath(new URL('../../bin/dev.js', import.meta.url));

/** The caller's environment without LCFS_* settings, which would change what the test sees. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (!name.startsWith('LCFS_') && name !== 'NODE_ENV') env[name] = value;
  }
  return { ...env, ...extra };
}

export interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs `bin` with `args` to completion. */
export async function runToEnd(
  bin: string,
  args: string[],
  env: NodeJS.ProcessEnv = cleanEnv(),
): Promise<Finished> {
  const child = spawn(bin, args, { env, cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const [code, signal] = (await once(child, 'close')) as [number | null, NodeJS.Signals | null];
  return { code, signal, stdout, stderr };
}

export type LogLine = Record<string, unknown> & { msg?: string; level?: number };

/**
 * A running `lcfs agent`: collects its JSON log lines from stdout, and fails the test if it
 * writes anything on stdout that is not JSON.
 */
export class AgentProcess {
  readonly child: ChildProcess;
  readonly logs: LogLine[] = [];
  readonly nonJsonLines: string[] = [];
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly waiters = new Set<() => void>();
  private closed = false;

  constructor(args: string[], env: NodeJS.ProcessEnv = cleanEnv()) {
    this.child = spawn(DEV_BIN, ['agent', ...args], {
      env,
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let pending = '';
    this.child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      pending += chunk;
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) this.take(line);
    });
    this.child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (this.stderr += chunk));
    this.exited = once(this.child, 'close').then(([code, signal]) => {
      if (pending !== '') this.take(pending);
      this.closed = true;
      this.notify();
      return { code: code as number | null, signal: signal as NodeJS.Signals | null };
    });
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error('agent process did not spawn');
    return this.child.pid;
  }

  private take(line: string): void {
    if (line.trim() === '') return;
    try {
      this.logs.push(JSON.parse(line) as LogLine);
    } catch {
      this.nonJsonLines.push(line);
    }
    this.notify();
  }

  private notify(): void {
    for (const wake of this.waiters) wake();
  }

  /** Resolves with the first log line whose msg is `msg`; rejects if the agent exits first. */
  async waitForLog(msg: string, timeoutMs = 30_000): Promise<LogLine> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.logs.find((line) => line.msg === msg);
      if (found) return found;
      if (this.closed) {
        throw new Error(
          `agent exited before logging "${msg}"; logs: ${JSON.stringify(this.logs)}; stderr: ${this.stderr}`,
        );
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no "${msg}" log line within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          clearTimeout(timer);
          this.waiters.delete(wake);
          resolve();
        };
        const timer = setTimeout(wake, left);
        this.waiters.add(wake);
      });
    }
  }

  /** SIGKILLs the agent if it still runs; for test cleanup. */
  async kill(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGKILL');
    }
    await this.exited;
  }
}
