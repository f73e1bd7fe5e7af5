/**
 * A private dockerd 20.10 (Debian's docker.io) for the Docker tests, with its own containerd.
 *
 *   const d = await Dockerd.start({ storageDriver: agent.pluginName, experimental: true });
 *   await d.docker(['run', '--rm', '--network', 'none', 'img', 'true']);
 *   await d.stop();        // SIGTERM to dockerd, then to its containerd; waits for both
 *   await d.start();       // again, on the same data root
 *   await d.dispose();     // in `after`: stop what runs, umount -l what is left, remove temp dirs
 *
 * Everything lives under one temp dir: dockerd's --data-root, --exec-root, --pidfile and -H
 * socket, and containerd's root, state and sockets. dockerd is given `--containerd` so it never
 * attaches to a system containerd that another test may have started at the default address.
 * `--iptables=false --bridge=none`: containers must run with `--network none`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, openSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeResult, exec, type ExecOptions, type ExecResult } from './exec.js';
import {
  alive,
  onProcessExit,
  sleep,
  unmountAllUnder,
  unmountAllUnderSync,
} from '../../helpers/cleanup.js';

/** The v28 client the tests drive dockerd with (it warns that the 20.10 API is deprecated). */
export const DOCKER_CLI = '/usr/local/bin/docker';
/** Debian's own 20.10 client, which carries BuildKit's client in itself (no buildx needed). */
export const DOCKER_CLI_20 = '/usr/bin/docker';

const READY_TIMEOUT_MS = 90_000;

/**
 * The tests never pull: an image missing by mistake would make dockerd reach for Docker Hub.
 * A proxy on a closed loopback port makes any such attempt fail at once, without a DNS lookup.
 * (The plugin and containerd sockets are unix sockets, which no proxy applies to.)
 */
const NO_REGISTRY = {
  HTTP_PROXY: 'http://127.0.0.1:9',
  HTTPS_PROXY: 'http://127.0.0.1:9',
  http_proxy: 'http://127.0.0.1:9',
  https_proxy: 'http://127.0.0.1:9',
  NO_PROXY: '',
  no_proxy: '',
};
const STOP_TIMEOUT_MS = 60_000;

export interface DockerdOptions {
  /** `-s`: a built-in driver (vfs, overlay2) or a graph driver plugin's name. */
  storageDriver: string;
  /** `--experimental`, which graph driver plugins need in 20.10. */
  experimental?: boolean;
  /** A label for temp dir names and messages. */
  label?: string;
}

export interface DockerRunOptions {
  input?: string | Buffer;
  env?: Record<string, string>;
  cwd?: string;
  timeoutMs?: number;
  /** The client binary; default the v28 client. */
  cli?: string;
}

export class Dockerd {
  readonly root: string;
  readonly dataRoot: string;
  readonly execRoot: string;
  readonly pidfile: string;
  readonly socket: string;
  readonly host: string;
  readonly logFile: string;
  readonly clientConfigDir: string;
  private readonly containerdDir: string;
  private readonly containerdSocket: string;
  private readonly containerdLog: string;
  private dockerd: ChildProcess | undefined;
  private containerd: ChildProcess | undefined;
  private dockerdExit: Promise<[number | null, NodeJS.Signals | null]> | undefined;
  private containerdExit: Promise<[number | null, NodeJS.Signals | null]> | undefined;
  private unregisterExit: (() => void) | undefined;
  /** How each dockerd run ended: exit code or signal. */
  readonly stops: Array<{ code: number | null; signal: NodeJS.Signals | null }> = [];

  private constructor(
    root: string,
    readonly opts: DockerdOptions,
  ) {
    this.root = root;
    this.dataRoot = join(root, 'data');
    this.execRoot = join(root, 'exec');
    this.pidfile = join(root, 'dockerd.pid');
    this.socket = join(root, 'docker.sock');
    this.host = `unix://${this.socket}`;
    this.logFile = join(root, 'dockerd.log');
    this.clientConfigDir = join(root, 'client');
    this.containerdDir = join(root, 'containerd');
    this.containerdSocket = join(this.containerdDir, 'containerd.sock');
    this.containerdLog = join(root, 'containerd.log');
  }

  static async start(opts: DockerdOptions): Promise<Dockerd> {
    const root = await mkdtemp(join(tmpdir(), `lcfs-dockerd-${opts.label ?? opts.storageDriver}-`));
    const d = new Dockerd(root, opts);
    try {
      await d.start();
    } catch (err) {
      await d.dispose();
      throw err;
    }
    return d;
  }

  get running(): boolean {
    const c = this.dockerd;
    return c !== undefined && c.exitCode === null && c.signalCode === null;
  }

  get pid(): number {
    if (this.dockerd?.pid === undefined) throw new Error('dockerd not started');
    return this.dockerd.pid;
  }

  async start(): Promise<void> {
    if (this.running) throw new Error('dockerd already running');
    await mkdir(this.clientConfigDir, { recursive: true });
    await mkdir(join(this.containerdDir, 'root'), { recursive: true });
    await mkdir(join(this.containerdDir, 'state'), { recursive: true });
    await writeFile(join(this.clientConfigDir, 'config.json'), '{}\n');
    await writeFile(join(this.root, 'daemon.json'), '{}\n');
    const toml = [
      'version = 2',
      `root = "${join(this.containerdDir, 'root')}"`,
      `state = "${join(this.containerdDir, 'state')}"`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
      '[grpc]',
      `  address = "${this.containerdSocket}"`,
      '[ttrpc]',
      `  address = "${this.containerdSocket}.ttrpc"`,
      '[debug]',
      `  address = "${join(this.containerdDir, 'debug.sock')}"`,
      '',
    ].join('\n');
    await writeFile(join(this.containerdDir, 'config.toml'), toml);

    this.containerd = this.spawnLogged(
      'containerd',
      ['--config', join(this.containerdDir, 'config.toml')],
      this.containerdLog,
    );
    this.containerdExit = once(this.containerd, 'exit') as Promise<
      [number | null, NodeJS.Signals | null]
    >;
    await this.waitForSocket(this.containerdSocket, 'containerd', this.containerd);

    const args = [
      '--data-root',
      this.dataRoot,
      '--exec-root',
      this.execRoot,
      '--pidfile',
      this.pidfile,
      '-H',
      this.host,
      '--containerd',
      this.containerdSocket,
      '--config-file',
      join(this.root, 'daemon.json'),
      '--iptables=false',
      '--ip-masq=false',
      '--bridge=none',
      '-s',
      this.opts.storageDriver,
    ];
    if (this.opts.experimental) args.unshift('--experimental');
    this.dockerd = this.spawnLogged('dockerd', args, this.logFile);
    this.dockerdExit = once(this.dockerd, 'exit') as Promise<
      [number | null, NodeJS.Signals | null]
    >;
    const dockerdPid = this.dockerd.pid;
    const containerdPid = this.containerd.pid;
    this.unregisterExit?.();
    this.unregisterExit = onProcessExit(() => {
      for (const pid of [dockerdPid, containerdPid])
        if (pid !== undefined && alive(pid)) process.kill(pid, 'SIGKILL');
      unmountAllUnderSync(this.root);
    });

    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      if (!this.running) throw new Error(`dockerd exited during start:\n${await this.logTail()}`);
      const r = await this.dockerRaw(['info', '--format', '{{.Driver}}'], { timeoutMs: 10_000 });
      if (r.code === 0) {
        const driver = r.stdout.trim();
        if (driver !== this.opts.storageDriver)
          throw new Error(
            `dockerd runs storage driver "${driver}", not "${this.opts.storageDriver}"`,
          );
        return;
      }
      if (Date.now() > deadline)
        throw new Error(`dockerd not ready after ${READY_TIMEOUT_MS} ms:\n${await this.logTail()}`);
      await sleep(250);
    }
  }

  private spawnLogged(bin: string, args: string[], logFile: string): ChildProcess {
    const fd = openSync(logFile, 'a');
    try {
      return spawn(bin, args, {
        stdio: ['ignore', fd, fd],
        env: { ...process.env, LC_ALL: 'C', ...NO_REGISTRY },
      });
    } finally {
      closeSync(fd);
    }
  }

  private async waitForSocket(path: string, what: string, child: ChildProcess): Promise<void> {
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null)
        throw new Error(`${what} exited during start:\n${await this.tail(this.containerdLog)}`);
      const r = await exec(['test', '-S', path]);
      if (r.code === 0) return;
      if (Date.now() > deadline) throw new Error(`${what}: no socket ${path} after 30 s`);
      await sleep(100);
    }
  }

  /** SIGTERM to dockerd by pid and waits; then the same for its containerd. */
  async stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    let result = { code: null as number | null, signal: null as NodeJS.Signals | null };
    if (this.dockerd && this.dockerdExit) {
      if (this.running) this.dockerd.kill('SIGTERM');
      const [code, signal] = await this.waitExit(this.dockerdExit, this.dockerd, 'dockerd');
      result = { code, signal };
      this.stops.push(result);
      this.dockerd = undefined;
    }
    if (this.containerd && this.containerdExit) {
      const c = this.containerd;
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
      await this.waitExit(this.containerdExit, c, 'containerd');
      this.containerd = undefined;
    }
    return result;
  }

  private async waitExit(
    exited: Promise<[number | null, NodeJS.Signals | null]>,
    child: ChildProcess,
    what: string,
  ): Promise<[number | null, NodeJS.Signals | null]> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), STOP_TIMEOUT_MS);
    });
    const first = await Promise.race([exited, timeout]);
    clearTimeout(timer);
    if (first === 'timeout') {
      child.kill('SIGKILL');
      await exited;
      throw new Error(`${what} did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM; killed`);
    }
    return first;
  }

  /** For `after`: stops what still runs, unmounts what is left under the root, removes it. */
  async dispose(): Promise<void> {
    let failure: Error | undefined;
    try {
      await this.stop();
    } catch (err) {
      failure = err instanceof Error ? err : new Error(String(err));
    }
    // Shims of containers that were still running when containerd stopped.
    for (const pid of await shimsOf(this.containerdSocket)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    await unmountAllUnder(this.root);
    this.unregisterExit?.();
    this.unregisterExit = undefined;
    await rm(this.root, { recursive: true, force: true });
    if (failure) throw failure;
  }

  async logTail(lines = 60): Promise<string> {
    return `--- dockerd log (last ${lines} lines)\n${await this.tail(this.logFile, lines)}`;
  }

  async logText(): Promise<string> {
    return readFile(this.logFile, 'utf8').catch(() => '');
  }

  private async tail(file: string, lines = 60): Promise<string> {
    const text = await readFile(file, 'utf8').catch(() => '');
    return text.split('\n').slice(-lines).join('\n');
  }

  env(extra: Record<string, string> = {}): Record<string, string> {
    return { DOCKER_HOST: this.host, DOCKER_CONFIG: this.clientConfigDir, ...extra };
  }

  /** Runs the docker client against this daemon; never throws on a non-zero exit. */
  dockerRaw(args: string[], opts: DockerRunOptions = {}): Promise<ExecResult> {
    const execOpts: ExecOptions = {
      input: opts.input,
      env: this.env(opts.env),
      cwd: opts.cwd,
      timeoutMs: opts.timeoutMs ?? 180_000,
    };
    return exec([opts.cli ?? DOCKER_CLI, ...args], execOpts);
  }

  /** Runs the docker client; throws with its output and dockerd's log tail unless it exits 0. */
  async docker(args: string[], opts: DockerRunOptions = {}): Promise<string> {
    const r = await this.dockerRaw(args, opts);
    if (r.code !== 0) {
      throw new Error(
        `docker failed:\n${describeResult([opts.cli ?? 'docker', ...args], r)}\n${await this.logTail(30)}`,
      );
    }
    return r.stdout;
  }
}

/** Pids of containerd shims started by the containerd listening on `socket`. */
async function shimsOf(socket: string): Promise<number[]> {
  const pids: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const argv = (await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '')).split('\0');
    const at = argv.indexOf('-address');
    if (at >= 0 && argv[at + 1] === socket && /containerd-shim/.test(argv[0]))
      pids.push(Number(name));
  }
  return pids;
}
