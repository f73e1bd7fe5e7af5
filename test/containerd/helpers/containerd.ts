/**
 * A private containerd 1.6 (Debian's docker.io) for the containerd tests and benchmark: its own
 * config, root, state and sockets under one temp dir, the CRI plugin off, and the proxy
 * snapshotters it is given.
 *
 *   const ctd = await Containerd.start({ proxySnapshotters: { lcfs: agent.socketPath } });
 *   await ctd.ctrOk(['images', 'import', '--snapshotter', 'lcfs', tar]);
 *   await ctd.stop();      // SIGTERM, waits for the exit
 *   await ctd.start();     // again, on the same root and state
 *   await ctd.dispose();   // in `after`: stop, kill our shims, umount -l leftovers, remove the dir
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, openSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run, type RunResult } from '../../fuse/helpers/shell.js';
import {
  alive,
  onProcessExit,
  sleep,
  unmountAllUnder,
  unmountAllUnderSync,
} from '../../helpers/cleanup.js';

const READY_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 30_000;

export function describeRun(argv: string[], r: RunResult): string {
  return (
    `$ ${argv.join(' ')}\n(exit ${r.code}${r.signal ? `, signal ${r.signal}` : ''})\n` +
    `--- stdout\n${r.stdout}--- stderr\n${r.stderr}`
  );
}

/**
 * Pids of containerd shims serving this containerd: they outlive it by design, and name its
 * address on their command line (`-address <sock>`).
 */
export async function shimPidsFor(address: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let argv: string[];
    try {
      argv = (await readFile(`/proc/${entry}/cmdline`, 'utf8')).split('\0');
    } catch {
      continue;
    }
    if (!argv[0]?.includes('containerd-shim')) continue;
    const at = argv.indexOf('-address');
    if (at >= 0 && argv[at + 1] === address) pids.push(Number(entry));
  }
  return pids;
}

export interface ContainerdOptions {
  /** Proxy snapshotter plugins: name → unix socket. */
  proxySnapshotters?: Record<string, string>;
  /** A label for the temp dir's name. */
  label?: string;
  /** TOML appended to the generated config. */
  extraConfig?: string;
}

export class Containerd {
  readonly dir: string;
  readonly root: string;
  readonly state: string;
  readonly address: string;
  readonly configPath: string;
  readonly logPath: string;
  private child: ChildProcess | undefined;
  private exited: Promise<unknown> | undefined;
  private unregisterExit: (() => void) | undefined;

  private constructor(dir: string) {
    this.dir = dir;
    this.root = join(dir, 'root');
    this.state = join(dir, 'state');
    this.address = join(dir, 'containerd.sock');
    this.configPath = join(dir, 'config.toml');
    this.logPath = join(dir, 'containerd.log');
  }

  /** The config a private instance runs with. */
  static configText(c: Containerd, opts: ContainerdOptions): string {
    const q = (s: string): string => JSON.stringify(s);
    const proxies = Object.entries(opts.proxySnapshotters ?? {})
      .map(
        ([name, socket]) =>
          `[proxy_plugins.${q(name)}]\n  type = "snapshot"\n  address = ${q(socket)}\n`,
      )
      .join('');
    return (
      `version = 2\n` +
      `root = ${q(c.root)}\n` +
      `state = ${q(c.state)}\n` +
      // No CRI (no CNI, no streaming port), and no snapshotter this machine cannot run.
      `disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", ` +
      `"io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", ` +
      `"io.containerd.snapshotter.v1.devmapper"]\n\n` +
      `[grpc]\n  address = ${q(c.address)}\n\n` +
      `[ttrpc]\n  address = ${q(`${c.address}.ttrpc`)}\n\n` +
      `[plugins]\n  [plugins."io.containerd.internal.v1.opt"]\n    path = ${q(join(c.root, 'opt'))}\n\n` +
      proxies +
      (opts.extraConfig ?? '')
    );
  }

  /**
   * Makes the dir and writes the config (`configText(c)` when given, else the generated one),
   * without starting containerd.
   */
  static async create(
    opts: ContainerdOptions & { configText?: (c: Containerd) => string } = {},
  ): Promise<Containerd> {
    const dir = await mkdtemp(join(tmpdir(), `lcfs-ctd-${opts.label ?? 't'}-`));
    const c = new Containerd(dir);
    await mkdir(c.root, { recursive: true });
    await mkdir(c.state, { recursive: true });
    await writeFile(c.configPath, opts.configText?.(c) ?? Containerd.configText(c, opts));
    return c;
  }

  static async start(opts: ContainerdOptions = {}): Promise<Containerd> {
    const c = await Containerd.create(opts);
    try {
      await c.start();
    } catch (err) {
      await c.dispose();
      throw err;
    }
    return c;
  }

  get running(): boolean {
    return (
      this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null
    );
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  async start(): Promise<void> {
    if (this.running) throw new Error('containerd already running');
    const log = openSync(this.logPath, 'a');
    const child = spawn('containerd', ['--config', this.configPath], {
      stdio: ['ignore', log, log],
      env: { ...process.env, TMPDIR: this.dir },
    });
    closeSync(log);
    this.child = child;
    this.exited = once(child, 'exit');
    this.unregisterExit?.();
    const { root, state } = this;
    this.unregisterExit = onProcessExit(() => {
      if (child.pid !== undefined && alive(child.pid)) process.kill(child.pid, 'SIGKILL');
      unmountAllUnderSync(root);
      unmountAllUnderSync(state);
    });
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      if (!this.running) throw new Error(`containerd exited at start:\n${await this.logTail()}`);
      const r = await run(['ctr', '--address', this.address, 'version'], { timeoutMs: 10_000 });
      if (r.code === 0 && /Server:/.test(r.stdout)) return;
      if (Date.now() > deadline)
        throw new Error(`containerd not ready in ${READY_TIMEOUT_MS} ms:\n${await this.logTail()}`);
      await sleep(100);
    }
  }

  /** SIGTERM by pid, then waits for the exit (SIGKILL after a timeout). */
  async stop(): Promise<void> {
    const child = this.child;
    if (!child || !this.running) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    await this.exited;
    clearTimeout(timer);
  }

  /** `ctr --address <ours> …`; never throws on a non-zero exit. */
  ctr(args: string[], timeoutMs = 120_000): Promise<RunResult> {
    return run(['ctr', '--address', this.address, ...args], {
      timeoutMs,
      env: { CONTAINERD_NAMESPACE: 'default', CONTAINERD_SNAPSHOTTER: '' },
    });
  }

  /** `ctr …`; throws with the whole output and the log's tail unless it exits 0. */
  async ctrOk(args: string[], timeoutMs?: number): Promise<string> {
    const r = await this.ctr(args, timeoutMs);
    if (r.code !== 0)
      throw new Error(
        `ctr failed:\n${describeRun(['ctr', ...args], r)}\n--- containerd log\n${await this.logTail()}`,
      );
    return r.stdout;
  }

  async logTail(lines = 30): Promise<string> {
    try {
      return (await readFile(this.logPath, 'utf8')).split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  /** For `after`: stops containerd, kills its shims, unmounts leftovers, removes the dir. */
  async dispose(): Promise<void> {
    await this.stop();
    for (const pid of await shimPidsFor(this.address)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    await unmountAllUnder(this.root);
    await unmountAllUnder(this.state);
    this.unregisterExit?.();
    this.unregisterExit = undefined;
    await rm(this.dir, { recursive: true, force: true });
  }
}
