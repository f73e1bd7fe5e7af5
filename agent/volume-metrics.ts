import { Gauge, type Registry } from 'prom-client';
import type { LayerStore } from '../fs/index.js';

/**
 * The layer volume's gauges, read when Prometheus scrapes. They are apart from the registry
 * mirror's blob cache (`lcfs_blob_cache_*`): the volume holds unpacked layers, the cache holds
 * compressed blobs, and each has its own bound.
 */
export function registerVolumeGauges(registry: Registry, store: LayerStore): void {
  new Gauge({
    name: 'lcfs_volume_layers',
    help: 'Layers in the volume, by state (frozen: image layers; writable: containers, builds)',
    labelNames: ['state'],
    registers: [registry],
    collect() {
      const layers = store.listLayers();
      const frozen = layers.filter((layer) => layer.state === 'frozen').length;
      this.set({ state: 'frozen' }, frozen);
      this.set({ state: 'writable' }, layers.length - frozen);
    },
  });
  new Gauge({
    name: 'lcfs_volume_backing_available_bytes',
    help: 'Free bytes on the filesystem that holds the layer store',
    registers: [registry],
    async collect() {
      const fs = await store.statfs();
      this.set(fs.bavail * fs.bsize);
    },
  });
}
