import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { openLayerStore, VolumeMount, type LayerStore } from '../fs/index.js';
import type { AgentConfig } from './config.js';
import { startDockerPlugin, type DockerPlugin } from './docker-plugin.js';
import { startSnapshotter, type Snapshotter } from './snapshotter.js';
import { notifySystemdReady } from './systemd.js';
import { lockDataDir } from './data-dir-lock.js';
import type { Logger } from './logger.js';

/**
 * The composition root: the one place that builds the agent's components from the
 * configuration and wires them together: the data directory lock, the layer store, the FUSE
 * volume over it, and the engine adapters. They start in that order and stop in reverse, so
 * nothing is served before what it stands on and nothing outlives it.
 */
export interface RunningAgent {
  readonly config: AgentConfig;
  readonly store: LayerStore;
  /** Stops the components in reverse order of start. Calling it again returns the same promise. */
  stop(): Promise<void>;
}

export function storeDirOf(config: AgentConfig): string {
  return join(config.dataDir, 'store');
}

/**
 * mkdir -p. Node 20's `mkdir(path, { recursive: true })` never returns when a parent exists
 * but refuses children with ENOENT (as /proc does), so the agent walks up itself.
 */
async function ensureDir(path: string): Promise<void> {
  try {
    await mkdir(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return;
    if (code !== 'ENOENT' || dirname(path) === path) throw err;
    await ensureDir(dirname(path));
    await mkdir(path);
  }
}

export async function startAgent(config: AgentConfig, logger: Logger): Promise<RunningAgent> {
  const log = logger.child({ component: 'agent' });
  await ensureDir(config.dataDir);

  const lock = await lockDataDir(config.dataDir);
  if (lock.takenOverFromPid !== undefined) {
    log.warn(
      { lockPath: lock.path, stalePid: lock.takenOverFromPid },
      'took over the lock of an agent that is no longer running',
    );
  }

  // Each component started so far, with how to stop it: stopped in reverse on failure or stop.
  const stops: Array<() => Promise<void>> = [() => lock.release()];
  const unwind = async (): Promise<void> => {
    let first: Error | undefined;
    for (const stop of stops.reverse()) {
      try {
        await stop();
      } catch (err) {
        log.error({ err }, 'stopping a component failed');
        first ??= err instanceof Error ? err : new Error(String(err));
      }
    }
    if (first) throw first;
  };

  let store: LayerStore;
  let plugin: DockerPlugin;
  let snapshotter: Snapshotter;
  try {
    store = await openLayerStore({
      dir: storeDirOf(config),
      logger: logger.child({ component: 'store' }),
      flushIntervalMs: config.flushIntervalMs,
    });
    const opened = store;
    stops.push(() => opened.close());
    const volume = await VolumeMount.mount({
      mountpoint: config.mountpoint,
      store,
      logger: logger.child({ component: 'fuse' }),
    });
    stops.push(() => volume.unmount());
    plugin = await startDockerPlugin({
      socketPath: config.dockerPluginSocket,
      store,
      mountpoint: config.mountpoint,
      logger: logger.child({ component: 'docker-plugin' }),
    });
    stops.push(() => plugin.close());
    snapshotter = await startSnapshotter({
      socketPath: config.snapshotterSocket,
      store,
      mountpoint: config.mountpoint,
      catalogDir: join(config.dataDir, 'snapshots'),
      logger: logger.child({ component: 'snapshotter' }),
    });
    stops.push(() => snapshotter.close());
  } catch (err) {
    await unwind();
    throw err;
  }

  log.info(
    {
      dataDir: config.dataDir,
      mountpoint: config.mountpoint,
      dockerPluginSocket: plugin.socketPath,
      snapshotterSocket: snapshotter.socketPath,
      layers: store.listLayers().length,
    },
    'agent started',
  );
  notifySystemdReady(log);

  let stopping: Promise<void> | undefined;
  const stopOnce = async (): Promise<void> => {
    log.info('agent stopping');
    await unwind();
    log.info('agent stopped');
  };
  return {
    config,
    store,
    stop: () => (stopping ??= stopOnce()),
  };
}
