import { Counter, Gauge, type Registry } from 'prom-client';

/**
 * The registry mirror's Prometheus metrics. Byte and request counters carry the source that
 * served them: `local` (this host's cache), `peer`, or `upstream`.
 */
export interface MirrorMetrics {
  readonly bytesServed: Counter<'source'>;
  readonly requestsServed: Counter<'source' | 'kind'>;
  readonly upstreamFetches: Counter;
  readonly peerFailures: Counter<'reason'>;
}

export function createMirrorMetrics(registry: Registry): MirrorMetrics {
  return {
    bytesServed: new Counter({
      name: 'lcfs_mirror_served_bytes_total',
      help: 'Blob bytes the registry mirror sent to engines, by the source they came from',
      labelNames: ['source'],
      registers: [registry],
    }),
    requestsServed: new Counter({
      name: 'lcfs_mirror_requests_total',
      help: 'Requests the registry mirror answered, by kind (blob, manifest) and source',
      labelNames: ['source', 'kind'],
      registers: [registry],
    }),
    upstreamFetches: new Counter({
      name: 'lcfs_upstream_blob_fetches_total',
      help: 'Blob GETs this agent sent to upstream registries',
      registers: [registry],
    }),
    peerFailures: new Counter({
      name: 'lcfs_peer_failures_total',
      help: 'Peer transfers that failed: broken or stalled (transfer), or bytes that did not match (corrupt)',
      labelNames: ['reason'],
      registers: [registry],
    }),
  };
}

/** Gauges read when Prometheus scrapes: figures that are cheap to compute on demand. */
export function registerStateGauges(
  registry: Registry,
  read: {
    cacheBytes(): number;
    cacheBlobs(): number;
    inventoryBlobs(): number;
    /** Connected libp2p peers. */
    peers(): number;
    /** 1 when etcd answers, 0 when it does not or none is configured. */
    etcdConnected(): number;
  },
): void {
  new Gauge({
    name: 'lcfs_cluster_peers',
    help: 'Peers this agent has a libp2p connection to',
    registers: [registry],
    collect() {
      this.set(read.peers());
    },
  });
  new Gauge({
    name: 'lcfs_cluster_etcd_connected',
    help: 'Whether etcd answered the last keepalive of this agent (0 also when standalone)',
    registers: [registry],
    collect() {
      this.set(read.etcdConnected());
    },
  });
  new Gauge({
    name: 'lcfs_blob_cache_bytes',
    help: 'Bytes of verified blobs in the registry mirror cache (separate from the layer volume)',
    registers: [registry],
    collect() {
      this.set(read.cacheBytes());
    },
  });
  new Gauge({
    name: 'lcfs_blob_cache_blobs',
    help: 'Blobs in the registry mirror cache',
    registers: [registry],
    collect() {
      this.set(read.cacheBlobs());
    },
  });
  new Gauge({
    name: 'lcfs_inventory_blobs',
    help: 'Distinct blobs the cluster inventory knows peers hold (complete or fetching)',
    registers: [registry],
    collect() {
      this.set(read.inventoryBlobs());
    },
  });
}
