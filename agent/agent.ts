import { mkdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { collectDefaultMetrics, Registry } from 'prom-client';
import { AccessCheck } from '../cluster/access-check.js';
import { BlobCache } from '../cluster/blob-cache.js';
import { startClusterNode, type ClusterNode } from '../cluster/cluster-node.js';
import { createMirrorMetrics, registerStateGauges } from '../cluster/metrics.js';
import { PullRouter } from '../cluster/pull-router.js';
import { startRegistryMirror, type RegistryMirror } from '../cluster/registry-mirror.js';
import { TagMemory } from '../cluster/tag-memory.js';
import { Upstreams } from '../cluster/upstreams.js';
import { openLayerStore, VolumeMount, type LayerStore } from '../fs/index.js';
import { startApiServer, type ApiServer } from './api-server.js';
import { registerVolumeGauges } from './volume-metrics.js';
import type { AgentConfig } from './config.js';
import { startDockerPlugin, type DockerPlugin } from './docker-plugin.js';
import { startSnapshotter, type Snapshotter } from './snapshotter.js';
import { notifySystemdReady } from './systemd.js';
import { lockDataDir } from './data-dir-lock.js';
import type { Logger } from './logger.js';

/**
 * The composition root: the one place that builds the agent's components from the
 * configuration and wires them together: the data directory lock, the layer store, the FUSE
 * volume over it, the engine adapters, the blob cache, the cluster node (when etcd or static
 * peers are configured), the registry mirror and the API. They start in that order and stop in
 * reverse, so nothing is served before what it stands on and nothing outlives it.
 */
export interface RunningAgent {
  readonly config: AgentConfig;
  readonly store: LayerStore;
  /** Where the registry mirror and the API listen (ports filled in when 0 was asked for). */
  readonly mirrorAddress: string | undefined;
  readonly apiAddress: string | undefined;
  /** Stops the components in reverse order of start. Calling it again returns the same promise. */
  stop(): Promise<void>;
}

export function storeDirOf(config: AgentConfig): string {
  return join(config.dataDir, 'store');
}

/** The package's version, from package.json beside the sources or beside dist/. */
async function packageVersion(): Promise<string> {
  for (const path of ['../package.json', '../../package.json']) {
    try {
      const parsed = JSON.parse(await readFile(new URL(path, import.meta.url), 'utf8')) as {
        name?: string;
        version?: string;
      };
      if (parsed.name === 'lcfs' && typeof parsed.version === 'string') return parsed.version;
    } catch {
      // not this one
    }
  }
  return 'unknown';
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
  let mirror: RegistryMirror | undefined;
  let api: ApiServer | undefined;
  let cluster: ClusterNode | undefined;
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
    const cache = await BlobCache.open({
      dir: join(config.dataDir, 'blobs'),
      maxBytes: config.blobCacheBytes,
      logger: logger.child({ component: 'blob-cache' }),
    });
    plugin = await startDockerPlugin({
      socketPath: config.dockerPluginSocket,
      store,
      mountpoint: config.mountpoint,
      blobCache: cache,
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

    const metrics = new Registry();
    collectDefaultMetrics({ register: metrics, prefix: 'lcfs_' });
    registerVolumeGauges(metrics, store);
    if (config.etcdEndpoints.length > 0 || config.staticPeers.length > 0) {
      cluster = await startClusterNode({
        dataDir: config.dataDir,
        p2pAddress: config.p2pAddress,
        secretFile: config.clusterSecretFile,
        etcdEndpoints: config.etcdEndpoints,
        prefix: config.clusterPrefix,
        staticPeers: config.staticPeers,
        cache,
        mirrorAddress: config.mirrorAddress,
        apiAddress: config.apiAddress,
        version: await packageVersion(),
        logger: logger.child({ component: 'cluster' }),
      });
      const started = cluster;
      stops.push(() => started.stop());
    }
    const mirrorMetrics = createMirrorMetrics(metrics);
    const node = cluster;
    registerStateGauges(metrics, {
      cacheBytes: () => cache.usedBytes,
      cacheBlobs: () => cache.list().length,
      inventoryBlobs: () => node?.inventory.knownBlobs() ?? 0,
      peers: () => node?.connectedPeers() ?? 0,
      etcdConnected: () => (node?.etcdConnected() === true ? 1 : 0),
    });
    if (config.mirrorAddress !== '') {
      const mirrorLogger = logger.child({ component: 'mirror' });
      mirror = await startRegistryMirror({
        address: config.mirrorAddress,
        upstreams: await Upstreams.load(config.upstreams, config.registryAuthFile, mirrorLogger),
        router: new PullRouter({
          cache,
          metrics: mirrorMetrics,
          logger: mirrorLogger,
          cluster: cluster && {
            inventory: cluster.inventory,
            peers: cluster.transfer,
            flights: cluster.flights,
          },
        }),
        cache,
        access: new AccessCheck(mirrorLogger),
        tags: await TagMemory.open(join(config.dataDir, 'blobs', 'tags')),
        serveStaleTags: config.serveStaleTags,
        metrics: mirrorMetrics,
        logger: mirrorLogger,
      });
      const started = mirror;
      stops.push(() => started.close());
    }
    if (config.apiAddress !== '') {
      api = await startApiServer({
        address: config.apiAddress,
        metrics,
        logger: logger.child({ component: 'api' }),
      });
      const started = api;
      stops.push(() => started.close());
    }
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
      mirrorAddress: mirror?.address,
      apiAddress: api?.address,
      peerId: cluster?.peerId,
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
    mirrorAddress: mirror?.address,
    apiAddress: api?.address,
    stop: () => (stopping ??= stopOnce()),
  };
}
