/**
 * A LayerStore opened in a fresh temporary directory, with a canary directory beside it so tests
 * can prove nothing was written outside the store's own directory.
 *
 *   <tmp>/lcfs-test-XXXXXX/store   the store's dir
 *   <tmp>/lcfs-test-XXXXXX/canary  holds one sentinel file; must never change
 */
import { createHash } from 'node:crypto';
import { lstat, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openLayerStore } from '../../../fs/index.js';
import type { LayerStore } from '../../../fs/layer-store.js';

export interface TempStoreOptions {
  flushIntervalMs?: number;
}

export interface TempStore {
  /** The temporary directory holding `dir` and `canary`. */
  readonly root: string;
  /** The store's directory. */
  readonly dir: string;
  /** A directory next to the store that no store operation may touch. */
  readonly canary: string;
  /** The open store (a new object after `reopen`). */
  readonly store: LayerStore;
  /** Closes the store and opens it again on the same directory. */
  reopen(): Promise<LayerStore>;
  /** Closes the store (once) and deletes the temporary directory, unless LCFS_TEST_KEEP=1. */
  dispose(): Promise<void>;
}

export async function openTempStore(options: TempStoreOptions = {}): Promise<TempStore> {
  const root = await mkdtemp(join(tmpdir(), 'lcfs-test-'));
  const dir = join(root, 'store');
  const canary = join(root, 'canary');
  await mkdir(dir);
  await mkdir(canary);
  await writeFile(join(canary, 'sentinel'), 'lcfs canary: nothing may write here\n');
  const open = () => openLayerStore({ dir, flushIntervalMs: options.flushIntervalMs });
  let store = await open();
  let closed = false;
  return {
    root,
    dir,
    canary,
    get store() {
      return store;
    },
    async reopen() {
      if (!closed) await store.close();
      closed = false;
      store = await open();
      return store;
    },
    async dispose() {
      try {
        if (!closed) {
          closed = true;
          await store.close();
        }
      } finally {
        if (process.env.LCFS_TEST_KEEP !== '1') await rm(root, { recursive: true, force: true });
      }
    },
  };
}

/**
 * Registers mocha hooks giving every test of the enclosing `describe` its own store; returns an
 * accessor for the current one.
 */
export function useTempStore(options: TempStoreOptions = {}): () => TempStore {
  let current: TempStore | undefined;
  beforeEach(async function () {
    this.timeout(30_000);
    current = await openTempStore(options);
  });
  afterEach(async function () {
    this.timeout(30_000);
    const ts = current;
    current = undefined;
    await ts?.dispose();
  });
  return () => {
    if (!current) throw new Error('useTempStore: no store outside a test');
    return current;
  };
}

/**
 * What lies outside the store dir that a path-escape bug could change: every entry under `root`
 * except `store/` (with sizes and content hashes), and /etc/passwd. Compare two fingerprints with
 * deepStrictEqual.
 */
export async function outsideFingerprint(ts: TempStore): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (abs: string, rel: string): Promise<void> => {
    for (const name of (await readdir(abs)).sort()) {
      if (rel === '' && name === 'store') continue;
      const p = join(abs, name);
      const st = await lstat(p);
      const key = rel + '/' + name;
      if (st.isDirectory()) {
        out[key] = `dir ${st.mode.toString(8)}`;
        await walk(p, key);
      } else if (st.isFile()) {
        out[key] = `file ${st.size} ${createHash('sha256')
          .update(await readFile(p))
          .digest('hex')}`;
      } else {
        out[key] = `other ${st.mode.toString(8)}`;
      }
    }
  };
  await walk(ts.root, '');
  const passwd = await lstat('/etc/passwd').catch(() => undefined);
  out['/etc/passwd'] = passwd
    ? `${passwd.size} ${passwd.mtimeMs} ${createHash('sha256')
        .update(await readFile('/etc/passwd'))
        .digest('hex')}`
    : 'absent';
  return out;
}
