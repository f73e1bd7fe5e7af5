/**
 * `lcfs agent` as a real process serving a Docker graph driver plugin, for the Docker tests.
 *
 *   const agent = await LcfsAgent.start();     // temp data dir, plugin name lcfs-t<random>
 *   ... dockerd -s agent.pluginName ...
 *   await agent.stop();                        // SIGTERM; asserts exit 0
 *   await agent.start();                       // again, on the same data dir
 *   await agent.dispose();                     // in `after`: kill, unmount, remove the temp dir
 *
 * Every start's log lines are kept (`logs`, `logText()`), so a failing test can show them.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentProcess, cleanEnv, type LogLine } from '../cli/lcfs-process.js';
import {
  alive,
  mountsUnder,
  onProcessExit,
  unmountAllUnder,
  unmountAllUnderSync,
} from './cleanup.js';

const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 60_000;

/** A fresh plugin name, so test files never share a socket in /run/docker/plugins. */
export function uniquePluginName(): string {
  return `lcfs-t${randomBytes(4).toString('hex')}`;
}

export interface AgentOptions {
  /** Reuse this data dir (it is not removed by dispose); default a new temp dir. */
  dataDir?: string;
  pluginName?: string;
  logLevel?: 'trace' | 'debug' | 'info' | 'warn' | 'error';
  /** More flags (cluster, mirror); they override the defaults below. */
  args?: readonly string[];
}

export class LcfsAgent {
  readonly pluginName: string;
  readonly dataDir: string;
  readonly mountpoint: string;
  /** The Docker plugin's socket, in /run/docker/plugins where dockerd looks. */
  readonly socketPath: string;
  /** The containerd snapshotter's socket, private to this agent. */
  readonly snapshotterSocket: string;
  private current: AgentProcess | undefined;
  private runs: AgentProcess[] = [];
  private readonly ownsDataDir: boolean;
  private readonly logLevel: string;
  private readonly extraArgs: readonly string[];
  /** Where the last run's registry mirror and API listen, and its libp2p peer id. */
  mirrorAddress: string | undefined;
  apiAddress: string | undefined;
  peerId: string | undefined;
  private unregisterExit: (() => void) | undefined;

  private constructor(dataDir: string, ownsDataDir: boolean, opts: AgentOptions) {
    this.pluginName = opts.pluginName ?? uniquePluginName();
    this.dataDir = dataDir;
    this.ownsDataDir = ownsDataDir;
    this.mountpoint = join(dataDir, 'mnt');
    this.socketPath = `/run/docker/plugins/${this.pluginName}.sock`;
    this.snapshotterSocket = join(dataDir, 'snapshotter.sock');
    this.logLevel = opts.logLevel ?? 'info';
    this.extraArgs = opts.args ?? [];
  }

  static async start(opts: AgentOptions = {}): Promise<LcfsAgent> {
    const owns = opts.dataDir === undefined;
    const dataDir = opts.dataDir ?? (await mkdtemp(join(tmpdir(), 'lcfs-docker-agent-')));
    const agent = new LcfsAgent(dataDir, owns, opts);
    try {
      await agent.start();
    } catch (err) {
      await agent.dispose();
      throw err;
    }
    return agent;
  }

  get running(): boolean {
    const child = this.current?.child;
    return child !== undefined && child.exitCode === null && child.signalCode === null;
  }

  /** How many times the agent was started (1 for the first run). */
  get runCount(): number {
    return this.runs.length;
  }

  get pid(): number {
    if (!this.current) throw new Error('agent not started');
    return this.current.pid;
  }

  /** Starts the agent on the data dir and waits for "agent started". */
  async start(): Promise<void> {
    if (this.running) throw new Error('agent already running');
    const proc = new AgentProcess(
      [
        '--data-dir',
        this.dataDir,
        '--docker-plugin-socket',
        this.socketPath,
        // Private, so that no other agent on the machine (or test) shares it.
        '--snapshotter-socket',
        this.snapshotterSocket,
        '--log-level',
        this.logLevel,
        // Ports the system picks, so agents never collide; the started line says which.
        '--mirror-address',
        '127.0.0.1:0',
        '--api-address',
        '127.0.0.1:0',
        ...this.extraArgs,
      ],
      cleanEnv(),
    );
    this.runs.push(proc);
    this.current = proc;
    this.unregisterExit?.();
    const pid = proc.child.pid;
    const mnt = this.mountpoint;
    this.unregisterExit = onProcessExit(() => {
      if (pid !== undefined && alive(pid)) process.kill(pid, 'SIGKILL');
      unmountAllUnderSync(mnt);
    });
    const started = await proc.waitForLog('agent started', START_TIMEOUT_MS);
    this.mirrorAddress = started.mirrorAddress as string | undefined;
    this.apiAddress = started.apiAddress as string | undefined;
    this.peerId = started.peerId as string | undefined;
  }

  /** SIGTERM, then waits; throws unless the agent exits 0 and leaves its mount unmounted. */
  async stop(): Promise<void> {
    const proc = this.current;
    if (!proc || !this.running) throw new Error('agent not running');
    proc.child.kill('SIGTERM');
    const timer = setTimeout(() => proc.child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    const { code, signal } = await proc.exited;
    clearTimeout(timer);
    if (code !== 0) {
      throw new Error(
        `agent did not stop cleanly on SIGTERM: exit ${code}, signal ${signal}\n` +
          `stderr: ${proc.stderr}\nlast logs:\n${this.logText(40)}`,
      );
    }
    const left = await mountsUnder(this.mountpoint);
    if (left.length > 0) throw new Error(`agent exited 0 but left mounts: ${left.join(', ')}`);
  }

  /** SIGTERM (checked as in `stop`), then a new run on the same data dir. */
  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** SIGKILL, as a crash: the FUSE mount is left stale, for the next start to clear. */
  async kill(): Promise<void> {
    if (!this.current) return;
    await this.current.kill();
  }

  /** How the last run ended, once it has. */
  async exited(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (!this.current) throw new Error('agent not started');
    return this.current.exited;
  }

  /** Log lines of every run, in order, each tagged with its run number (1, 2, ...). */
  get logs(): Array<LogLine & { run: number }> {
    return this.runs.flatMap((p, i) => p.logs.map((line) => ({ ...line, run: i + 1 })));
  }

  get stderr(): string {
    return this.runs.map((p, i) => (p.stderr ? `[run ${i + 1}] ${p.stderr}` : '')).join('');
  }

  /** The last `n` log lines as text, for failure messages. */
  logText(n = 60): string {
    return this.logs
      .slice(-n)
      .map((l) => JSON.stringify(l))
      .join('\n');
  }

  /** Lines at level warn (40) or above. */
  problems(): Array<LogLine & { run: number }> {
    return this.logs.filter((l) => (l.level ?? 0) >= 40);
  }

  /** Names of the files under the store's chunk folders (sealed/<xx>/* and mutable/*). */
  async chunkFiles(): Promise<string[]> {
    const base = join(this.dataDir, 'store', 'chunks');
    const out: string[] = [];
    const walk = async (dir: string): Promise<void> => {
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw err;
      }
      for (const e of entries) {
        const p = join(dir, e.name);
        if (e.isDirectory()) await walk(p);
        else out.push(p.slice(base.length + 1));
      }
    };
    await walk(join(base, 'sealed'));
    await walk(join(base, 'mutable'));
    return out.sort();
  }

  /** For `after`: kills a still-running agent, clears its mount and removes its temp dir. */
  async dispose(): Promise<void> {
    if (this.running) await this.kill();
    await unmountAllUnder(this.mountpoint);
    this.unregisterExit?.();
    this.unregisterExit = undefined;
    // A killed agent leaves its socket in /run/docker/plugins.
    await rm(this.socketPath, { force: true });
    if (this.ownsDataDir) await rm(this.dataDir, { recursive: true, force: true });
  }
}
