import { open, type RootDatabase } from 'lmdb';

/**
 * The store's metadata: string keys in one LMDB environment, behind an in-memory write-behind
 * overlay.
 *
 * Node operations change the overlay synchronously, so a FUSE request never waits on a disk
 * commit; `flush` commits everything pending in one LMDB transaction (group commit). Because
 * operations apply to the overlay whole, between two operations, every commit is a consistent
 * state. Values are never mutated after `put`: the overlay and an in-flight commit share them.
 *
 * Keys are `<kind>/<group>/<leaf>`; `scan(group)` lists one group (a directory's entries, say),
 * merged across the overlay, the commit in flight and the database.
 */

const DELETED = Symbol('deleted');
/** A pending value, or DELETED for a pending removal. */
type Pending = unknown;
type Groups = Map<string, Map<string, Pending>>;

/** What node operations read and write: the live metadata or an apply's staging area. */
export interface MetaView {
  get<T>(key: string): T | undefined;
  put(key: string, value: unknown): void;
  del(key: string): void;
  /** Every entry of a group, as [leaf, value]. Order is not defined. */
  scan<T>(group: string): Array<[string, T]>;
  /** Changes a chunk's reference count by `delta`; counts are applied as deltas, never overwritten. */
  addRef(ref: string, delta: number): void;
}

function splitKey(key: string): [string, string] {
  const at = key.lastIndexOf('/');
  return [key.slice(0, at), key.slice(at + 1)];
}

function groupGet(groups: Groups, key: string): Pending {
  const [group, leaf] = splitKey(key);
  return groups.get(group)?.get(leaf);
}

function groupSet(groups: Groups, key: string, value: Pending): void {
  const [group, leaf] = splitKey(key);
  let leaves = groups.get(group);
  if (!leaves) groups.set(group, (leaves = new Map<string, Pending>()));
  leaves.set(leaf, value);
}

/** One past the largest UTF-8 string that starts with `prefix`. */
function rangeEnd(prefix: string): string {
  return prefix + '\u{10FFFF}';
}

export class MetaDB implements MetaView {
  private readonly db: RootDatabase;
  private pending: Groups = new Map();
  private pendingCount = 0;
  private inFlight: Groups | null = null;
  private flushChain: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | null = null;
  private readonly afterCommit: Array<() => void> = [];
  /** Told when a chunk's reference count reaches zero, so its file can go. */
  onRefZero: ((ref: string) => void) | null = null;

  constructor(
    path: string,
    private readonly flushIntervalMs: number,
  ) {
    // With overlapping sync (the default) a commit is visible first and durable a moment later;
    // flush() waits for both, and after a power loss LMDB reopens at the last durable commit.
    // Shared structures: records of one shape (inodes, layers) store their field names once.
    this.db = open({ path, compression: false, sharedStructuresKey: Symbol.for('structures') });
  }

  get<T>(key: string): T | undefined {
    let v = groupGet(this.pending, key);
    if (v === undefined && this.inFlight) v = groupGet(this.inFlight, key);
    if (v === undefined) return this.db.get(key) as T | undefined;
    return v === DELETED ? undefined : (v as T);
  }

  put(key: string, value: unknown): void {
    groupSet(this.pending, key, value);
    this.touched();
  }

  del(key: string): void {
    groupSet(this.pending, key, DELETED);
    this.touched();
  }

  addRef(ref: string, delta: number): void {
    const key = `r/${ref}`;
    const count = (this.get<number>(key) ?? 0) + delta;
    if (count < 0) throw new Error(`chunk ${ref}: reference count below zero`);
    if (count === 0) {
      this.del(key);
      this.onRefZero?.(ref);
    } else this.put(key, count);
  }

  scan<T>(group: string): Array<[string, T]> {
    const merged = new Map<string, unknown>();
    const prefix = group + '/';
    for (const { key, value } of this.db.getRange({ start: prefix, end: rangeEnd(prefix) })) {
      merged.set((key as string).slice(prefix.length), value);
    }
    for (const layer of [this.inFlight, this.pending]) {
      const leaves = layer?.get(group);
      if (leaves) for (const [leaf, v] of leaves) merged.set(leaf, v);
    }
    const out: Array<[string, T]> = [];
    for (const [leaf, v] of merged) if (v !== DELETED) out.push([leaf, v as T]);
    return out;
  }

  /** Every key under `prefix`, overlay included. For whole-layer scans, which are rare. */
  keys(prefix: string): Set<string> {
    const out = new Set<string>();
    for (const key of this.db.getKeys({ start: prefix, end: rangeEnd(prefix) }))
      out.add(key as string);
    for (const layer of [this.inFlight, this.pending]) {
      if (!layer) continue;
      for (const [group, leaves] of layer) {
        if (!`${group}/`.startsWith(prefix)) continue;
        for (const [leaf, v] of leaves) {
          if (v === DELETED) out.delete(`${group}/${leaf}`);
          else out.add(`${group}/${leaf}`);
        }
      }
    }
    return out;
  }

  /** Runs `fn` once the next flush has made everything before it durable. */
  onNextCommit(fn: () => void): void {
    this.afterCommit.push(fn);
    this.touched();
  }

  /** Commits everything written so far; resolves once it is on disk. */
  flush(): Promise<void> {
    const run = this.flushChain.then(() => this.commitPending());
    this.flushChain = run.catch(() => undefined);
    return run;
  }

  async close(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.flush();
    await this.db.close();
  }

  private touched(): void {
    this.pendingCount++;
    if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = null;
        void this.flush().catch(() => undefined);
      }, this.flushIntervalMs);
      this.timer.unref();
    }
  }

  private async commitPending(): Promise<void> {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.pendingCount === 0) return;
    const batch = this.pending;
    const callbacks = this.afterCommit.splice(0);
    this.pending = new Map();
    this.pendingCount = 0;
    this.inFlight = batch;
    try {
      await this.db.transaction(() => {
        for (const [group, leaves] of batch) {
          for (const [leaf, v] of leaves) {
            const key = `${group}/${leaf}`;
            if (v === DELETED) this.db.removeSync(key);
            else this.db.putSync(key, v);
          }
        }
      });
      await this.db.flushed;
    } catch (err) {
      // Put the batch back under anything written since, so nothing acknowledged is dropped.
      for (const [group, leaves] of batch) {
        for (const [leaf, v] of leaves) {
          if (groupGet(this.pending, `${group}/${leaf}`) === undefined) {
            groupSet(this.pending, `${group}/${leaf}`, v);
          }
        }
      }
      this.pendingCount++;
      this.afterCommit.unshift(...callbacks);
      throw err;
    } finally {
      this.inFlight = null;
    }
    for (const fn of callbacks) fn();
  }
}

/**
 * A private overlay over a MetaView, committed into it in one step or dropped whole. applyDiff
 * builds a layer here, so a failed or interrupted apply leaves nothing behind.
 */
export class StagedView implements MetaView {
  private readonly writes: Groups = new Map();
  private readonly refDeltas = new Map<string, number>();

  constructor(private readonly base: MetaView) {}

  get<T>(key: string): T | undefined {
    const v = groupGet(this.writes, key);
    if (v === undefined) return this.base.get<T>(key);
    return v === DELETED ? undefined : (v as T);
  }

  put(key: string, value: unknown): void {
    groupSet(this.writes, key, value);
  }

  del(key: string): void {
    groupSet(this.writes, key, DELETED);
  }

  addRef(ref: string, delta: number): void {
    this.refDeltas.set(ref, (this.refDeltas.get(ref) ?? 0) + delta);
  }

  /** The chunks whose count this staging area raises, which must stay pinned until commit. */
  refsAdded(): string[] {
    return [...this.refDeltas].filter(([, d]) => d > 0).map(([ref]) => ref);
  }

  scan<T>(group: string): Array<[string, T]> {
    const leaves = this.writes.get(group);
    const base = this.base.scan<T>(group);
    if (!leaves) return base;
    const merged = new Map<string, unknown>(base);
    for (const [leaf, v] of leaves) merged.set(leaf, v);
    const out: Array<[string, T]> = [];
    for (const [leaf, v] of merged) if (v !== DELETED) out.push([leaf, v as T]);
    return out;
  }

  /** The keys this staging area writes or removes. */
  keys(): string[] {
    const out: string[] = [];
    for (const [group, leaves] of this.writes)
      for (const leaf of leaves.keys()) out.push(`${group}/${leaf}`);
    return out;
  }

  /** Writes everything into the base view; synchronous, so no other operation interleaves. */
  commit(): void {
    for (const [group, leaves] of this.writes) {
      for (const [leaf, v] of leaves) {
        const key = `${group}/${leaf}`;
        if (v === DELETED) this.base.del(key);
        else this.base.put(key, v);
      }
    }
    for (const [ref, delta] of this.refDeltas) if (delta !== 0) this.base.addRef(ref, delta);
  }
}
