import type { AccessCounters } from './types.js';

/** Files tracked at most; past this the least recently touched are forgotten. */
const MAX_FILES = 100_000;

function blank(): AccessCounters {
  return { reads: 0, bytesRead: 0, writes: 0, bytesWritten: 0, lastAccess: 0 };
}

/**
 * In-memory access counters per layer and per file, for the statistics work: a few additions
 * on the hot path and nothing persisted, so they cost FUSE next to nothing.
 */
export class AccessLog {
  private readonly layers = new Map<number, AccessCounters>();
  private readonly files = new Map<string, AccessCounters>();

  read(layer: number, ino: number, bytes: number): void {
    this.bump(layer, ino, (c) => {
      c.reads++;
      c.bytesRead += bytes;
    });
  }

  write(layer: number, ino: number, bytes: number): void {
    this.bump(layer, ino, (c) => {
      c.writes++;
      c.bytesWritten += bytes;
    });
  }

  layer(layer: number): AccessCounters {
    return { ...(this.layers.get(layer) ?? blank()) };
  }

  file(layer: number, ino: number): AccessCounters | undefined {
    const c = this.files.get(`${layer}/${ino}`);
    return c && { ...c };
  }

  private bump(layer: number, ino: number, apply: (c: AccessCounters) => void): void {
    const t = Date.now();
    let l = this.layers.get(layer);
    if (!l) this.layers.set(layer, (l = blank()));
    apply(l);
    l.lastAccess = t;
    const key = `${layer}/${ino}`;
    let f = this.files.get(key);
    if (f)
      this.files.delete(key); // re-inserted below: Map order is recency order
    else f = blank();
    apply(f);
    f.lastAccess = t;
    this.files.set(key, f);
    if (this.files.size > MAX_FILES) this.files.delete(this.files.keys().next().value as string);
  }
}
