import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { constants } from 'node:os';
import { resolve } from 'node:path';
import type { Logger } from 'pino';
import { StoreError } from '../errors.js';
import type { LayerStore } from '../layer-store.js';
import {
  FUSE_OPCODE_SLOTS,
  FUSE_OPCODES,
  fuseBinding,
  Op,
  type FuseBinding,
  type RequestHandler,
  type SessionHandle,
} from './binding.js';
import { LayerFilesystem, nodeId, ROOT_NODE } from './filesystem.js';

/**
 * Mount options, and why each is there:
 * - allow_other: containers run as other users, and dockerd itself must see the mount;
 * - default_permissions: the kernel checks modes and owners, so any uid cannot write root's files;
 * - suid, dev: a container's setuid binaries and device nodes work as on a local disk.
 */
const OPTIONS = 'allow_other,default_permissions,suid,dev,fsname=lcfs,subtype=lcfs';
const ERRNO = constants.errno as Record<string, number>;
const END_TIMEOUT_MS = 10_000;
/**
 * Read-ahead for the volume, in KiB. The kernel gives a FUSE mount 128 KiB, so a cold sequential
 * read became one 128 KiB READ after another, each waiting on the store's disk; at 8 MiB (what
 * the backing virtio disk has here) the kernel keeps several 1 MiB READs in flight, and a cold
 * 1 GiB read ran about twice as fast. Random reads are unaffected: read-ahead only grows on
 * sequential access.
 */
const READ_AHEAD_KB = 8192;

/** Requests the kernel sent, per operation, since the mount. */
export type RequestStats = Record<string, { count: number; ms: number }>;

export interface MountOptions {
  mountpoint: string;
  store: LayerStore;
  logger?: Logger;
}

/** The LCFS volume mounted at one mountpoint, until `unmount`. */
export class VolumeMount {
  private constructor(
    readonly mountpoint: string,
    private readonly fuse: FuseBinding,
    private readonly session: SessionHandle,
    private readonly ended: Promise<number>,
    private readonly store: LayerStore,
    private readonly log?: Logger,
  ) {
    // Changes the kernel did not see (an applyDiff into a mounted layer) must not be hidden by
    // what it cached: drop those names and nodes from its caches.
    this.unsubscribe = store.onLayerChange((change) => {
      const items: Array<[number, string?]> = change.removed
        ? [[ROOT_NODE, change.layer]]
        : [
            ...change.entries.map(([dir, name]): [number, string] => [
              nodeId(change.index, dir),
              name,
            ]),
            ...change.inodes.map((ino): [number] => [nodeId(change.index, ino)]),
          ];
      const done = fuse.invalidate(session, items).finally(() => this.invalidating.delete(done));
      this.invalidating.add(done);
      return done;
    });
  }

  private readonly unsubscribe: () => void;
  /** Invalidations on the thread pool; the session must outlive them. */
  private readonly invalidating = new Set<Promise<void>>();

  static async mount(opts: MountOptions): Promise<VolumeMount> {
    const mountpoint = resolve(opts.mountpoint);
    const fuse = fuseBinding();
    await clearStaleMount(mountpoint, fuse, opts.logger);
    await mkdir(mountpoint, { recursive: true });
    const filesystem = new LayerFilesystem(opts.store, fuse, opts.logger);
    let markEnded!: (code: number) => void;
    const ended = new Promise<number>((r) => (markEnded = r));
    const handler: RequestHandler = (op, req, ...rest) => {
      if (op === Op.Ended) markEnded(rest[9]);
      else filesystem.handle(op, req, ...rest);
    };
    let session: SessionHandle;
    try {
      session = fuse.mount(mountpoint, OPTIONS, handler);
    } catch (err) {
      throw new StoreError(
        'LCFS_EMOUNT',
        'EIO',
        `cannot mount ${mountpoint}: ${(err as Error).message}`,
      );
    }
    filesystem.attach(session);
    await setReadAhead(mountpoint, opts.logger);
    opts.logger?.info({ mountpoint }, 'volume mounted');
    return new VolumeMount(mountpoint, fuse, session, ended, opts.store, opts.logger);
  }

  /**
   * Requests received per operation, and the time from each one's receipt to its reply (ours,
   * not the caller's round trip), for profiles and for tests that count round trips.
   */
  requestStats(): RequestStats {
    const raw = this.fuse.requestStats(this.session);
    const out: RequestStats = {};
    for (let op = 0; op < FUSE_OPCODE_SLOTS; op++) {
      if (raw[op] === 0) continue;
      out[FUSE_OPCODES[op] ?? `op${op}`] = {
        count: raw[op],
        ms: raw[FUSE_OPCODE_SLOTS + op] / 1e6,
      };
    }
    return out;
  }

  /**
   * Unmounts. A mount still in use (a running container) is reported and detached lazily rather
   * than waited on: the caller is stopping, and hanging would stop nothing.
   */
  async unmount(): Promise<void> {
    this.unsubscribe();
    await Promise.all(this.invalidating);
    const err = this.fuse.unmount(this.session, false);
    if (err === ERRNO.EBUSY) {
      const inUse = this.store
        .listLayers()
        .filter((l) => l.refs > 0)
        .map((l) => l.id);
      this.log?.warn(
        { mountpoint: this.mountpoint, layersInUse: inUse },
        'mount busy at stop; detaching it lazily',
      );
      const lazy = this.fuse.unmount(this.session, true);
      if (lazy !== 0)
        this.log?.error({ mountpoint: this.mountpoint, errno: lazy }, 'lazy unmount failed');
      // Its users keep the connection open, so the session would never end by itself: closing
      // it aborts the connection, and they get ENOTCONN from here on.
      this.fuse.close(this.session);
      return;
    }
    if (err !== 0 && err !== ERRNO.EINVAL) {
      this.log?.error({ mountpoint: this.mountpoint, errno: err }, 'unmount failed');
    }
    const timeout = new Promise<'timeout'>((r) =>
      setTimeout(() => r('timeout'), END_TIMEOUT_MS).unref(),
    );
    if ((await Promise.race([this.ended, timeout])) === 'timeout') {
      this.log?.error({ mountpoint: this.mountpoint }, 'FUSE session did not end after unmount');
    }
    this.fuse.close(this.session);
    this.log?.info({ mountpoint: this.mountpoint }, 'volume unmounted');
  }
}

/**
 * A FUSE mount left by a crashed agent answers "Transport endpoint is not connected"; detach it
 * so the new mount can take its place. A live mount of another agent is an error.
 */
async function clearStaleMount(mountpoint: string, fuse: FuseBinding, log?: Logger): Promise<void> {
  const mounts = await readFile('/proc/self/mountinfo', 'utf8');
  const here = mounts
    .split('\n')
    .filter((line) => unescape(line.split(' ')[4] ?? '') === mountpoint);
  if (here.length === 0) return;
  try {
    await stat(mountpoint);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOTCONN') throw err;
    const code = fuse.detach(mountpoint);
    if (code !== 0)
      throw new StoreError(
        'LCFS_EMOUNT',
        'EIO',
        `cannot clear the stale mount at ${mountpoint} (errno ${code})`,
      );
    log?.warn({ mountpoint }, 'cleared a stale FUSE mount left by a crash');
    return;
  }
  throw new StoreError(
    'LCFS_EMOUNT',
    'EBUSY',
    `${mountpoint} is already a mount point in use; is another lcfs agent running?`,
  );
}

/**
 * Sets the mount's read-ahead through its backing device info in sysfs, found by the mount's
 * device number in mountinfo (no request to the mount itself). A machine without it keeps the
 * kernel's default, which is slower, not wrong.
 */
async function setReadAhead(mountpoint: string, log?: Logger): Promise<void> {
  const mounts = await readFile('/proc/self/mountinfo', 'utf8');
  const ours = mounts
    .split('\n')
    .map((line) => line.split(' '))
    .filter((f) => unescape(f[4] ?? '') === mountpoint)
    .at(-1);
  try {
    if (!ours) throw new Error('mount not found in /proc/self/mountinfo');
    await writeFile(`/sys/class/bdi/${ours[2]}/read_ahead_kb`, String(READ_AHEAD_KB));
  } catch (err) {
    log?.warn({ err, mountpoint }, 'cannot set the read-ahead of the volume; reads will be slower');
  }
}

/** mountinfo escapes space, tab, newline and backslash as octal. */
function unescape(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}
