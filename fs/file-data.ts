import { CHUNK_SIZE } from './layer-store.js';
import { isSealed, type ChunkStore } from './chunks.js';
import { nodeError } from './errors.js';
import { ownsContent, type QuotaLedger } from './quota.js';
import { contentKey, isDir, isReg, now, type ContentRecord } from './records.js';
import type { LayerTree } from './tree.js';

/**
 * File content over chunks: reads gather chunks from whichever layer holds them; writes make the
 * layer its own copy of the chunk list, then copy up only the chunks they touch (at most
 * CHUNK_SIZE bytes each). The layer's own content record in the metadata is the truth at every
 * step, so an unlink racing a write releases exactly what the write has taken so far.
 */
export class FileData {
  private readonly locks = new Map<string, Promise<void>>();

  constructor(
    private readonly chunks: ChunkStore,
    private readonly quotas: QuotaLedger,
    /** Told when sealing rewrote a content record, which caches must not keep. */
    private readonly contentChanged: () => void,
  ) {}

  async read(tree: LayerTree, ino: number, offset: number, length: number): Promise<Buffer> {
    // A read sees every write that started before it.
    const writing = this.locks.get(`${tree.index}/${ino}`);
    if (writing) await writing;
    const rec = tree.inode(ino);
    if (isDir(rec.mode)) throw nodeError('EISDIR', `read of directory inode ${ino}`);
    const end = Math.min(rec.size, offset + length);
    if (offset >= end) return Buffer.alloc(0);
    const out = Buffer.allocUnsafe(end - offset);
    const { chunks } = tree.findContent(ino);
    const reads: Array<Promise<void>> = [];
    for (let pos = offset; pos < end;) {
      const idx = Math.floor(pos / CHUNK_SIZE);
      const inChunk = pos - idx * CHUNK_SIZE;
      const n = Math.min(CHUNK_SIZE - inChunk, end - pos);
      const slice = out.subarray(pos - offset, pos - offset + n);
      const ref = chunks[idx] ?? '';
      if (ref === '') slice.fill(0);
      else reads.push(this.chunks.read(ref, inChunk, slice));
      // A read at the start of a chunk looks sequential: start on the next one now.
      if (inChunk === 0) this.chunks.prefetch(chunks[idx + 1] ?? '');
      pos += n;
    }
    await Promise.all(reads);
    return out;
  }

  write(tree: LayerTree, ino: number, offset: number, data: Buffer): Promise<number> {
    return this.locked(tree, ino, async () => {
      tree.assertWritable();
      const rec = tree.inode(ino);
      if (!isReg(rec.mode))
        throw nodeError(isDir(rec.mode) ? 'EISDIR' : 'EINVAL', `write to inode ${ino}`);
      const end = offset + data.length;
      const grown = Math.max(rec.size, end);
      this.quotas.charge(tree, ownsContent(tree, ino) ? grown - rec.size : grown);
      this.ownContent(tree, ino);
      for (let pos = offset; pos < end;) {
        const idx = Math.floor(pos / CHUNK_SIZE);
        const inChunk = pos - idx * CHUNK_SIZE;
        const n = Math.min(CHUNK_SIZE - inChunk, end - pos);
        const whole = inChunk === 0 && n === CHUNK_SIZE;
        const patch = { offset: inChunk, data: data.subarray(pos - offset, pos - offset + n) };
        const chunk = await this.writableChunk(tree, ino, idx, whole ? 0 : CHUNK_SIZE, patch);
        if (chunk === undefined) return data.length; // the node was removed meanwhile
        if (!chunk.patched) await this.chunks.write(chunk.ref, inChunk, patch.data);
        pos += n;
      }
      const cur = tree.live(ino);
      if (!cur) return data.length;
      const t = now();
      tree.putInode(ino, { ...cur, size: Math.max(cur.size, end), mtime: t, ctime: t });
      return data.length;
    });
  }

  /** Changes the size: chunks past the end are released, a cut chunk is trimmed. */
  truncate(tree: LayerTree, ino: number, size: number): Promise<void> {
    return this.locked(tree, ino, async () => {
      tree.assertWritable();
      const rec = tree.inode(ino);
      if (!isReg(rec.mode))
        throw nodeError(isDir(rec.mode) ? 'EISDIR' : 'EINVAL', `truncate inode ${ino}`);
      const owned = ownsContent(tree, ino);
      if (owned) this.quotas.charge(tree, size - rec.size);
      else if (size < rec.size) this.quotas.charge(tree, size);
      if (size < rec.size) {
        const list = [...this.ownContent(tree, ino)];
        const keep = Math.ceil(size / CHUNK_SIZE);
        for (const ref of list.splice(keep)) if (ref !== '') tree.view.addRef(ref, -1);
        tree.view.put(contentKey(tree.index, ino), list);
        const tail = size % CHUNK_SIZE;
        if (tail !== 0 && (list[keep - 1] ?? '') !== '') {
          const chunk = await this.writableChunk(tree, ino, keep - 1, tail);
          if (chunk && !chunk.copied) await this.chunks.truncate(chunk.ref, tail);
        }
      }
      const cur = tree.live(ino);
      if (!cur) return;
      const t = now();
      tree.putInode(ino, { ...cur, size, mtime: t, ctime: t });
    });
  }

  /** Makes the layer hold its own chunk list for `ino`, taking a reference on each chunk. */
  private ownContent(tree: LayerTree, ino: number): ContentRecord {
    const { chunks, owner } = tree.findContent(ino);
    if (owner === tree.index) return chunks;
    for (const ref of chunks) if (ref !== '') tree.view.addRef(ref, 1);
    tree.view.put(contentKey(tree.index, ino), chunks);
    return chunks;
  }

  /**
   * A chunk of `ino` this layer may write in place: a mutable chunk only its own list holds, or
   * a fresh copy of the first `keep` bytes of the current one with `patch` already written.
   * Undefined if the node is gone.
   */
  private async writableChunk(
    tree: LayerTree,
    ino: number,
    idx: number,
    keep: number,
    patch?: { offset: number; data: Uint8Array },
  ): Promise<{ ref: string; copied: boolean; patched: boolean } | undefined> {
    const key = contentKey(tree.index, ino);
    const before = tree.view.get<ContentRecord>(key);
    if (!before) return undefined;
    const ref = before[idx] ?? '';
    if (ref !== '' && !isSealed(ref) && this.chunks.count(ref) === 1)
      return { ref, copied: false, patched: false };
    const valid = Math.max(0, Math.min(CHUNK_SIZE, tree.inode(ino).size - idx * CHUNK_SIZE));
    const fresh = await this.chunks.copyToMutable(ref, Math.min(keep, valid), patch);
    const list = tree.view.get<ContentRecord>(key);
    if (!list) {
      tree.view.addRef(fresh, -1);
      return undefined;
    }
    const next = [...list];
    while (next.length <= idx) next.push('');
    const old = next[idx];
    next[idx] = fresh;
    if (old !== '') tree.view.addRef(old, -1);
    tree.view.put(key, next);
    return { ref: fresh, copied: true, patched: patch !== undefined };
  }

  /**
   * Chunk `idx` of `ino` (its first `length` bytes), for a diff: a mutable chunk is sealed on
   * the way, so that the diff, applied again, finds every chunk already stored (the way commit
   * copies no data). The bytes hashed to seal the chunk are the bytes returned, so a diff reads
   * each chunk once, and streams chunk by chunk instead of sealing the whole file first.
   */
  readForDiff(tree: LayerTree, ino: number, idx: number, length: number): Promise<Buffer> {
    const { owner } = tree.findContent(ino);
    if (owner < 0) return Promise.resolve(Buffer.alloc(length));
    return this.lockedOn(owner, ino, async () => {
      const key = contentKey(owner, ino);
      const ref = tree.view.get<ContentRecord>(key)?.[idx] ?? '';
      const out = Buffer.alloc(length);
      if (ref === '') return out;
      if (isSealed(ref)) {
        await this.chunks.read(ref, 0, out);
        return out;
      }
      const { hash, data } = await this.chunks.seal(ref);
      try {
        const now = tree.view.get<ContentRecord>(key);
        if (now?.[idx] === ref) {
          const next = [...now];
          next[idx] = hash;
          tree.view.addRef(hash, 1);
          tree.view.put(key, next);
          tree.view.addRef(ref, -1);
          this.contentChanged();
        }
      } finally {
        this.chunks.unpin(hash);
      }
      data.copy(out, 0, 0, Math.min(length, data.length));
      return out;
    });
  }

  /** Resolves once no write or truncate on the file is in flight. */
  async settled(index: number, ino: number): Promise<void> {
    await this.locks.get(`${index}/${ino}`);
  }

  /** Resolves once no write or truncate on layer `index` is in flight. */
  async idle(index: number): Promise<void> {
    const prefix = `${index}/`;
    await Promise.all(
      [...this.locks].filter(([key]) => key.startsWith(prefix)).map(([, tail]) => tail),
    );
  }

  private locked<T>(tree: LayerTree, ino: number, fn: () => Promise<T>): Promise<T> {
    return this.lockedOn(tree.index, ino, fn);
  }

  private async lockedOn<T>(index: number, ino: number, fn: () => Promise<T>): Promise<T> {
    const key = `${index}/${ino}`;
    const prev = this.locks.get(key) ?? Promise.resolve();
    const run = prev.then(fn);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.locks.set(key, tail);
    void tail.then(() => {
      if (this.locks.get(key) === tail) this.locks.delete(key);
    });
    return run;
  }
}
