/**
 * The serving side of the FUSE test harness: run as its own process (`node --import tsx
 * volume-server.ts <dir> <mountpoint>`), it opens a layer store in <dir>, mounts it at
 * <mountpoint> and answers commands sent over Node IPC. The test process does its file operations
 * on the mount; this process only serves it, and never touches the mountpoint itself (a process
 * that serves a FUSE mount and calls into it synchronously deadlocks).
 *
 * Protocol (see volume-process.ts for the other side):
 *   child → parent  { type: 'ready', pid, mountpoint }            once mounted
 *                   { type: 'fatal', error }                      could not start; exits 1
 *                   { type: 'reply', id, ok: true, result }       an answer to a call
 *                   { type: 'reply', id, ok: false, error }       a failed call: message, code, errno
 *   parent → child  { type: 'call', id, op, args }                op: one of OPS, 'requestStats'
 *                                                                 (the mount's), or 'stop'
 * 'stop' (and SIGTERM, and the parent going away) unmounts, closes the store and exits 0.
 * Logs are pino JSON lines on stdout.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { pino } from 'pino';
import { openLayerStore, VolumeMount, type LayerStore } from '../../../fs/index.js';
import { toWire, type FromChild, type ToChild } from './protocol.js';

type Op = (store: LayerStore, ...args: never[]) => unknown;

/** The calls the harness serves; each maps onto the store one for one. */
const OPS: Record<string, Op> = {
  createLayer: (s, id: string, parent: string | null) => s.createLayer(id, parent),
  removeLayer: (s, id: string) => s.removeLayer(id),
  freeze: (s, id: string) => s.freeze(id),
  exists: (s, id: string) => s.exists(id),
  layer: (s, id: string) => s.layer(id),
  listLayers: (s) => s.listLayers(),
  get: (s, id: string) => s.get(id),
  put: (s, id: string) => s.put(id),
  /** applyDiff(id, parent, tarPath): the tar is read from a file outside the mount. */
  applyDiff: (s, id: string, parent: string | null, tarPath: string) =>
    s.applyDiff(id, parent, createReadStream(tarPath)),
  changes: (s, id: string, parent: string | null) => s.changes(id, parent),
  /** diff(id, parent, outPath): writes the layer's diff tar to a file outside the mount. */
  diff: (s, id: string, parent: string | null, outPath: string) =>
    pipeline(s.diff(id, parent), createWriteStream(outPath)),
  diffSize: (s, id: string, parent: string | null) => s.diffSize(id, parent),
  flush: (s) => s.flush(),
  statfs: (s) => s.statfs(),
};

function send(msg: FromChild): Promise<void> {
  return new Promise((resolve) => {
    if (!process.send || !process.connected) return resolve();
    process.send(msg, undefined, {}, () => resolve());
  });
}

async function main(): Promise<void> {
  const [dir, mountpoint] = process.argv.slice(2);
  if (!dir || !mountpoint) throw new Error('usage: volume-server.ts <store dir> <mountpoint>');
  const logger = pino({ level: process.env.LCFS_TEST_LOG_LEVEL ?? 'info' });
  const store = await openLayerStore({ dir, logger: logger.child({ component: 'store' }) });
  let mount: VolumeMount;
  try {
    mount = await VolumeMount.mount({
      mountpoint,
      store,
      logger: logger.child({ component: 'fuse' }),
    });
  } catch (err) {
    await store.close();
    throw err;
  }

  let stopping: Promise<void> | undefined;
  const stop = (why: string): Promise<void> => {
    stopping ??= (async () => {
      logger.info({ why }, 'volume server stopping');
      await mount.unmount();
      await store.close();
      logger.info('volume server stopped');
    })();
    return stopping;
  };
  const stopAndExit = (why: string) => {
    stop(why).then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'stop failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stopAndExit('SIGTERM'));
  process.on('SIGINT', () => stopAndExit('SIGINT'));
  // The test process died or let go of us: do not leave a mount behind.
  process.on('disconnect', () => stopAndExit('parent disconnected'));

  process.on('message', (raw: ToChild) => {
    if (raw?.type !== 'call') return;
    const { id, op, args } = raw;
    if (op === 'stop') {
      stop('stop call').then(
        async () => {
          await send({ type: 'reply', id, ok: true, result: null });
          process.exit(0);
        },
        async (err: unknown) => {
          await send({ type: 'reply', id, ok: false, error: toWire(err) });
          process.exit(1);
        },
      );
      return;
    }
    if (op === 'requestStats') {
      void send({ type: 'reply', id, ok: true, result: mount.requestStats() });
      return;
    }
    const fn = OPS[op];
    Promise.resolve()
      .then(() => {
        if (!fn) throw Object.assign(new Error(`unknown op ${op}`), { code: 'ERR_UNKNOWN_OP' });
        if (stopping)
          throw Object.assign(new Error('volume server is stopping'), { code: 'ERR_STOPPING' });
        return (fn as (s: LayerStore, ...a: unknown[]) => unknown)(store, ...args);
      })
      .then(
        (result) => send({ type: 'reply', id, ok: true, result: result ?? null }),
        (err: unknown) => send({ type: 'reply', id, ok: false, error: toWire(err) }),
      );
  });

  await send({ type: 'ready', pid: process.pid, mountpoint: mount.mountpoint });
}

main().catch(async (err: unknown) => {
  await send({ type: 'fatal', error: toWire(err) });
  process.exit(1);
});
