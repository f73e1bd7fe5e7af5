/**
 * A real daemon binary run by a test on loopback ports, which the test can stop and start again
 * with the same argv (so the same ports and data): the base of the registry and etcd helpers.
 *
 *   const [port] = await freePorts(1);
 *   const daemon = new Daemon({
 *     name: 'etcd',
 *     argv: ['/usr/bin/etcd', '--listen-client-urls', `http://127.0.0.1:${port}`, ...],
 *     stdoutPath: log, stderrPath: log,
 *     ready: async () => (await fetch(`http://127.0.0.1:${port}/health`)).ok,
 *   });
 *   await daemon.start();              // spawns, polls `ready`; fails with the log if it exits
 *   await daemon.stop();               // SIGTERM (SIGKILL after a timeout); stop('SIGKILL') too
 *   await daemon.start();              // the same argv again
 *
 * A test process that dies without stopping it still SIGKILLs it on exit (onProcessExit).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, openSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { waitFor } from '../docker/helpers/exec.js';
import { alive, onProcessExit } from './cleanup.js';

const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;

/**
 * `count` distinct ports that were free on 127.0.0.1 a moment ago. All are held open until every
 * one is assigned, so two of them are never the same port.
 */
export async function freePorts(count: number): Promise<number[]> {
  const servers: Server[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const server = createServer();
      servers.push(server);
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
    }
    return servers.map((server) => {
      const address = server.address();
      if (address === null || typeof address === 'string') throw new Error('no port');
      return address.port;
    });
  } finally {
    for (const server of servers) server.close();
  }
}

export interface DaemonSpec {
  /** Names the daemon in errors. */
  name: string;
  /** The binary and its arguments, the same on every start. */
  argv: string[];
  /** Files that receive stdout and stderr, appended to across starts (may be the same file). */
  stdoutPath: string;
  stderrPath: string;
  /** Whether the daemon serves yet; polled after each start (a throw counts as "not yet"). */
  ready: () => Promise<boolean>;
}

export class Daemon {
  private child: ChildProcess | undefined;
  private exited: Promise<unknown> = Promise.resolve();
  private unregisterExit: () => void = () => undefined;

  constructor(readonly spec: DaemonSpec) {}

  get running(): boolean {
    const child = this.child;
    return child !== undefined && child.exitCode === null && child.signalCode === null;
  }

  get pid(): number | undefined {
    return this.running ? this.child?.pid : undefined;
  }

  /** Spawns the daemon and waits until `ready`; on failure, kills it and throws with its log. */
  async start(): Promise<void> {
    if (this.running) throw new Error(`${this.spec.name} is already running`);
    const [bin, ...args] = this.spec.argv;
    const stdout = openSync(this.spec.stdoutPath, 'a');
    const stderr =
      this.spec.stderrPath === this.spec.stdoutPath ? stdout : openSync(this.spec.stderrPath, 'a');
    const child = spawn(bin, args, { stdio: ['ignore', stdout, stderr] });
    closeSync(stdout);
    if (stderr !== stdout) closeSync(stderr);
    this.child = child;
    this.exited = once(child, 'exit').catch(() => undefined);
    const pid = child.pid;
    this.unregisterExit();
    this.unregisterExit = onProcessExit(() => {
      if (pid !== undefined && alive(pid)) process.kill(pid, 'SIGKILL');
    });
    try {
      await waitFor(
        `${this.spec.name} to serve`,
        async () => {
          if (!this.running) throw new Error(`${this.spec.name} exited during start`);
          return (await this.spec.ready().catch(() => false)) ? true : undefined;
        },
        START_TIMEOUT_MS,
        100,
      );
    } catch (err) {
      await this.stop('SIGKILL');
      throw new Error(`${(err as Error).message}\n--- log\n${await this.logTail()}`, {
        cause: err,
      });
    }
  }

  /** Signals the daemon and waits for it to exit; SIGKILL if SIGTERM takes too long. */
  async stop(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
    const child = this.child;
    if (child !== undefined && this.running) {
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
      await this.exited;
      clearTimeout(timer);
    }
    this.unregisterExit();
  }

  /** The last lines of its stdout and stderr, for error messages. */
  async logTail(lines = 30): Promise<string> {
    const paths = [...new Set([this.spec.stdoutPath, this.spec.stderrPath])];
    const tails = await Promise.all(
      paths.map(async (path) => {
        const text = await readFile(path, 'utf8').catch(() => '(no log)');
        return `${path}:\n${text.split('\n').slice(-lines).join('\n')}`;
      }),
    );
    return tails.join('\n');
  }
}
