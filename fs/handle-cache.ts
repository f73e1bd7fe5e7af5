import type { FileHandle } from 'node:fs/promises';

interface Entry {
  readonly opening: Promise<FileHandle>;
  fh?: FileHandle;
  users: number;
  /** Dropped while in use: close once the last user is done. */
  doomed: boolean;
}

/**
 * Open chunk files, least recently used first out. An entry is counted as in use from the moment
 * it is asked for, before its open completes, so eviction only ever closes idle, open handles.
 */
export class HandleCache {
  private readonly entries = new Map<string, Entry>();

  constructor(private readonly max: number) {}

  async use<T>(
    key: string,
    open: () => Promise<FileHandle>,
    fn: (fh: FileHandle) => Promise<T>,
  ): Promise<T> {
    let entry = this.entries.get(key);
    if (entry) {
      // Map order is the eviction order: move to the back.
      this.entries.delete(key);
      this.entries.set(key, entry);
    } else {
      entry = { opening: open(), users: 0, doomed: false };
      this.entries.set(key, entry);
    }
    entry.users++;
    try {
      let fh: FileHandle;
      try {
        fh = await entry.opening;
      } catch (err) {
        if (this.entries.get(key) === entry) this.entries.delete(key);
        throw err;
      }
      entry.fh = fh;
      return await fn(fh);
    } finally {
      entry.users--;
      if (entry.users === 0 && entry.doomed && entry.fh)
        void entry.fh.close().catch(() => undefined);
      this.trim();
    }
  }

  /** Adds a handle opened elsewhere (a file just created). */
  add(key: string, fh: FileHandle): void {
    this.entries.set(key, { opening: Promise.resolve(fh), fh, users: 0, doomed: false });
    this.trim();
  }

  /** Forgets a file that is going away, closing its handle once nobody uses it. */
  async drop(key: string): Promise<void> {
    const entry = this.entries.get(key);
    if (!entry) return;
    this.entries.delete(key);
    if (entry.users > 0) {
      entry.doomed = true;
      return;
    }
    const fh = await entry.opening.catch(() => undefined);
    await fh?.close().catch(() => undefined);
  }

  async closeAll(): Promise<void> {
    const all = [...this.entries.values()];
    this.entries.clear();
    await Promise.all(
      all.map(async (e) =>
        (await e.opening.catch(() => undefined))?.close().catch(() => undefined),
      ),
    );
  }

  private trim(): void {
    if (this.entries.size <= this.max) return;
    for (const [key, entry] of this.entries) {
      if (this.entries.size <= this.max) break;
      if (entry.users > 0 || !entry.fh) continue;
      this.entries.delete(key);
      void entry.fh.close().catch(() => undefined);
    }
  }
}
