export { CHUNK_SIZE, type LayerStore } from './layer-store.js';
export { openLayerStore, type OpenOptions } from './store.js';
export { StoreError, isStoreError, type Errno, type StoreErrorCode } from './errors.js';
export * from './types.js';
export { VolumeMount, type MountOptions } from './fuse/mount.js';
