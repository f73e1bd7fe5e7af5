/**
 * Layer tars for tests: hand-built ones (tar-stream's pack(), plus raw PAX records for binary
 * xattr values, which tar-stream can only encode as UTF-8), big ones generated as a stream, and a
 * parser for what `diff` produces.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import * as tar from 'tar-stream';

export type TarEntryType =
  'file' | 'link' | 'symlink' | 'directory' | 'block-device' | 'character-device' | 'fifo';

export interface TarEntrySpec {
  name: string;
  type?: TarEntryType;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: Date;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  /** Regular files only. */
  content?: Buffer | string;
  /** PAX records with text values, e.g. `{ 'SCHILY.xattr.user.a': 'v', mtime: '1600000000.5' }`. */
  pax?: Record<string, string>;
  /** PAX records with binary values (written raw, as Go's archive/tar does). */
  binaryPax?: Record<string, Buffer>;
}

function entryContent(e: TarEntrySpec): Buffer {
  if (e.content === undefined) return Buffer.alloc(0);
  return typeof e.content === 'string' ? Buffer.from(e.content) : e.content;
}

/** What `applyDiff` must resolve to for these entries: the sum of the entries' header sizes. */
export function headerSizeSum(entries: readonly TarEntrySpec[]): number {
  return entries.reduce(
    (s, e) => s + ((e.type ?? 'file') === 'file' ? entryContent(e).length : 0),
    0,
  );
}

/** One PAX extended-header record: "<len> <key>=<value>\n", `len` counting itself. */
export function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

function octal(value: number, width: number): string {
  return value.toString(8).padStart(width - 1, '0') + '\0';
}

export interface RawHeader {
  name: string;
  /** '0' file, '1' link, '2' symlink, '3' char, '4' block, '5' dir, '6' fifo, 'x' PAX. */
  typeflag: string;
  size?: number;
  mode?: number;
  uid?: number;
  gid?: number;
  mtimeSec?: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
}

/** A 512-byte ustar header block. Names up to 100 bytes only. */
export function encodeUstarHeader(h: RawHeader): Buffer {
  const buf = Buffer.alloc(512);
  if (Buffer.byteLength(h.name) > 100)
    throw new Error(`encodeUstarHeader: name too long: ${h.name}`);
  buf.write(h.name, 0);
  buf.write(octal(h.mode ?? 0o644, 8), 100, 'ascii');
  buf.write(octal(h.uid ?? 0, 8), 108, 'ascii');
  buf.write(octal(h.gid ?? 0, 8), 116, 'ascii');
  buf.write(octal(h.size ?? 0, 12), 124, 'ascii');
  buf.write(octal(h.mtimeSec ?? 0, 12), 136, 'ascii');
  buf.write('        ', 148, 'ascii');
  buf.write(h.typeflag, 156, 'ascii');
  if (h.linkname) buf.write(h.linkname, 157);
  buf.write('ustar\x0000', 257, 'latin1');
  buf.write(octal(h.devmajor ?? 0, 8), 329, 'ascii');
  buf.write(octal(h.devminor ?? 0, 8), 337, 'ascii');
  let sum = 0;
  for (const b of buf) sum += b;
  buf.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'ascii');
  return buf;
}

export function tarPadding(size: number): Buffer {
  return Buffer.alloc((512 - (size % 512)) % 512);
}

/** A PAX extended header ('x') with its records, padded: it applies to the entry after it. */
export function paxHeaderBlock(records: Record<string, Buffer>): Buffer {
  const body = Buffer.concat(Object.entries(records).map(([k, v]) => paxRecord(k, v)));
  return Buffer.concat([
    encodeUstarHeader({ name: 'PaxHeader', typeflag: 'x', size: body.length }),
    body,
    tarPadding(body.length),
  ]);
}

/** The two zero blocks ending an archive. */
export const END_OF_ARCHIVE = Buffer.alloc(1024);

/** Builds a tar in memory with tar-stream's pack(). */
export async function buildTar(
  entries: readonly TarEntrySpec[],
  options: { endOfArchive?: boolean } = {},
): Promise<Buffer> {
  const pack = tar.pack();
  const collected = buffer(pack);
  for (const e of entries) {
    const type = e.type ?? 'file';
    const header: tar.Header = {
      name: e.name,
      type,
      mode: e.mode ?? (type === 'directory' ? 0o755 : 0o644),
      uid: e.uid ?? 0,
      gid: e.gid ?? 0,
      mtime: e.mtime ?? new Date(1_600_000_000_000),
      linkname: e.linkname ?? '',
      uname: '',
      gname: '',
      devmajor: e.devmajor ?? 0,
      devminor: e.devminor ?? 0,
      size: 0,
    };
    if (e.binaryPax) {
      // Written between entries (pack has no open entry: each is awaited), so it precedes this one.
      const records: Record<string, Buffer> = { ...e.binaryPax };
      for (const [k, v] of Object.entries(e.pax ?? {})) records[k] = Buffer.from(v);
      pack.push(paxHeaderBlock(records));
    } else if (e.pax) {
      header.pax = e.pax;
    }
    await new Promise<void>((resolve, reject) => {
      const done = (err?: Error | null) => (err ? reject(err) : resolve());
      if (type === 'file') pack.entry(header, entryContent(e), done);
      else pack.entry(header, done);
    });
  }
  pack.finalize();
  const out = await collected;
  return options.endOfArchive === false ? out.subarray(0, out.length - END_OF_ARCHIVE.length) : out;
}

/** A Node Readable over `buf`, delivered in pieces as a network body would be. */
export function tarReadable(buf: Buffer, pieceSize = 64 * 1024): Readable {
  function* pieces() {
    for (let off = 0; off < buf.length; off += pieceSize)
      yield buf.subarray(off, Math.min(off + pieceSize, buf.length));
  }
  return Readable.from(pieces(), { objectMode: false });
}

export interface ParsedTarEntry {
  name: string;
  type: string;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  mtime: Date;
  linkname: string | null;
  devmajor: number;
  devminor: number;
  pax: Record<string, string> | null;
  sha256: string;
}

/** Parses a whole tar stream (e.g. `diff` output) with tar-stream's extract(). */
export async function parseTar(stream: Readable): Promise<ParsedTarEntry[]> {
  const extract = tar.extract();
  const out: ParsedTarEntry[] = [];
  const done = new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, body, next) => {
      const h = createHash('sha256');
      body.on('data', (d: unknown) => h.update(d as Buffer));
      body.on('end', () => {
        out.push({
          name: header.name,
          type: header.type,
          size: header.size,
          mode: header.mode,
          uid: header.uid,
          gid: header.gid,
          mtime: header.mtime,
          linkname: header.linkname ?? null,
          devmajor: header.devmajor,
          devminor: header.devminor,
          pax: (header.pax as Record<string, string> | null) ?? null,
          sha256: h.digest('hex'),
        });
        next();
      });
      body.on('error', reject);
    });
    extract.on('finish', () => resolve());
    extract.on('error', reject);
  });
  stream.on('error', (err) => extract.destroy(err));
  stream.pipe(extract);
  await done;
  return out;
}

export interface GeneratedTar {
  /** The tar, generated lazily as it is read; never held in memory whole. */
  readonly stream: Readable;
  /** The sum of header sizes `applyDiff` must return. */
  readonly totalSize: number;
  /** Entry paths, in order. */
  readonly names: readonly string[];
  /** The content of one CHUNK-sized piece of one file, as generated. */
  chunk(file: number, index: number): Buffer;
}

/**
 * A tar of `files` regular files of `fileSize` bytes each (a multiple of `chunkSize`) under
 * `big/`, generated chunk by chunk. Every chunk differs from every other, so nothing dedups.
 */
export function generateTar(files: number, fileSize: number, chunkSize = 1 << 20): GeneratedTar {
  if (fileSize % chunkSize !== 0) throw new Error('fileSize must be a multiple of chunkSize');
  const base = createHash('sha256').update('lcfs generated tar').digest();
  const pattern = Buffer.alloc(chunkSize);
  for (let off = 0; off < chunkSize; off += base.length)
    base.copy(pattern, off, 0, Math.min(base.length, chunkSize - off));
  const chunk = (file: number, index: number): Buffer => {
    const c = Buffer.from(pattern);
    for (let off = 0; off + 12 <= chunkSize; off += 4096) {
      c.writeUInt32LE(file, off);
      c.writeUInt32LE(index, off + 4);
      c.writeUInt32LE(off, off + 8);
    }
    return c;
  };
  const names = Array.from({ length: files }, (_, i) => `big/file-${i}`);
  function* generate() {
    yield encodeUstarHeader({ name: 'big', typeflag: '5', mode: 0o755, mtimeSec: 1_600_000_000 });
    for (let f = 0; f < files; f++) {
      yield encodeUstarHeader({
        name: names[f],
        typeflag: '0',
        mode: 0o644,
        size: fileSize,
        mtimeSec: 1_600_000_000,
      });
      for (let i = 0; i < fileSize / chunkSize; i++) yield chunk(f, i);
      if (fileSize % 512 !== 0) yield tarPadding(fileSize);
    }
    yield END_OF_ARCHIVE;
  }
  return {
    stream: Readable.from(generate(), { objectMode: false, highWaterMark: 64 * 1024 }),
    totalSize: files * fileSize,
    names,
    chunk,
  };
}
