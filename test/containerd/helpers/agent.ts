/**
 * `lcfs agent` as a real process serving the containerd snapshotter, its sockets and FUSE volume
 * in its data dir:
 *
 *   const agent = await SnapshotterAgent.start();   // temp data dir
 *   agent.socketPath;                               // <dataDir>/snap.sock, for containerd's config
 *   await agent.restart();                          // SIGTERM (asserts exit 0), start again
 *   await agent.dispose();                          // in `after`: stop, unmount, remove the dir
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentProcess, cleanEnv } from '../../cli/lcfs-process.js';
import {
  alive,
  mountsUnder,
  onProcessExit,
  unmountAllUnder,
  unmountAllUnderSync,
} from '../../helpers/cleanup.js';

const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 60_000;

export class SnapshotterAgent {
  readonly dataDir: string;
  readonly mountpoint: string;
  readonly socketPath: string;
  private current: AgentProcess | undefined;
  private readonly runs: AgentProcess[] = [];
  private unregisterExit: (() => void) | undefined;

  private constructor(dataDir: string) {
    this.dataDir = dataDir;
    this.mountpoint = join(dataDir, 'mnt');
    this.socketPath = join(dataDir, 'snap.sock');
  }

  static async start(label = 'agent'): Promise<SnapshotterAgent> {
    const agent = new SnapshotterAgent(await mkdtemp(join(tmpdir(), `lcfs-ctd-${label}-`)));
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

  async start(): Promise<void> {
    if (this.running) throw new Error('agent already running');
    const proc = new AgentProcess(
      [
        '--data-dir',
        this.dataDir,
        '--docker-plugin-socket',
        join(this.dataDir, 'docker.sock'),
        '--snapshotter-socket',
        this.socketPath,
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
    await proc.waitForLog('agent started', START_TIMEOUT_MS);
  }

  /** SIGTERM, then waits; throws unless the agent exits 0 and leaves no mount behind. */
  async stop(): Promise<void> {
    const proc = this.current;
    if (!proc || !this.running) throw new Error('agent not running');
    proc.child.kill('SIGTERM');
    const timer = setTimeout(() => proc.child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    const { code, signal } = await proc.exited;
    clearTimeout(timer);
    if (code !== 0)
      throw new Error(
        `agent did not stop cleanly: exit ${code}, signal ${signal}\nstderr: ${proc.stderr}\n${this.logText()}`,
      );
    const left = await mountsUnder(this.mountpoint);
    if (left.length > 0) throw new Error(`agent exited 0 but left mounts: ${left.join(', ')}`);
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** Every run's log lines, for failure messages. */
  logText(n = 40): string {
    return this.runs
      .flatMap((p, i) => p.logs.map((l) => JSON.stringify({ run: i + 1, ...l })))
      .slice(-n)
      .join('\n');
  }

  /** Lines at warn (40) or above, from every run. */
  problems(): string[] {
    return this.runs.flatMap((p) =>
      p.logs.filter((l) => (l.level ?? 0) >= 40).map((l) => JSON.stringify(l)),
    );
  }

  async dispose(): Promise<void> {
    if (this.running) {
      try {
        await this.stop();
      } catch {
        await this.current?.kill();
      }
    }
    await unmountAllUnder(this.mountpoint);
    this.unregisterExit?.();
    this.unregisterExit = undefined;
    await rm(this.dataDir, { recursive: true, force: true });
  }
}
