/** A seeded PRNG for reproducible randomized tests: print the seed, rerun with it. */
import { createCipheriv, createHash } from 'node:crypto';

export class SeededRandom {
  readonly seed: number | string;
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number | string) {
    this.seed = seed;
    const h = createHash('sha256').update(`lcfs-test:${seed}`).digest();
    this.a = h.readUInt32LE(0);
    this.b = h.readUInt32LE(4);
    this.c = h.readUInt32LE(8);
    this.d = h.readUInt32LE(12);
    for (let i = 0; i < 12; i++) this.next();
  }

  /** sfc32; uniform in [0, 1). */
  next(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return (t >>> 0) / 4294967296;
  }

  /** An integer in [lo, hi], both inclusive. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('pick from an empty list');
    return items[Math.floor(this.next() * items.length)];
  }

  /** Picks by weight: `[[w1, v1], [w2, v2], …]`. */
  weighted<T>(choices: ReadonlyArray<readonly [number, T]>): T {
    const total = choices.reduce((s, [w]) => s + w, 0);
    let r = this.next() * total;
    for (const [w, v] of choices) {
      r -= w;
      if (r < 0) return v;
    }
    return choices[choices.length - 1][1];
  }

  shuffle<T>(items: readonly T[]): T[] {
    const out = items.slice();
    for (let i = out.length - 1; i > 0; i--) {
      const j = Math.floor(this.next() * (i + 1));
      [out[i], out[j]] = [out[j], out[i]];
    }
    return out;
  }

  /** `size` incompressible bytes drawn from this generator (fast for MiBs: an AES-CTR keystream). */
  bytes(size: number): Buffer {
    const key = Buffer.alloc(16);
    const iv = Buffer.alloc(16);
    for (let i = 0; i < 16; i += 4) {
      key.writeUInt32LE(this.int(0, 0xffffffff), i);
      iv.writeUInt32LE(this.int(0, 0xffffffff), i);
    }
    return createCipheriv('aes-128-ctr', key, iv).update(Buffer.alloc(size));
  }
}

/**
 * `size` incompressible bytes that depend only on `label` (the same label gives the same bytes),
 * starting `offset` bytes into that label's endless stream (an AES-128-CTR keystream), so a
 * part of a file can be made without the rest.
 */
export function labelledBytes(label: string, size: number, offset = 0): Buffer {
  const key = createHash('sha256').update(label).digest().subarray(0, 16);
  const iv = Buffer.alloc(16);
  const block = Math.floor(offset / 16);
  iv.writeUInt32BE(Math.floor(block / 2 ** 32) >>> 0, 8);
  iv.writeUInt32BE(block >>> 0, 12);
  const skip = offset - block * 16;
  const out = createCipheriv('aes-128-ctr', key, iv).update(Buffer.alloc(size + skip));
  return skip === 0 ? out : out.subarray(skip);
}

export function sha256Hex(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}
