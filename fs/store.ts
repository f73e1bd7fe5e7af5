import { mkdir, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import type { Logger } from 'pino';
import { applyTar } from './apply.js';
import { ChangeSet, changesSize, diffTar } from './changes.js';
import { ChunkStore } from './chunks.js';
import { AccessLog } from './access-log.js';
import { StoreError } from './errors.js';
import { FileData } from './file-data.js';
import { FrozenCache } from './frozen-cache.js';
import { QuotaLedger } from './quota.js';
import type { LayerStore } from './layer-store.js';
import { MetaDB, StagedView } from './meta.js';
import {
  contentKey,
  inodeKey,
  layerKey,
  now,
  S_IFDIR,
  toAttr,
  type ContentRecord,
  type LayerRecord,
} from './records.js';
import { checkName, LayerTree, type TreeContext } from './tree.js';
import type {
  AccessCounters,
  Attr,
  AttrChange,
  Caller,
  Change,
  CreateLayerOptions,
  DirEntry,
  LayerChange,
  LayerInfo,
  StoreStatfs,
} from './types.js';

export interface OpenOptions {
  /** Where the store keeps its metadata and chunks: a directory on a local disk. */
  dir: string;
  logger?: Logger;
  /** How long a node operation may wait before it is committed (and durable). */
  flushIntervalMs?: number;
}

/** Opens (or creates) the store in `opts.dir`. One process at a time may hold a store open. */
export async function openLayerStore(opts: OpenOptions): Promise<LayerStore> {
  await mkdir(join(opts.dir, 'meta'), { recursive: true });
  const meta = new MetaDB(join(opts.dir, 'meta'), opts.flushIntervalMs ?? 50);
  const chunks = await ChunkStore.open(join(opts.dir, 'chunks'), meta);
  meta.onRefZero = (ref) => chunks.released(ref);
  const store = new LocalLayerStore(opts.dir, meta, chunks, opts.logger);
  store.startUpkeep();
  return store;
}

const PURGE_BATCH = 2000;

class LocalLayerStore implements LayerStore {
  private readonly layers = new Map<string, LayerRecord>();
  private readonly children = new Map<string, Set<string>>();
  private readonly refs = new Map<string, number>();
  private readonly trees = new Map<string, LayerTree>();
  private readonly applying = new Set<string>();
  private readonly background = new Set<Promise<void>>();
  private readonly data: FileData;
  private readonly access = new AccessLog();
  private readonly cache = new FrozenCache();
  private readonly byIndex = new Map<number, string>();
  /** Open handles per `<layer index>/<ino>`; an unlinked file lives until its count is zero. */
  private readonly openFiles = new Map<string, number>();
  private readonly treeContext: TreeContext = {
    cache: this.cache,
    allocIno: () => this.next('m/ino'),
    isOpen: (layer, ino) => this.openFiles.has(`${layer}/${ino}`),
    quotas: new QuotaLedger(),
  };
  private closed = false;
  private readonly changeListeners = new Set<(change: LayerChange) => void | Promise<void>>();

  constructor(
    private readonly dir: string,
    private readonly meta: MetaDB,
    private readonly chunks: ChunkStore,
    private readonly log?: Logger,
  ) {
    this.data = new FileData(chunks, this.treeContext.quotas, () => this.cache.contentChanged());
    for (const [, rec] of meta.scan<LayerRecord>('l')) this.remember(rec);
  }

  get bytesWritten(): number {
    return this.chunks.bytesWritten;
  }

  // --- layers ---

  async createLayer(
    id: string,
    parent: string | null,
    options: CreateLayerOptions = {},
  ): Promise<LayerInfo> {
    this.assertOpen();
    checkLayerId(id);
    const { quota } = options;
    if (quota !== undefined && !(Number.isSafeInteger(quota) && quota > 0)) {
      throw new StoreError(
        'LCFS_EQUOTA',
        'EINVAL',
        `layer ${id}: quota must be a positive byte count (got ${quota})`,
      );
    }
    if (this.layers.has(id))
      throw new StoreError('LCFS_ELAYER_EXISTS', 'EEXIST', `layer ${id} already exists`);
    let depth = 0;
    let root: number;
    if (parent !== null) {
      const p = this.record(parent);
      if (p.state === 'writable') await this.freeze(parent);
      depth = p.depth + 1;
      root = p.root;
      // Another call may have raced us through the await.
      if (this.layers.has(id))
        throw new StoreError('LCFS_ELAYER_EXISTS', 'EEXIST', `layer ${id} already exists`);
      this.record(parent);
    }
    const index = this.next('m/layer');
    if (parent === null) {
      root = this.next('m/ino');
      const t = now();
      this.meta.put(inodeKey(index, root), {
        mode: S_IFDIR | 0o755,
        uid: 0,
        gid: 0,
        nlink: 2,
        rdev: 0,
        size: 0,
        atime: t,
        mtime: t,
        ctime: t,
        links: [],
      });
    }
    const rec: LayerRecord = {
      id,
      parent,
      index,
      depth,
      state: 'writable',
      createdAt: Date.now(),
      root: root!,
      ...(quota === undefined ? {} : { quota }),
    };
    this.meta.put(layerKey(id), rec);
    this.remember(rec);
    await this.meta.flush();
    this.log?.debug({ layer: id, parent }, 'layer created');
    return this.layer(id);
  }

  async freeze(id: string): Promise<void> {
    this.assertOpen();
    const rec = this.record(id);
    if (rec.state === 'frozen') return;
    if (this.applying.has(id))
      throw new StoreError('LCFS_ELAYER_IN_USE', 'EBUSY', `layer ${id} is being applied to`);
    await this.data.idle(rec.index);
    // Everything written and not yet synced, whichever layer: cheaper than finding this
    // layer's own chunks, which would cost in proportion to the files it holds.
    await this.chunks.syncMutable();
    const frozen: LayerRecord = { ...this.record(id), state: 'frozen' };
    this.meta.put(layerKey(id), frozen);
    this.remember(frozen);
    await this.meta.flush();
  }

  async removeLayer(id: string): Promise<void> {
    this.assertOpen();
    const rec = this.record(id);
    const kids = this.children.get(id)?.size ?? 0;
    if (kids > 0) {
      throw new StoreError(
        'LCFS_ELAYER_HAS_CHILDREN',
        'EBUSY',
        `layer ${id} has ${kids} child layer(s); remove them first`,
      );
    }
    if ((this.refs.get(id) ?? 0) > 0 || this.applying.has(id)) {
      throw new StoreError('LCFS_ELAYER_IN_USE', 'EBUSY', `layer ${id} is in use`);
    }
    // The layer goes in one commit; its records are purged after, and again after a crash.
    this.meta.del(layerKey(id));
    this.meta.put(`p/${rec.index}`, 1);
    this.forget(rec);
    this.treeContext.quotas.forget(rec.index);
    await this.meta.flush();
    this.runInBackground(this.purge(rec.index));
    await this.emit({ layer: id, index: rec.index, entries: [], inodes: [], removed: true });
  }

  layerAt(index: number): LayerInfo | undefined {
    const id = this.byIndex.get(index);
    return id === undefined ? undefined : this.layer(id);
  }

  exists(id: string): boolean {
    return this.layers.has(id);
  }

  layer(id: string): LayerInfo {
    const rec = this.record(id);
    return {
      id: rec.id,
      parent: rec.parent,
      state: rec.state,
      index: rec.index,
      depth: rec.depth,
      createdAt: rec.createdAt,
      children: this.children.get(id)?.size ?? 0,
      refs: this.refs.get(id) ?? 0,
      ...(rec.quota === undefined ? {} : { quota: rec.quota }),
    };
  }

  listLayers(): LayerInfo[] {
    return [...this.layers.keys()].map((id) => this.layer(id));
  }

  get(id: string): number {
    this.record(id);
    const n = (this.refs.get(id) ?? 0) + 1;
    this.refs.set(id, n);
    return n;
  }

  put(id: string): number {
    this.record(id);
    const n = Math.max(0, (this.refs.get(id) ?? 0) - 1);
    if (n === 0) this.refs.delete(id);
    else this.refs.set(id, n);
    return n;
  }

  // --- nodes ---

  root(id: string): number {
    return this.record(id).root;
  }

  lookup(id: string, dir: number, name: string): Attr {
    return this.tree(id).lookup(dir, name);
  }

  resolve(id: string, path: string): Attr {
    const tree = this.tree(id);
    return tree.getattr(tree.resolve(path));
  }

  getattr(id: string, ino: number): Attr {
    return this.tree(id).getattr(ino);
  }

  readdir(id: string, dir: number): DirEntry[] {
    return this.tree(id).readdir(dir);
  }

  readlink(id: string, ino: number): string {
    return this.tree(id).readlink(ino);
  }

  open(id: string, ino: number): void {
    const tree = this.tree(id);
    tree.inode(ino);
    const key = `${tree.index}/${ino}`;
    this.openFiles.set(key, (this.openFiles.get(key) ?? 0) + 1);
  }

  release(id: string, ino: number): void {
    const tree = this.tree(id);
    const key = `${tree.index}/${ino}`;
    const n = (this.openFiles.get(key) ?? 0) - 1;
    if (n > 0) {
      this.openFiles.set(key, n);
      return;
    }
    this.openFiles.delete(key);
    tree.dropOrphan(ino);
  }

  async read(id: string, ino: number, offset: number, length: number): Promise<Buffer> {
    const tree = this.tree(id);
    const out = await this.data.read(tree, ino, offset, length);
    this.access.read(tree.index, ino, out.length);
    return out;
  }

  async write(id: string, ino: number, offset: number, data: Buffer): Promise<number> {
    const tree = this.tree(id);
    const n = await this.data.write(tree, ino, offset, data);
    this.access.write(tree.index, ino, n);
    return n;
  }

  create(id: string, dir: number, name: string, mode: number, caller: Caller): Attr {
    return this.tree(id).mknod(dir, name, 0o100000 | (mode & 0o7777), 0, caller);
  }

  mkdir(id: string, dir: number, name: string, mode: number, caller: Caller): Attr {
    return this.tree(id).mkdir(dir, name, mode, caller);
  }

  mknod(id: string, dir: number, name: string, mode: number, rdev: number, caller: Caller): Attr {
    return this.tree(id).mknod(dir, name, mode, rdev, caller);
  }

  symlink(id: string, dir: number, name: string, target: string, caller: Caller): Attr {
    return this.tree(id).symlink(dir, name, target, caller);
  }

  link(id: string, ino: number, dir: number, name: string): Attr {
    return this.tree(id).link(ino, dir, name);
  }

  unlink(id: string, dir: number, name: string): void {
    this.tree(id).unlink(dir, name);
  }

  rmdir(id: string, dir: number, name: string): void {
    this.tree(id).rmdir(dir, name);
  }

  rename(id: string, dir: number, name: string, newDir: number, newName: string): void {
    this.tree(id).rename(dir, name, newDir, newName);
  }

  async setattr(id: string, ino: number, change: AttrChange): Promise<Attr> {
    const tree = this.tree(id);
    tree.assertWritable();
    if (change.size !== undefined) await this.data.truncate(tree, ino, change.size);
    const { size: _size, ...rest } = change;
    const rec =
      Object.keys(rest).length > 0 || change.size === undefined
        ? tree.setattr(ino, rest)
        : tree.inode(ino);
    return toAttr(ino, rec);
  }

  getxattr(id: string, ino: number, name: string): Buffer {
    return this.tree(id).getxattr(ino, name);
  }

  setxattr(id: string, ino: number, name: string, value: Buffer): void {
    this.tree(id).setxattr(ino, name, value);
  }

  listxattr(id: string, ino: number): string[] {
    return this.tree(id).listxattr(ino);
  }

  removexattr(id: string, ino: number, name: string): void {
    this.tree(id).removexattr(ino, name);
  }

  async statfs(): Promise<StoreStatfs> {
    const s = await statfs(this.dir);
    return {
      bsize: s.bsize,
      blocks: s.blocks,
      bfree: s.bfree,
      bavail: s.bavail,
      files: s.files,
      ffree: s.ffree,
      namelen: 255,
    };
  }

  async fsync(id: string, ino: number): Promise<void> {
    const tree = this.tree(id);
    await this.data.settled(tree.index, ino);
    const own = this.meta.get<ContentRecord>(contentKey(tree.index, ino)) ?? [];
    await this.chunks.syncMutable(own);
    await this.meta.flush();
  }

  // --- diffs ---

  diff(id: string, parent: string | null): Readable {
    const tree = this.tree(id);
    const out = new PassThrough();
    this.changes(id, parent).then(
      (changes) => {
        const tar = diffTar(tree, this.data, changes);
        tar.on('error', (err) => out.destroy(err));
        tar.pipe(out);
      },
      (err: Error) => out.destroy(err),
    );
    return out;
  }

  async changes(id: string, parent: string | null): Promise<Change[]> {
    const rec = this.record(id);
    const tree = this.tree(id);
    const base = parent === null ? null : this.tree(parent);
    const set = new ChangeSet(tree, base, this.data);
    if (parent !== rec.parent) return set.fromWalk();
    const i = rec.index;
    const entries: Array<[number, string]> = [];
    for (const key of this.meta.keys(`d/${i}/`)) {
      const rest = key.slice(`d/${i}/`.length);
      const at = rest.indexOf('/');
      entries.push([Number(rest.slice(0, at)), rest.slice(at + 1)]);
    }
    const inodes = new Set<number>();
    for (const prefix of [`i/${i}/`, `c/${i}/`]) {
      for (const key of this.meta.keys(prefix)) inodes.add(Number(key.slice(prefix.length)));
    }
    return set.fromRecords({ entries, inodes });
  }

  async applyDiff(id: string, parent: string | null, tar: Readable): Promise<number> {
    this.assertOpen();
    const rec = this.record(id);
    if (parent !== rec.parent) {
      throw new StoreError(
        'LCFS_EPARENT_MISMATCH',
        'EINVAL',
        `layer ${id} has parent ${rec.parent ?? 'none'}, not ${parent ?? 'none'}`,
      );
    }
    const live = this.tree(id);
    live.assertWritable();
    if (this.applying.has(id))
      throw new StoreError(
        'LCFS_ELAYER_IN_USE',
        'EBUSY',
        `layer ${id} is already being applied to`,
      );
    this.applying.add(id);
    try {
      const staged = new StagedView(this.meta);
      const tree = new LayerTree(rec, live.chain, staged, this.treeContext);
      const result = await applyTar(tree, this.chunks, tar);
      try {
        await this.chunks.syncSealed(result.written);
        staged.commit();
        this.treeContext.quotas.forget(rec.index);
      } finally {
        for (const ref of result.pinned) this.chunks.unpin(ref);
      }
      await this.meta.flush();
      await this.announce(rec, staged.keys());
      return result.size;
    } finally {
      this.applying.delete(id);
    }
  }

  async diffSize(id: string, parent: string | null): Promise<number> {
    return changesSize(this.tree(id), await this.changes(id, parent));
  }

  // --- statistics and upkeep ---

  layerCounters(id: string): AccessCounters {
    return this.access.layer(this.record(id).index);
  }

  fileCounters(id: string, ino: number): AccessCounters | undefined {
    return this.access.file(this.record(id).index, ino);
  }

  onLayerChange(listener: (change: LayerChange) => void | Promise<void>): () => void {
    this.changeListeners.add(listener);
    return () => this.changeListeners.delete(listener);
  }

  flush(): Promise<void> {
    return this.meta.flush();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.background);
    // Chunk removals read and write the metadata: let them finish while it is open.
    await this.meta.flush();
    await this.chunks.settle();
    await this.meta.close();
    await this.chunks.close();
  }

  /** Finishes what a crash interrupted: purges of removed layers, and unreferenced chunks. */
  startUpkeep(): void {
    for (const [index] of this.meta.scan('p')) this.runInBackground(this.purge(Number(index)));
    // Files unlinked while open when the store went down: nothing holds them open now.
    for (const key of this.meta.keys('o/')) {
      const [, index, ino] = key.split('/');
      const id = this.byIndex.get(Number(index));
      if (id === undefined) this.meta.del(key);
      else this.tree(id).dropOrphan(Number(ino));
    }
    this.runInBackground(
      this.chunks.sweepOrphans().then((n) => {
        if (n > 0) this.log?.info({ removed: n }, 'removed unreferenced chunk files');
      }),
    );
  }

  // --- internals ---

  private assertOpen(): void {
    if (this.closed) throw new StoreError('LCFS_ESTORE_CLOSED', 'EIO', 'the layer store is closed');
  }

  private record(id: string): LayerRecord {
    const rec = this.layers.get(id);
    if (!rec) throw new StoreError('LCFS_ELAYER_NOT_FOUND', 'ENOENT', `layer ${id} not found`);
    return rec;
  }

  private tree(id: string): LayerTree {
    this.assertOpen();
    let tree = this.trees.get(id);
    if (!tree) {
      const rec = this.record(id);
      const chain: number[] = [];
      for (
        let at: LayerRecord | undefined = rec;
        at;
        at = at.parent ? this.layers.get(at.parent) : undefined
      ) {
        chain.push(at.index);
      }
      tree = new LayerTree(rec, chain, this.meta, this.treeContext);
      this.trees.set(id, tree);
    }
    return tree;
  }

  private remember(rec: LayerRecord): void {
    this.layers.set(rec.id, rec);
    this.byIndex.set(rec.index, rec.id);
    this.trees.delete(rec.id);
    if (rec.parent !== null) {
      let kids = this.children.get(rec.parent);
      if (!kids) this.children.set(rec.parent, (kids = new Set()));
      kids.add(rec.id);
    }
  }

  private forget(rec: LayerRecord): void {
    this.layers.delete(rec.id);
    this.byIndex.delete(rec.index);
    this.trees.delete(rec.id);
    this.refs.delete(rec.id);
    if (rec.parent !== null) this.children.get(rec.parent)?.delete(rec.id);
    this.children.delete(rec.id);
  }

  private next(counter: string): number {
    const n = (this.meta.get<number>(counter) ?? 0) + 1;
    this.meta.put(counter, n);
    return n;
  }

  /** Deletes a removed layer's records in slices, releasing the chunks it held. */
  private async purge(index: number): Promise<void> {
    let done = 0;
    for (const kind of ['c', 'i', 'd']) {
      for (const key of this.meta.keys(`${kind}/${index}/`)) {
        if (kind === 'c')
          for (const ref of this.meta.get<ContentRecord>(key) ?? [])
            if (ref !== '') this.meta.addRef(ref, -1);
        this.meta.del(key);
        if (++done % PURGE_BATCH === 0) await yieldToLoop();
      }
    }
    this.meta.del(`p/${index}`);
    await this.meta.flush();
  }

  /** Tells listeners which names and nodes of a layer a bulk change touched. */
  private async announce(rec: LayerRecord, keys: string[]): Promise<void> {
    if (this.changeListeners.size === 0) return;
    const entries: Array<[number, string]> = [];
    const inodes = new Set<number>();
    for (const key of keys) {
      const [kind, layer, a, ...rest] = key.split('/');
      if (Number(layer) !== rec.index) continue;
      if (kind === 'd') entries.push([Number(a), rest.join('/')]);
      else if (kind === 'i' || kind === 'c') inodes.add(Number(a));
    }
    await this.emit({ layer: rec.id, index: rec.index, entries, inodes: [...inodes] });
  }

  private async emit(change: LayerChange): Promise<void> {
    await Promise.all(
      [...this.changeListeners].map(async (listener) => {
        try {
          await listener(change);
        } catch (err) {
          this.log?.error({ err }, 'layer change listener failed');
        }
      }),
    );
  }

  private runInBackground(task: Promise<void>): void {
    const tracked = task.catch((err: unknown) =>
      this.log?.error({ err }, 'background task failed'),
    );
    this.background.add(tracked);
    void tracked.finally(() => this.background.delete(tracked));
  }
}

function checkLayerId(id: string): void {
  try {
    checkName(id);
  } catch {
    throw new StoreError(
      'LCFS_ELAYER_BAD_ID',
      'EINVAL',
      `invalid layer id "${id}": it must be a file name (no "/", not "." or "..")`,
    );
  }
}
