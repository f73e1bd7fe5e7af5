import type { Readable } from 'node:stream';
import { StoreError } from './errors.js';
import type { Timespec } from './types.js';

/**
 * A streaming tar codec for layer diffs: ustar headers, GNU long names, and PAX records read and
 * written as raw bytes, so binary xattrs such as `security.capability` survive (general-purpose
 * tar libraries decode PAX values as UTF-8 and mangle them). Memory stays bounded: the reader
 * holds one header and hands file bodies on as they arrive.
 */

export type TarType = 'file' | 'link' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';

export interface TarHeader {
  path: string;
  type: TarType;
  /** Permission bits, setuid/setgid/sticky included; no file-type bits. */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: Timespec;
  linkname: string;
  devmajor: number;
  devminor: number;
  xattrs: Record<string, Buffer>;
}

export interface TarEntry {
  header: TarHeader;
  /** The entry's bytes; must be consumed (or left) before the next entry is read. */
  body: AsyncIterable<Buffer>;
}

const BLOCK = 512;
const MAX_META = 1 << 20; // PAX and GNU long-name records larger than this are refused
const XATTR_PREFIX = 'SCHILY.xattr.';

const TYPES: Record<string, TarType> = {
  '0': 'file',
  '\0': 'file',
  '7': 'file',
  '1': 'link',
  '2': 'symlink',
  '3': 'char',
  '4': 'block',
  '5': 'dir',
  '6': 'fifo',
};
const FLAGS: Record<TarType, string> = {
  file: '0',
  link: '1',
  symlink: '2',
  char: '3',
  block: '4',
  dir: '5',
  fifo: '6',
};

function invalid(message: string): StoreError {
  return new StoreError('LCFS_ETAR_INVALID', 'EINVAL', `invalid tar: ${message}`);
}

/** Pulls exact byte counts out of a stream of buffers. */
class ByteReader {
  private readonly source: AsyncIterator<Buffer | string, unknown>;
  private buf: Buffer = Buffer.alloc(0);
  private ended = false;

  constructor(stream: Readable) {
    this.source = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer | string, unknown>;
  }

  private async fill(): Promise<boolean> {
    if (this.ended) return false;
    const next = await this.source.next();
    if (next.done) {
      this.ended = true;
      return false;
    }
    const chunk = typeof next.value === 'string' ? Buffer.from(next.value) : next.value;
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    return true;
  }

  /** Exactly n bytes, or fewer at the end of the stream. */
  async take(n: number): Promise<Buffer> {
    while (this.buf.length < n && (await this.fill()));
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(out.length);
    return out;
  }

  /** Up to n bytes, at least one unless the stream ended. */
  async some(n: number): Promise<Buffer> {
    if (this.buf.length === 0) await this.fill();
    const out = this.buf.subarray(0, Math.min(n, this.buf.length));
    this.buf = this.buf.subarray(out.length);
    return out;
  }

  async skip(n: number): Promise<void> {
    while (n > 0) {
      const part = await this.some(Math.min(n, 1 << 20));
      if (part.length === 0) throw invalid('unexpected end of archive');
      n -= part.length;
    }
  }
}

function parseNumber(field: Buffer, name: string): number {
  if (field[0] & 0x80) {
    // GNU base-256 for values too large for octal.
    let v = 0;
    for (let i = 1; i < field.length; i++) v = v * 256 + field[i];
    if (field[0] !== 0x80 || !Number.isSafeInteger(v)) throw invalid(`${name} out of range`);
    return v;
  }
  const text = field.toString('latin1').replace(/\0.*$/s, '').trim();
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) throw invalid(`${name} is not an octal number ("${text}")`);
  return parseInt(text, 8);
}

function cString(field: Buffer): string {
  const end = field.indexOf(0);
  return field.subarray(0, end < 0 ? field.length : end).toString('utf8');
}

function checksumOk(block: Buffer): boolean {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : block[i];
  return sum === parseNumber(block.subarray(148, 156), 'checksum');
}

function parsePax(buf: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let at = 0;
  while (at < buf.length) {
    const space = buf.indexOf(0x20, at);
    if (space < 0) break;
    const len = parseInt(buf.subarray(at, space).toString('latin1'), 10);
    if (!Number.isSafeInteger(len) || len <= space - at || at + len > buf.length)
      throw invalid('bad PAX record');
    const record = buf.subarray(space + 1, at + len - 1);
    const eq = record.indexOf(0x3d);
    if (eq < 0) throw invalid('bad PAX record');
    out.set(record.subarray(0, eq).toString('utf8'), Buffer.from(record.subarray(eq + 1)));
    at += len;
  }
  return out;
}

function parseTime(text: string): Timespec {
  const m = /^(-?\d+)(?:\.(\d{1,9})\d*)?$/.exec(text);
  if (!m) throw invalid(`bad PAX time "${text}"`);
  return [Number(m[1]), m[2] ? Number(m[2].padEnd(9, '0')) : 0];
}

/** The entries of a tar stream, one at a time. */
export async function* readTar(stream: Readable): AsyncGenerator<TarEntry> {
  const input = new ByteReader(stream);
  let pax = new Map<string, Buffer>();
  let longName: string | undefined;
  let longLink: string | undefined;
  for (;;) {
    const block = await input.take(BLOCK);
    if (block.length === 0) return; // no end-of-archive marker; tolerated as GNU tar does
    if (block.length < BLOCK) throw invalid('unexpected end of archive');
    if (block.every((b) => b === 0)) return;
    if (!checksumOk(block)) throw invalid('header checksum mismatch');
    const flag = String.fromCharCode(block[156]);
    const size = parseNumber(block.subarray(124, 136), 'size');
    const padded = Math.ceil(size / BLOCK) * BLOCK;

    if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'K') {
      if (size > MAX_META) throw invalid(`metadata record of ${size} bytes`);
      const data = await input.take(padded);
      if (data.length < padded) throw invalid('unexpected end of archive');
      const body = data.subarray(0, size);
      if (flag === 'x') pax = parsePax(body);
      else if (flag === 'L') longName = cString(body);
      else if (flag === 'K') longLink = cString(body);
      continue; // global PAX headers carry nothing a layer needs
    }
    const type = TYPES[flag];
    if (!type)
      throw invalid(`entry ${cString(block.subarray(0, 100))} has unsupported type '${flag}'`);

    const ustar = block.subarray(257, 263).toString('latin1') === 'ustar\0';
    const prefix = ustar ? cString(block.subarray(345, 500)) : '';
    const baseName = cString(block.subarray(0, 100));
    const text = (key: string): string | undefined => pax.get(key)?.toString('utf8');
    const num = (key: string, fallback: number): number => {
      const v = text(key);
      if (v === undefined) return fallback;
      if (!/^\d+$/.test(v)) throw invalid(`bad PAX ${key} "${v}"`);
      return Number(v);
    };
    const xattrs: Record<string, Buffer> = {};
    for (const [key, value] of pax) {
      if (key.startsWith(XATTR_PREFIX)) xattrs[key.slice(XATTR_PREFIX.length)] = value;
    }
    const mtimeText = text('mtime');
    const header: TarHeader = {
      path: text('path') ?? longName ?? (prefix ? `${prefix}/${baseName}` : baseName),
      type,
      mode: parseNumber(block.subarray(100, 108), 'mode') & 0o7777,
      uid: num('uid', parseNumber(block.subarray(108, 116), 'uid')),
      gid: num('gid', parseNumber(block.subarray(116, 124), 'gid')),
      size: type === 'file' ? num('size', size) : 0,
      mtime: mtimeText ? parseTime(mtimeText) : [parseNumber(block.subarray(136, 148), 'mtime'), 0],
      linkname: text('linkpath') ?? longLink ?? cString(block.subarray(157, 257)),
      devmajor: parseNumber(block.subarray(329, 337), 'devmajor'),
      devminor: parseNumber(block.subarray(337, 345), 'devminor'),
      xattrs,
    };
    pax = new Map();
    longName = longLink = undefined;

    const bodySize = type === 'file' ? header.size : size;
    let remaining = bodySize;
    async function* body(): AsyncGenerator<Buffer> {
      while (remaining > 0) {
        const part = await input.some(Math.min(remaining, 1 << 20));
        if (part.length === 0) throw invalid(`unexpected end of archive in ${header.path}`);
        remaining -= part.length;
        yield part;
      }
    }
    yield { header, body: body() };
    await input.skip(remaining + (Math.ceil(bodySize / BLOCK) * BLOCK - bodySize));
  }
}

// --- writing ---

function octal(block: Buffer, offset: number, width: number, value: number): boolean {
  const text = value.toString(8);
  if (text.length > width - 1) return false;
  block.write(text.padStart(width - 1, '0') + '\0', offset, width, 'latin1');
  return true;
}

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

function headerBlock(name: string, flag: string, h: Partial<TarHeader> & { size: number }): Buffer {
  const block = Buffer.alloc(BLOCK);
  block.write(name, 0, 100, 'utf8');
  octal(block, 100, 8, h.mode ?? 0o644);
  octal(block, 108, 8, h.uid ?? 0);
  octal(block, 116, 8, h.gid ?? 0);
  octal(block, 124, 12, h.size);
  octal(block, 136, 12, Math.max(0, h.mtime?.[0] ?? 0));
  block.write(flag, 156, 1, 'latin1');
  block.write(h.linkname ?? '', 157, 100, 'utf8');
  block.write('ustar\x0000', 257, 8, 'latin1');
  octal(block, 329, 8, h.devmajor ?? 0);
  octal(block, 337, 8, h.devminor ?? 0);
  block.fill(32, 148, 156);
  let sum = 0;
  for (const b of block) sum += b;
  block.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
  return block;
}

/** The header blocks of one entry: a PAX record first when ustar cannot hold it all. */
export function encodeHeader(h: TarHeader): Buffer {
  const name = h.type === 'dir' && !h.path.endsWith('/') ? `${h.path}/` : h.path;
  const records: Buffer[] = [];
  const fits = (s: string): boolean => Buffer.byteLength(s) < 100 && /^[\x20-\x7e]*$/.test(s);
  if (!fits(name)) records.push(paxRecord('path', Buffer.from(name)));
  if (!fits(h.linkname)) records.push(paxRecord('linkpath', Buffer.from(h.linkname)));
  for (const [key, big] of [
    ['uid', h.uid],
    ['gid', h.gid],
  ] as const) {
    if (big > 0o7777777) records.push(paxRecord(key, Buffer.from(String(big))));
  }
  if (h.size > 0o77777777777) records.push(paxRecord('size', Buffer.from(String(h.size))));
  if (h.mtime[1] !== 0 || h.mtime[0] < 0) {
    records.push(
      paxRecord('mtime', Buffer.from(`${h.mtime[0]}.${String(h.mtime[1]).padStart(9, '0')}`)),
    );
  }
  for (const key of Object.keys(h.xattrs).sort())
    records.push(paxRecord(XATTR_PREFIX + key, h.xattrs[key]));
  const main = headerBlock(fits(name) ? name : name.slice(0, 99), FLAGS[h.type], {
    ...h,
    linkname: fits(h.linkname) ? h.linkname : '',
    uid: Math.min(h.uid, 0o7777777),
    gid: Math.min(h.gid, 0o7777777),
    size: Math.min(h.size, 0o77777777777),
  });
  if (records.length === 0) return main;
  const pax = Buffer.concat(records);
  return Buffer.concat([
    headerBlock('PaxHeader', 'x', { size: pax.length, mode: 0o644 }),
    pad(pax),
    main,
  ]);
}

function pad(data: Buffer): Buffer {
  const rest = data.length % BLOCK;
  return rest === 0 ? data : Buffer.concat([data, Buffer.alloc(BLOCK - rest)]);
}

/** Zero bytes that complete a body of `size` bytes to a whole block. */
export function padding(size: number): Buffer {
  const rest = size % BLOCK;
  return Buffer.alloc(rest === 0 ? 0 : BLOCK - rest);
}

export const END_OF_ARCHIVE = Buffer.alloc(2 * BLOCK);

/** Linux's dev_t split into major and minor, as tar stores them. */
export function splitDev(rdev: number): [number, number] {
  const major = ((rdev >>> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
  const minor = (rdev & 0xff) | ((rdev >>> 12) & 0xfff00);
  return [major, minor];
}

export function makeDev(major: number, minor: number): number {
  return (
    ((major & 0xfff) << 8) + (minor & 0xff) + (minor & 0xfff00) * 4096 + (major & ~0xfff) * 2 ** 32
  );
}
