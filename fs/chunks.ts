import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  link,
  mkdir,
  open,
  readdir,
  rename,
  unlink,
  writeFile,
  type FileHandle,
} from 'node:fs/promises';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { StoreError } from './errors.js';
import { HandleCache } from './handle-cache.js';
import type { MetaDB } from './meta.js';

/**
 * File content lives in chunks of at most CHUNK_SIZE bytes, one backing file each.
 *
 * - A **sealed** chunk is named by the sha256 of its bytes (64 hex digits) and never changes,
 *   so identical content is stored once however many layers hold it.
 * - A **mutable** chunk (`w<n>`) holds bytes written through a writable layer. It is written in
 *   place only while exactly one inode record references it; a shared one is copied first.
 *
 * Every chunk is reference-counted in the metadata (`r/<ref>`), in the same transactions as the
 * records that point at it. When a count reaches zero the chunk is queued (`u/<ref>`) and its file
 * removed after that state is committed, so a crash can only leave an unreferenced file behind,
 * never a reference to a missing one. Chunks an apply is still writing are pinned in memory.
 */

const run = promisify(execFile);
const MAX_HANDLES = 256;
/** Mirrors CHUNK_SIZE; kept here so the chunk layer does not depend on the store's API module. */
const CHUNK_LIMIT = 1 << 20;
/** Chunks remembered as prefetched, so a sequential reader triggers each read-ahead once. */
const PREFETCH_MEMORY = 1024;
/** Past this many files, one syncfs of the backing filesystem beats an fsync per file. */
const SYNCFS_THRESHOLD = 32;

export function isSealed(ref: string): boolean {
  return ref.length === 64;
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export class ChunkStore {
  /** Bytes written to chunk files since open, copy-ups included. */
  bytesWritten = 0;
  private readonly handles = new HandleCache(MAX_HANDLES);
  private readonly pins = new Map<string, number>();
  private readonly unlinking = new Map<string, Promise<void>>();
  private readonly writing = new Map<string, Promise<void>>();
  private readonly unsyncedMutable = new Set<string>();
  private readonly prefetched = new Set<string>();

  private constructor(
    private readonly dir: string,
    private readonly meta: MetaDB,
  ) {}

  static async open(dir: string, meta: MetaDB): Promise<ChunkStore> {
    await mkdir(join(dir, 'mutable'), { recursive: true });
    for (let i = 0; i < 256; i++) {
      await mkdir(join(dir, 'sealed', i.toString(16).padStart(2, '0')), { recursive: true });
    }
    const store = new ChunkStore(dir, meta);
    // Finish removals a crash interrupted.
    for (const [ref] of meta.scan<number>('u')) store.reap(ref);
    return store;
  }

  path(ref: string): string {
    return isSealed(ref)
      ? join(this.dir, 'sealed', ref.slice(0, 2), ref)
      : join(this.dir, 'mutable', ref);
  }

  count(ref: string): number {
    return this.meta.get<number>(`r/${ref}`) ?? 0;
  }

  /** Reads into `out`; bytes past the end of the chunk file read as zeros. */
  async read(ref: string, offset: number, out: Buffer): Promise<void> {
    await this.withHandle(ref, async (fh) => {
      let done = 0;
      while (done < out.length) {
        const { bytesRead } = await fh.read(out, done, out.length - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      out.fill(0, done);
    });
  }

  /**
   * Starts reading a sealed chunk into the page cache, so that a sequential reader finds it
   * there; chunks are separate files, so the kernel's own read-ahead stops at each one's end.
   */
  prefetch(ref: string): void {
    if (!isSealed(ref) || this.prefetched.has(ref)) return;
    this.prefetched.add(ref);
    if (this.prefetched.size > PREFETCH_MEMORY)
      this.prefetched.delete(this.prefetched.values().next().value as string);
    void this.withHandle(ref, (fh) =>
      fh.read(Buffer.allocUnsafe(CHUNK_LIMIT), 0, CHUNK_LIMIT, 0),
    ).catch(() => undefined);
  }

  /** A new, empty mutable chunk holding one reference. */
  async createMutable(): Promise<string> {
    const n = (this.meta.get<number>('m/chunk') ?? 0) + 1;
    this.meta.put('m/chunk', n);
    const ref = `w${n}`;
    this.meta.addRef(ref, 1); // before the file exists, so the orphan sweep leaves it be
    // 'w+' truncates a file a crash may have left under a number that was handed out again.
    this.handles.add(ref, await open(this.path(ref), 'w+'));
    return ref;
  }

  async write(ref: string, offset: number, data: Uint8Array): Promise<void> {
    await this.withHandle(ref, async (fh) => {
      let done = 0;
      while (done < data.length) {
        const { bytesWritten } = await fh.write(data, done, data.length - done, offset + done);
        done += bytesWritten;
      }
    });
    this.bytesWritten += data.length;
    this.unsyncedMutable.add(ref);
  }

  async truncate(ref: string, length: number): Promise<void> {
    await this.withHandle(ref, (fh) => fh.truncate(length));
    this.unsyncedMutable.add(ref);
  }

  /**
   * A mutable copy of the first `length` bytes of `src` (`''` is a hole), with `patch` written
   * over it, in one write: a 4 KiB change to a shared chunk costs one chunk, not one plus 4 KiB.
   */
  async copyToMutable(
    src: string,
    length: number,
    patch?: { offset: number; data: Uint8Array },
  ): Promise<string> {
    const ref = await this.createMutable();
    if (src === '' || length === 0) {
      // Nothing to keep: the patch alone, and a hole (zeros) before it.
      if (patch) await this.write(ref, patch.offset, patch.data);
      return ref;
    }
    const end = Math.max(length, patch ? patch.offset + patch.data.length : 0);
    const buf = Buffer.allocUnsafe(end);
    await this.read(src, 0, buf.subarray(0, length));
    buf.fill(0, length);
    if (patch) buf.set(patch.data, patch.offset);
    await this.write(ref, 0, buf);
    return ref;
  }

  /**
   * Makes sure the sealed chunk `hash` exists with `data`, and pins it until `unpin`. Writes
   * nothing when the store already holds it. Returns the bytes written.
   */
  async storeSealed(hash: string, data: Uint8Array): Promise<number> {
    this.pin(hash);
    const removing = this.unlinking.get(hash);
    if (removing) await removing;
    const inProgress = this.writing.get(hash);
    if (inProgress) {
      await inProgress;
      return 0;
    }
    if (this.count(hash) > 0 || this.meta.get(`u/${hash}`) !== undefined) return 0;
    const write = writeFile(this.path(hash), data);
    this.writing.set(hash, write);
    try {
      await write;
    } finally {
      this.writing.delete(hash);
    }
    this.bytesWritten += data.length;
    return data.length;
  }

  /**
   * Seals a mutable chunk that will not be written again: its bytes get their hash as a name,
   * by a hard link rather than a copy, or are dropped for the copy the store already holds.
   * Returns the hash, pinned until `unpin` (the caller swaps the reference in its record), and
   * the bytes it read to hash them.
   */
  async seal(ref: string): Promise<{ hash: string; data: Buffer }> {
    const buf = Buffer.allocUnsafe(CHUNK_LIMIT);
    let length = 0;
    await this.withHandle(ref, async (fh) => {
      const { size } = await fh.stat();
      length = Math.min(size, CHUNK_LIMIT);
      await this.read(ref, 0, buf.subarray(0, length));
    });
    const data = buf.subarray(0, length);
    const hash = sha256(data);
    this.pin(hash);
    const removing = this.unlinking.get(hash);
    if (removing) await removing;
    const inProgress = this.writing.get(hash);
    if (inProgress) await inProgress;
    else if (this.count(hash) === 0 && this.meta.get(`u/${hash}`) === undefined) {
      // Link under a temporary name, then rename over whatever a crash may have left.
      const tmp = `${this.path(hash)}.${process.pid}.tmp`;
      const linking = link(this.path(ref), tmp).then(() => rename(tmp, this.path(hash)));
      this.writing.set(hash, linking);
      try {
        await linking;
      } finally {
        this.writing.delete(hash);
      }
    }
    return { hash, data };
  }

  pin(ref: string): void {
    this.pins.set(ref, (this.pins.get(ref) ?? 0) + 1);
  }

  unpin(ref: string): void {
    const n = (this.pins.get(ref) ?? 0) - 1;
    if (n > 0) {
      this.pins.set(ref, n);
      return;
    }
    this.pins.delete(ref);
    if (this.count(ref) === 0) this.released(ref);
  }

  /** Called when a chunk's count reaches zero: remove its file once that is committed. */
  released(ref: string): void {
    this.meta.put(`u/${ref}`, 1);
    this.meta.onNextCommit(() => this.reap(ref));
  }

  /**
   * Makes mutable chunks durable (all those written since their last sync, by default): an
   * fsync each, or one syncfs when there are many.
   */
  async syncMutable(refs: Iterable<string> = this.unsyncedMutable): Promise<void> {
    const todo = [...new Set(refs)].filter((r) => this.unsyncedMutable.has(r));
    for (const ref of todo) this.unsyncedMutable.delete(ref);
    if (todo.length > SYNCFS_THRESHOLD) {
      await run('sync', ['-f', this.dir]);
      return;
    }
    await Promise.all(todo.map((ref) => this.withHandle(ref, (fh) => fh.datasync())));
  }

  /** Makes newly written sealed chunks durable. */
  async syncSealed(hashes: string[]): Promise<void> {
    if (hashes.length > SYNCFS_THRESHOLD) {
      await run('sync', ['-f', this.dir]);
      return;
    }
    await Promise.all(
      hashes.map(async (hash) => {
        const fh = await open(this.path(hash), 'r');
        try {
          await fh.datasync();
        } finally {
          await fh.close();
        }
      }),
    );
  }

  /**
   * Removes chunk files nothing references: what a crash left between writing a chunk and
   * committing the record that would have used it. Runs in slices beside normal work.
   */
  async sweepOrphans(): Promise<number> {
    let removed = 0;
    let seen = 0;
    const dirs = [join(this.dir, 'mutable')];
    for (let i = 0; i < 256; i++)
      dirs.push(join(this.dir, 'sealed', i.toString(16).padStart(2, '0')));
    for (const dir of dirs) {
      for (const name of await readdir(dir)) {
        if (++seen % 1000 === 0) await yieldToLoop();
        const mine = name.endsWith(`.${process.pid}.tmp`);
        const orphan = name.endsWith('.tmp')
          ? !mine
          : this.count(name) === 0 &&
            !this.pins.has(name) &&
            !this.writing.has(name) &&
            !this.unlinking.has(name) &&
            this.meta.get(`u/${name}`) === undefined;
        if (!orphan) continue;
        await unlink(join(dir, name)).catch(() => undefined);
        removed++;
      }
    }
    return removed;
  }

  /** Resolves once no chunk file removal is under way. */
  async settle(): Promise<void> {
    while (this.unlinking.size > 0) await Promise.all(this.unlinking.values());
  }

  async close(): Promise<void> {
    await this.handles.closeAll();
  }

  private reap(ref: string): void {
    if (this.count(ref) > 0 || this.pins.has(ref) || this.unlinking.has(ref)) {
      if (this.count(ref) > 0 || this.pins.has(ref)) this.meta.del(`u/${ref}`);
      return;
    }
    const removal = (async () => {
      await this.handles.drop(ref);
      this.unsyncedMutable.delete(ref);
      await unlink(this.path(ref)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
      // A new reference may have arrived while the file was going; keep the queue entry then.
      if (this.count(ref) === 0) this.meta.del(`u/${ref}`);
    })().finally(() => this.unlinking.delete(ref));
    this.unlinking.set(ref, removal);
  }

  private withHandle<T>(ref: string, fn: (fh: FileHandle) => Promise<T>): Promise<T> {
    const opener = (): Promise<FileHandle> =>
      open(this.path(ref), isSealed(ref) ? 'r' : 'r+').catch((err: NodeJS.ErrnoException) => {
        throw new StoreError(
          'LCFS_ESTORE_CORRUPT',
          'EIO',
          `chunk ${ref} cannot be opened: ${err.code ?? err.message}`,
        );
      });
    return this.handles.use(ref, opener, fn);
  }
}
