/** Shared helpers of the layer store tests (test/fs) and benchmarks (test/bench). */
export * from './expect-error.js';
export * from './oracle.js';
export * from './paths.js';
export * from './posix.js';
export * from './prng.js';
export * from './random-tree.js';
export * from './tar.js';
export * from './temp-store.js';
export * from './tree.js';
