/**
 * One etcd member (Debian's etcd 3.4) on free loopback ports, with its data dir in a temp dir.
 *
 *   const etcd = await Etcd.start();
 *   etcd.endpoints;                 // ['http://127.0.0.1:PORT'], for the agents and etcd3
 *   await etcd.ctl('put', 'k', 'v'); // etcdctl (v3 API) against it; resolves to its stdout
 *   await etcd.stop();              // etcd down (stop('SIGKILL') for a crash)
 *   await etcd.restart();           // back on the same ports, with the same data
 *   await etcd.dispose();           // in `after`: stop, remove the temp dir
 *
 * etcd 3.4 also serves the v3 API as JSON over HTTP (keys and values base64):
 * `POST /v3/kv/put {"key": "Zm9v", "value": "YmFy"}`, `POST /v3/kv/range {"key": "Zm9v"}`.
 */
import { rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execOk } from '../../docker/helpers/exec.js';
import { onProcessExit } from '../../helpers/cleanup.js';
import { Daemon, freePorts } from '../../helpers/daemon.js';

export const ETCD_BIN = '/usr/bin/etcd';
export const ETCDCTL_BIN = '/usr/bin/etcdctl';

export class Etcd {
  /** The client URL, `http://127.0.0.1:PORT`. */
  readonly endpoint: string;
  readonly dataDir: string;
  private readonly daemon: Daemon;
  private readonly unregisterExit: () => void;

  private constructor(
    readonly dir: string,
    readonly clientPort: number,
    readonly peerPort: number,
  ) {
    this.endpoint = `http://127.0.0.1:${clientPort}`;
    this.dataDir = join(dir, 'data');
    const peerUrl = `http://127.0.0.1:${peerPort}`;
    const log = join(dir, 'etcd.log');
    this.daemon = new Daemon({
      name: `etcd on ${this.endpoint}`,
      // The peer URL and initial cluster are spelled out: etcd's defaults name localhost:2380.
      argv: [
        ETCD_BIN,
        '--name=lcfs-test',
        `--data-dir=${this.dataDir}`,
        `--listen-client-urls=${this.endpoint}`,
        `--advertise-client-urls=${this.endpoint}`,
        `--listen-peer-urls=${peerUrl}`,
        `--initial-advertise-peer-urls=${peerUrl}`,
        `--initial-cluster=lcfs-test=${peerUrl}`,
      ],
      stdoutPath: log,
      stderrPath: log,
      // /health answers {"health":"true"} once the member has a leader and serves requests.
      ready: async () => {
        const res = await fetch(`${this.endpoint}/health`);
        return res.ok && ((await res.json()) as { health?: string }).health === 'true';
      },
    });
    this.unregisterExit = onProcessExit(() => rmSync(dir, { recursive: true, force: true }));
  }

  static async start(): Promise<Etcd> {
    const dir = await mkdtemp(join(tmpdir(), 'lcfs-etcd-'));
    const [clientPort, peerPort] = await freePorts(2);
    const etcd = new Etcd(dir, clientPort, peerPort);
    try {
      await etcd.daemon.start();
    } catch (err) {
      await etcd.dispose();
      throw err;
    }
    return etcd;
  }

  /** The client URLs, as etcd clients take them. */
  get endpoints(): string[] {
    return [this.endpoint];
  }

  get running(): boolean {
    return this.daemon.running;
  }

  /** Stops etcd (SIGTERM, or SIGKILL for a crash); its ports and data stay reserved. */
  async stop(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
    await this.daemon.stop(signal);
  }

  /** Starts it again on the same ports and data dir (stopping it first if it runs). */
  async restart(): Promise<void> {
    await this.daemon.stop();
    await this.daemon.start();
  }

  /** Runs `etcdctl` (v3 API) against this member; throws unless it exits 0; resolves to stdout. */
  async ctl(...args: string[]): Promise<string> {
    return execOk([ETCDCTL_BIN, `--endpoints=${this.endpoint}`, ...args], {
      env: { ETCDCTL_API: '3' },
      timeoutMs: 30_000,
    });
  }

  async logTail(lines = 30): Promise<string> {
    return this.daemon.logTail(lines);
  }

  async dispose(): Promise<void> {
    await this.daemon.stop();
    this.unregisterExit();
    await rm(this.dir, { recursive: true, force: true });
  }
}
