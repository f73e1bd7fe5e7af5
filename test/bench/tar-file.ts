/**
 * Writes large uncompressed ustar files for the benchmarks, streaming, with seeded incompressible
 * content (AES-128-CTR keystream), so generation costs little next to what is measured.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { type FileHandle, open } from 'node:fs/promises';

const BLOCK = 512;
const ZERO = Buffer.alloc(1 << 20);

function octal(h: Buffer, off: number, len: number, value: number): void {
  const s = value.toString(8);
  if (s.length > len - 1) throw new Error(`tar field of ${len} bytes too small for ${value}`);
  h.write(s.padStart(len - 1, '0') + '\0', off, len, 'ascii');
}

function header(name: string, type: '0' | '5', size: number, mode: number, mtime: number): Buffer {
  const h = Buffer.alloc(BLOCK);
  let prefix = '';
  let base = name;
  if (Buffer.byteLength(name) > 100) {
    const cut = name.lastIndexOf('/', 155);
    if (cut <= 0 || Buffer.byteLength(name.slice(cut + 1)) > 100)
      throw new Error(`tar name too long: ${name}`);
    prefix = name.slice(0, cut);
    base = name.slice(cut + 1);
  }
  h.write(base, 0, 100, 'utf8');
  octal(h, 100, 8, mode);
  octal(h, 108, 8, 0);
  octal(h, 116, 8, 0);
  octal(h, 124, 12, size);
  octal(h, 136, 12, mtime);
  h.fill(' ', 148, 156);
  h.write(type, 156, 1, 'ascii');
  h.write('ustar\0', 257, 6, 'ascii');
  h.write('00', 263, 2, 'ascii');
  h.write('root', 265, 32, 'ascii');
  h.write('root', 297, 32, 'ascii');
  h.write(prefix, 345, 155, 'utf8');
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += h[i];
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'ascii');
  return h;
}

/** A streaming tar writer onto a file, with a 4 MiB write buffer. */
export class TarFileWriter {
  private buf = Buffer.alloc(4 << 20);
  private used = 0;
  bytes = 0;
  files = 0;
  contentBytes = 0;

  private constructor(private readonly fh: FileHandle) {}

  static async create(path: string): Promise<TarFileWriter> {
    return new TarFileWriter(await open(path, 'w'));
  }

  private async put(data: Buffer): Promise<void> {
    let off = 0;
    while (off < data.length) {
      const n = Math.min(data.length - off, this.buf.length - this.used);
      data.copy(this.buf, this.used, off, off + n);
      this.used += n;
      off += n;
      if (this.used === this.buf.length) await this.drain();
    }
    this.bytes += data.length;
  }

  private async drain(): Promise<void> {
    let off = 0;
    while (off < this.used)
      off += (await this.fh.write(this.buf, off, this.used - off)).bytesWritten;
    this.used = 0;
  }

  async dir(name: string, mode = 0o755, mtime = 1_700_000_000): Promise<void> {
    await this.put(header(name.endsWith('/') ? name : name + '/', '5', 0, mode, mtime));
  }

  /** A regular file of `size` bytes of content derived from `key`. */
  async file(
    name: string,
    size: number,
    key: string,
    mode = 0o644,
    mtime = 1_700_000_000,
  ): Promise<void> {
    await this.put(header(name, '0', size, mode, mtime));
    const k = createHash('sha256').update(key).digest();
    const cipher = createCipheriv('aes-128-ctr', k.subarray(0, 16), k.subarray(16, 32));
    for (let left = size; left > 0;) {
      const n = Math.min(left, ZERO.length);
      await this.put(cipher.update(n === ZERO.length ? ZERO : ZERO.subarray(0, n)));
      left -= n;
    }
    const pad = (BLOCK - (size % BLOCK)) % BLOCK;
    if (pad > 0) await this.put(ZERO.subarray(0, pad));
    this.files++;
    this.contentBytes += size;
  }

  async close(): Promise<void> {
    await this.put(ZERO.subarray(0, 2 * BLOCK));
    await this.drain();
    await this.fh.close();
  }
}
