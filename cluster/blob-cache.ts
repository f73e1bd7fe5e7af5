import { createHash, type Hash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat, utimes, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import { hexOf, isDigest, mismatch, VerifyingStream } from './digest.js';
import { ClusterError, isClusterError } from './errors.js';

/**
 * The registry mirror's blob cache: verified blobs (layers, configs, manifests) on local disk,
 * named by digest, with a size bound and least-recently-used eviction. It is separate from the
 * layer volume and accounted on its own.
 *
 * A blob enters only through a `PartialBlob`, which hashes as it writes and moves the file into
 * place only when the digest matches, so no corrupt byte is ever cached. Reads hash again as
 * they serve (`VerifyingStream`): a blob damaged on disk fails before its last byte leaves and is
 * evicted, so it is never served whole nor advertised again.
 *
 * Layout under `dir`: `sha256/<hex>` complete blobs; `partial/<hex>` blobs being fetched (cleared
 * at start; a fetch cut by a restart starts over).
 */

export interface BlobInfo {
  readonly digest: string;
  readonly size: number;
}

interface CacheEntry {
  size: number;
  lastUsed: number;
  /** Reads in progress; a blob being read is not evicted. */
  readers: number;
}

export interface BlobCacheOptions {
  readonly dir: string;
  /** Eviction starts when the cached bytes pass this. */
  readonly maxBytes: number;
  readonly logger: Logger;
}

interface BlobCacheEvents {
  /** A verified blob is in the cache. */
  added: [BlobInfo];
  /** A blob left the cache (evicted, or found corrupt). */
  removed: [BlobInfo];
  /** This host started fetching a blob from upstream; peers may stream it as it arrives. */
  fetching: [PartialBlob];
  /** A fetch gave up. */
  abandoned: [PartialBlob];
}

export class BlobCache extends EventEmitter<BlobCacheEvents> {
  private readonly entries = new Map<string, CacheEntry>();
  private readonly partials = new Map<string, PartialBlob>();
  private used = 0;

  private constructor(
    private readonly options: BlobCacheOptions,
    private readonly completeDir: string,
    readonly partialDir: string,
  ) {
    super();
  }

  static async open(options: BlobCacheOptions): Promise<BlobCache> {
    const completeDir = join(options.dir, 'sha256');
    const partialDir = join(options.dir, 'partial');
    await rm(partialDir, { recursive: true, force: true });
    await mkdir(completeDir, { recursive: true });
    await mkdir(partialDir, { recursive: true });
    const cache = new BlobCache(options, completeDir, partialDir);
    for (const name of await readdir(completeDir)) {
      const digest = `sha256:${name}`;
      if (!isDigest(digest)) continue;
      const info = await stat(join(completeDir, name));
      cache.entries.set(digest, { size: info.size, lastUsed: info.mtimeMs, readers: 0 });
      cache.used += info.size;
    }
    await cache.evictToBound();
    return cache;
  }

  /** Bytes of complete blobs on disk. */
  get usedBytes(): number {
    return this.used;
  }

  get maxBytes(): number {
    return this.options.maxBytes;
  }

  stat(digest: string): BlobInfo | undefined {
    const entry = this.entries.get(digest);
    return entry === undefined ? undefined : { digest, size: entry.size };
  }

  list(): BlobInfo[] {
    return [...this.entries].map(([digest, entry]) => ({ digest, size: entry.size }));
  }

  /** The fetch of `digest` in progress on this host, if any. */
  partial(digest: string): PartialBlob | undefined {
    return this.partials.get(digest);
  }

  /** Blobs this host is fetching from upstream now (not those it streams from a peer). */
  upstreamFetches(): PartialBlob[] {
    return [...this.partials.values()].filter((partial) => partial.fromUpstream);
  }

  /**
   * Streams a complete blob from `offset`, checking its digest as it goes (the bytes before
   * `offset` are read and hashed first). A mismatch fails the stream before its last bytes and
   * evicts the blob. Throws LCFS_EBLOB_UNKNOWN when the blob is not cached.
   */
  read(digest: string, offset = 0): Readable {
    const entry = this.entries.get(digest);
    if (entry === undefined) {
      throw new ClusterError('LCFS_EBLOB_UNKNOWN', `blob ${digest} is not cached`);
    }
    entry.readers += 1;
    entry.lastUsed = Date.now();
    const path = this.pathOf(digest);
    utimes(path, new Date(), new Date()).catch(() => undefined);
    const hash = createHash('sha256');
    const out = new VerifyingStream(digest, hash);
    const run = async (): Promise<void> => {
      if (offset > 0) {
        for await (const chunk of createReadStream(path, { end: offset - 1 })) {
          hash.update(chunk as Buffer);
        }
      }
      await pipeline(createReadStream(path, { start: offset }), out);
    };
    run().then(
      () => (entry.readers -= 1),
      (err: unknown) => {
        entry.readers -= 1;
        if (!out.destroyed) out.destroy(err as Error);
        if (isClusterError(err, 'LCFS_EDIGEST_MISMATCH')) {
          this.options.logger.error({ digest, err }, 'cached blob is corrupt; evicting it');
          void this.remove(digest);
        }
      },
    );
    return out;
  }

  /**
   * Starts the one fetch of `digest` on this host. The caller writes the bytes into it, then
   * commits; while it runs, readers can follow it with `tail`.
   */
  async beginPartial(digest: string): Promise<PartialBlob> {
    if (this.partials.has(digest) || this.entries.has(digest)) {
      throw new Error(`blob ${digest} is already cached or being fetched`);
    }
    const partial = new PartialBlob(digest, join(this.partialDir, hexOf(digest)), this);
    this.partials.set(digest, partial);
    try {
      await partial.openFile();
    } catch (err) {
      this.partials.delete(digest);
      throw err;
    }
    return partial;
  }

  /** Drops a blob from the cache; readers already streaming it keep their open file. */
  async remove(digest: string): Promise<void> {
    const entry = this.entries.get(digest);
    if (entry === undefined) return;
    this.entries.delete(digest);
    this.used -= entry.size;
    await rm(this.pathOf(digest), { force: true });
    this.emit('removed', { digest, size: entry.size });
  }

  pathOf(digest: string): string {
    return join(this.completeDir, hexOf(digest));
  }

  /** Called by a PartialBlob whose bytes matched: moves it into place. */
  async adopt(partial: PartialBlob, size: number): Promise<void> {
    await rename(partial.path, this.pathOf(partial.digest));
    this.entries.set(partial.digest, { size, lastUsed: Date.now(), readers: 0 });
    this.used += size;
    this.partials.delete(partial.digest);
    this.emit('added', { digest: partial.digest, size });
    await this.evictToBound(partial.digest);
  }

  /** Called by a PartialBlob that gave up. */
  forget(partial: PartialBlob): void {
    if (this.partials.get(partial.digest) !== partial) return;
    this.partials.delete(partial.digest);
    this.emit('abandoned', partial);
  }

  private async evictToBound(keep?: string): Promise<void> {
    if (this.used <= this.options.maxBytes) return;
    const candidates = [...this.entries]
      .filter(([digest, entry]) => digest !== keep && entry.readers === 0)
      .sort(([, a], [, b]) => a.lastUsed - b.lastUsed);
    for (const [digest, entry] of candidates) {
      if (this.used <= this.options.maxBytes) break;
      this.options.logger.info({ digest, size: entry.size }, 'evicting least recently used blob');
      await this.remove(digest);
    }
  }
}

/**
 * A blob being fetched into the cache. Bytes are appended in order, from any mix of sources
 * (a fetch may resume elsewhere at the same offset); the hash runs over all of them. `commit`
 * checks the digest and moves the file into the cache; on a mismatch the caller `restart`s.
 *
 * `tail` lets other readers (the engine's own pull, peers) stream the blob while it arrives.
 * The last byte is held back until the digest has matched, so a tail reader never sees a
 * complete wrong blob: a failed or restarted fetch fails its readers instead.
 */
export class PartialBlob {
  /** Total size, once a source has said it. */
  size: number | undefined;
  /**
   * Bytes come from the upstream. Only then is the fetch advertised to peers: a host that
   * streams from a peer is not a source, or two such hosts could end up waiting on each other.
   */
  fromUpstream = false;
  private written = 0;
  private hash: Hash = createHash('sha256');
  private file: FileHandle | undefined;
  private state: 'open' | 'committed' | 'failed' = 'open';
  private failure: Error | undefined;
  /** Bumped by restart: tail readers of an earlier generation fail. */
  private generation = 0;
  private waiters: Array<() => void> = [];

  constructor(
    readonly digest: string,
    readonly path: string,
    private readonly cache: BlobCache,
  ) {}

  async openFile(): Promise<void> {
    this.file = await open(this.path, 'w+');
  }

  get bytesWritten(): number {
    return this.written;
  }

  get settled(): boolean {
    return this.state !== 'open';
  }

  /** The blob's size, once a source has said it; throws if the fetch fails first. */
  async sized(): Promise<number> {
    for (;;) {
      if (this.size !== undefined) return this.size;
      if (this.state === 'failed') throw this.failure ?? new Error('blob fetch failed');
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  /** Marks the fetch as coming from the upstream, and announces it. */
  readingFromUpstream(): void {
    if (this.fromUpstream) return;
    this.fromUpstream = true;
    this.cache.emit('fetching', this);
  }

  /** Records the blob's size; a source that disagrees with an earlier one is refused. */
  expectSize(size: number): void {
    if (this.size !== undefined && this.size !== size) {
      throw new ClusterError(
        'LCFS_EPEER',
        `source says blob ${this.digest} has ${size} bytes; another said ${this.size}`,
      );
    }
    this.size = size;
    this.wake();
  }

  async append(chunk: Uint8Array): Promise<void> {
    if (this.state !== 'open' || this.file === undefined) throw new Error('blob fetch is closed');
    if (this.size !== undefined && this.written + chunk.length > this.size) {
      throw new ClusterError(
        'LCFS_EPEER',
        `source sent more than the ${this.size} bytes of blob ${this.digest}`,
      );
    }
    await this.file.write(chunk, 0, chunk.length, this.written);
    this.hash.update(chunk);
    this.written += chunk.length;
    this.wake();
  }

  /** Checks the digest; on a match the blob is durable in the cache and tail readers finish. */
  async commit(): Promise<void> {
    if (this.file === undefined || this.state !== 'open') throw new Error('blob fetch is closed');
    const actual = `sha256:${this.hash.copy().digest('hex')}`;
    if (actual !== this.digest) throw mismatch(this.digest, actual, `blob ${this.digest}`);
    await this.file.datasync();
    await this.file.close();
    this.file = undefined;
    await this.cache.adopt(this, this.written);
    this.size = this.written;
    this.state = 'committed';
    this.wake();
  }

  /** Throws away what was written (bytes that did not match); tail readers so far fail. */
  async restart(): Promise<void> {
    if (this.file === undefined || this.state !== 'open') throw new Error('blob fetch is closed');
    await this.file.truncate(0);
    this.written = 0;
    this.size = undefined;
    this.hash = createHash('sha256');
    this.generation += 1;
    this.wake();
  }

  /** Gives up: the file goes, tail readers fail with `err`. */
  async fail(err: Error): Promise<void> {
    if (this.state !== 'open') return;
    this.state = 'failed';
    this.failure = err;
    this.cache.forget(this);
    this.wake();
    await this.file?.close();
    this.file = undefined;
    await rm(this.path, { force: true });
  }

  /** Streams the blob from `offset` as it arrives; ends when it is complete and verified. */
  tail(offset = 0): Readable {
    return Readable.from(this.follow(offset), { objectMode: false });
  }

  private async *follow(offset: number): AsyncGenerator<Buffer> {
    const generation = this.generation;
    let reader: FileHandle | undefined;
    try {
      let position = offset;
      for (;;) {
        if (this.state === 'failed') throw this.failure ?? new Error('blob fetch failed');
        if (this.generation !== generation) {
          throw new ClusterError('LCFS_EPEER', `fetch of ${this.digest} restarted from scratch`);
        }
        const limit = this.state === 'committed' ? this.written : Math.max(0, this.written - 1);
        if (position < limit) {
          reader ??= await this.openForRead();
          const buffer = Buffer.allocUnsafe(Math.min(1 << 20, limit - position));
          const { bytesRead } = await reader.read(buffer, 0, buffer.length, position);
          if (this.generation !== generation) continue; // restarted under the read: fail above
          if (bytesRead === 0) throw new Error(`blob ${this.digest} file is shorter than written`);
          position += bytesRead;
          yield buffer.subarray(0, bytesRead);
          continue;
        }
        if (this.state === 'committed') return;
        await new Promise<void>((resolve) => this.waiters.push(resolve));
      }
    } finally {
      await reader?.close();
    }
  }

  /** The file, wherever it is now: the commit may have moved it into the cache. */
  private async openForRead(): Promise<FileHandle> {
    try {
      return await open(this.path, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || this.state !== 'committed') {
        throw err;
      }
      return open(this.cache.pathOf(this.digest), 'r');
    }
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }
}
