/**
 * A layer store mounted over FUSE by a child process (volume-server.ts), driven over Node IPC.
 *
 *   const vol = await startVolume();            // temp dir: <root>/store and <root>/mnt
 *   await vol.call('createLayer', 'base', null);
 *   await writeFile(`${vol.mountpoint}/base/f`, 'x');
 *   await vol.stop();                           // unmount + close; the child exits 0
 *
 * The test process does its file operations on the mount while another process serves it: a
 * process must never make synchronous calls into the FUSE mount it serves itself.
 *
 * Errors of `call` keep the remote `code` (e.g. LCFS_ELAYER_NOT_FOUND) and `errno` (e.g. ENOENT).
 * `disposeAll()` in an `after` hook stops every volume still running, lazily unmounts any stale
 * mount left by a killed one and removes the temp dirs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Change, LayerInfo, StoreStatfs } from '../../../fs/index.js';
import type { RequestStats } from '../../../fs/fuse/mount.js';
import { fromWire, type FromChild, type ToChild } from './protocol.js';
import { lazyUnmount, mountsUnder } from './shell.js';

export const REPO_ROOT = fileURLToPath(new URL('../../..', import.meta.url));
const SERVER = fileURLToPath(new URL('./volume-server.ts', import.meta.url));
const READY_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 20_000;

/** The calls volume-server.ts serves, with what each resolves to. */
export interface VolumeCalls {
  createLayer(id: string, parent: string | null): LayerInfo;
  removeLayer(id: string): null;
  freeze(id: string): null;
  exists(id: string): boolean;
  layer(id: string): LayerInfo;
  listLayers(): LayerInfo[];
  get(id: string): number;
  put(id: string): number;
  /** The tar is read from `tarPath`, a file outside the mount. */
  applyDiff(id: string, parent: string | null, tarPath: string): number;
  changes(id: string, parent: string | null): Change[];
  /** Writes the diff tar to `outPath`, a file outside the mount. */
  diff(id: string, parent: string | null, outPath: string): null;
  diffSize(id: string, parent: string | null): number;
  flush(): null;
  statfs(): StoreStatfs;
  /** The mount's requests per operation since it started (VolumeMount.requestStats). */
  requestStats(): RequestStats;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export type LogLine = Record<string, unknown> & { level?: number; msg?: string };

export interface StartOptions {
  /** The store's directory; a new temp dir when absent. */
  dir?: string;
  /** Where to mount; `<temp root>/mnt` when absent. */
  mountpoint?: string;
  /** Extra environment for the child (e.g. LCFS_TEST_LOG_LEVEL=debug). */
  env?: Record<string, string>;
  /** Extra node flags for the child (e.g. ['--cpu-prof', '--cpu-prof-dir=/tmp/prof']). */
  nodeArgs?: string[];
}

export interface Volume {
  readonly mountpoint: string;
  readonly dir: string;
  /** The temp dir this volume created (and removes on dispose), if it created one. */
  readonly root: string | undefined;
  readonly pid: number;
  readonly child: ChildProcess;
  /** The child's pino log lines, as they arrive. */
  readonly logs: LogLine[];
  readonly stderr: () => string;
  readonly exited: Promise<Exit>;
  readonly alive: () => boolean;
  call<K extends keyof VolumeCalls>(
    op: K,
    ...args: Parameters<VolumeCalls[K]>
  ): Promise<ReturnType<VolumeCalls[K]>>;
  /** Asks the child to unmount and close the store; resolves when it has exited. */
  stop(): Promise<Exit>;
  /** Sends a signal and waits for the exit. */
  signal(sig: NodeJS.Signals): Promise<Exit>;
  /** SIGKILL: leaves a stale mount behind, as a crash does. */
  kill(): Promise<Exit>;
  /** Stops (or kills) the child, clears any mount left at the mountpoint, removes the temp dir. */
  dispose(): Promise<void>;
}

const live: Volume[] = [];

/** A temp dir a uid other than root can traverse (the mount is used by uid 1000 too). */
export async function makeTempRoot(prefix = 'lcfs-fuse-'): Promise<string> {
  const root = await mkdtemp(join('/tmp', prefix));
  await chmod(root, 0o755);
  return root;
}

export async function startVolume(opts: StartOptions = {}): Promise<Volume> {
  let root: string | undefined;
  if (opts.dir === undefined || opts.mountpoint === undefined) root = await makeTempRoot();
  const dir = opts.dir ?? join(root!, 'store');
  const mountpoint = opts.mountpoint ?? join(root!, 'mnt');
  await mkdir(dir, { recursive: true });
  await mkdir(mountpoint, { recursive: true }).catch((err: NodeJS.ErrnoException) => {
    // A stale mount answers ENOTCONN; the server clears it.
    if (err.code !== 'ENOTCONN' && err.code !== 'EEXIST') throw err;
  });

  const child = spawn(
    process.execPath,
    [...(opts.nodeArgs ?? []), '--import', 'tsx', SERVER, dir, mountpoint],
    {
      cwd: REPO_ROOT,
      env: { ...process.env, ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    },
  );
  const logs: LogLine[] = [];
  let stderr = '';
  let pendingOut = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    pendingOut += chunk;
    const lines = pendingOut.split('\n');
    pendingOut = lines.pop() ?? '';
    for (const line of lines) {
      if (line.trim() === '') continue;
      try {
        logs.push(JSON.parse(line) as LogLine);
      } catch {
        logs.push({ msg: line, nonJson: true });
      }
    }
  });
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));

  let running = true;
  const exited = new Promise<Exit>((resolve) => {
    child.on('exit', (code, signal) => {
      running = false;
      resolve({ code, signal });
    });
  });

  let nextId = 1;
  const pending = new Map<
    number,
    { resolve: (v: unknown) => void; reject: (e: Error) => void; op: string }
  >();
  child.on('message', (msg: FromChild) => {
    if (msg.type !== 'reply') return;
    const p = pending.get(msg.id);
    if (!p) return;
    pending.delete(msg.id);
    if (msg.ok) p.resolve(msg.result);
    else p.reject(fromWire(msg.error, `call ${p.op}`));
  });
  void exited.then(({ code, signal }) => {
    for (const [, p] of pending) {
      p.reject(
        new Error(
          `volume process exited (code ${code}, signal ${signal}) before answering ${p.op}\n${stderr}`,
        ),
      );
    }
    pending.clear();
  });

  const ready = await new Promise<{ pid: number }>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`volume process not ready after ${READY_TIMEOUT_MS} ms\n${stderr}`));
    }, READY_TIMEOUT_MS);
    const onMessage = (msg: FromChild) => {
      if (msg.type === 'ready') {
        clearTimeout(timer);
        child.off('message', onMessage);
        resolve({ pid: msg.pid });
      } else if (msg.type === 'fatal') {
        clearTimeout(timer);
        child.off('message', onMessage);
        reject(fromWire(msg.error, 'start'));
      }
    };
    child.on('message', onMessage);
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(
        new Error(
          `volume process exited (code ${code}, signal ${signal}) before it was ready\n${stderr}`,
        ),
      );
    });
  }).catch(async (err: unknown) => {
    if (root) await rm(root, { recursive: true, force: true }).catch(() => undefined);
    throw err;
  });

  const send = (op: string, args: unknown[]): Promise<unknown> =>
    new Promise((resolve, reject) => {
      if (!running || !child.connected)
        return reject(new Error(`volume process is not running (call ${op})`));
      const id = nextId++;
      pending.set(id, { resolve, reject, op });
      const msg: ToChild = { type: 'call', id, op, args };
      child.send(msg, (err) => {
        if (err) {
          pending.delete(id);
          reject(err);
        }
      });
    });

  const waitExit = async (what: string): Promise<Exit> => {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(new Error(`volume process did not exit within ${STOP_TIMEOUT_MS} ms of ${what}`)),
        STOP_TIMEOUT_MS,
      );
    });
    try {
      return await Promise.race([exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  };

  let disposed = false;
  const vol: Volume = {
    mountpoint,
    dir,
    root,
    pid: ready.pid,
    child,
    logs,
    stderr: () => stderr,
    exited,
    alive: () => running,
    call: (op, ...args) => send(op, args) as never,
    async stop() {
      if (!running) return exited;
      // The child replies, then exits. A reported failure rejects; a hang times out in waitExit.
      const replied = send('stop', []).then(
        () => undefined,
        (err: Error) => err,
      );
      const exit = await waitExit('stop');
      const err = await replied;
      if (err && !err.message.startsWith('volume process exited')) throw err;
      return exit;
    },
    async signal(sig) {
      if (running) child.kill(sig);
      return waitExit(sig);
    },
    async kill() {
      if (running) child.kill('SIGKILL');
      return waitExit('SIGKILL');
    },
    async dispose() {
      if (disposed) return;
      disposed = true;
      const at = live.indexOf(vol);
      if (at >= 0) live.splice(at, 1);
      if (running) {
        try {
          await vol.stop();
        } catch {
          await vol.kill().catch(() => undefined);
        }
      }
      // Another live volume may serve the same mountpoint (a restart on the same dirs).
      const shared = live.some((v) => v.mountpoint === mountpoint && v.alive());
      if (!shared) for (const m of (await mountsUnder(mountpoint)).reverse()) await lazyUnmount(m);
      if (
        root &&
        !live.some(
          (v) => v.alive() && (v.dir.startsWith(root + '/') || v.mountpoint.startsWith(root + '/')),
        )
      ) {
        for (const m of (await mountsUnder(root)).reverse()) await lazyUnmount(m);
        await rm(root, { recursive: true, force: true });
      }
    },
  };
  live.push(vol);
  return vol;
}

/** Disposes every volume not yet disposed, newest first. For `after` hooks. */
export async function disposeAll(): Promise<void> {
  for (const v of [...live].reverse()) await v.dispose();
}
