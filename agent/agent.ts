import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { openLayerStore, type LayerStore } from '../fs/index.js';
import type { AgentConfig } from './config.js';
import { lockDataDir } from './data-dir-lock.js';
import type { Logger } from './logger.js';

/**
 * The composition root: the one place that builds the agent's components from the
 * configuration and wires them together. Today that is the data directory lock and the layer
 * store; the FUSE mount, the engine adapters and the API servers will join here.
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

  let store: LayerStore;
  try {
    store = await openLayerStore({
      dir: storeDirOf(config),
      logger: logger.child({ component: 'store' }),
      flushIntervalMs: config.flushIntervalMs,
    });
  } catch (err) {
    await lock.release();
    throw err;
  }

  log.info(
    {
      dataDir: config.dataDir,
      mountpoint: config.mountpoint,
      layers: store.listLayers().length,
    },
    'agent started',
  );

  let stopping: Promise<void> | undefined;
  const stopOnce = async (): Promise<void> => {
    log.info('agent stopping');
    try {
      await store.close();
    } finally {
      await lock.release();
    }
    log.info('agent stopped');
  };
  return {
    config,
    store,
    stop: () => (stopping ??= stopOnce()),
  };
}
