/**
 * A plain reader of tar files held in memory, keeping PAX records as raw bytes: tar-stream
 * decodes PAX values as UTF-8, which mangles binary xattrs such as security.capability.
 */
import { createHash } from 'node:crypto';

export interface ScannedEntry {
  name: string;
  /** '0' file, '1' hard link, '2' symlink, '3' char, '4' block, '5' dir, '6' fifo. */
  typeflag: string;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  linkname: string;
  devmajor: number;
  devminor: number;
  /** PAX records of this entry (from its 'x' header), values as raw bytes. */
  pax: Map<string, Buffer>;
  sha256: string;
}

function cstr(buf: Buffer, off: number, len: number): string {
  const field = buf.subarray(off, off + len);
  const nul = field.indexOf(0);
  return field.subarray(0, nul < 0 ? len : nul).toString('utf8');
}

function octalField(buf: Buffer, off: number, len: number): number {
  const text = cstr(buf, off, len).trim();
  return text === '' ? 0 : parseInt(text, 8);
}

function parsePax(data: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let off = 0;
  while (off < data.length) {
    const space = data.indexOf(0x20, off);
    if (space < 0) break;
    const len = parseInt(data.subarray(off, space).toString('ascii'), 10);
    if (!Number.isFinite(len) || len <= 0) break;
    const record = data.subarray(space + 1, off + len - 1); // drop the trailing \n
    const eq = record.indexOf(0x3d);
    out.set(record.subarray(0, eq).toString('utf8'), Buffer.from(record.subarray(eq + 1)));
    off += len;
  }
  return out;
}

/** Every entry of a tar, GNU long names and PAX path/linkpath/size applied. */
export function scanTar(tar: Buffer): ScannedEntry[] {
  const out: ScannedEntry[] = [];
  let off = 0;
  let pax = new Map<string, Buffer>();
  let longName: string | undefined;
  let longLink: string | undefined;
  while (off + 512 <= tar.length) {
    const h = tar.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break;
    const typeflag = String.fromCharCode(h[156] || 0x30);
    let size = octalField(h, 124, 12);
    if (pax.has('size') && typeflag !== 'x' && typeflag !== 'g')
      size = Number(pax.get('size')?.toString());
    const data = tar.subarray(off + 512, off + 512 + size);
    off += 512 + Math.ceil(size / 512) * 512;
    if (typeflag === 'x') {
      pax = parsePax(data);
      continue;
    }
    if (typeflag === 'g') continue;
    if (typeflag === 'L') {
      longName = cstr(data, 0, data.length);
      continue;
    }
    if (typeflag === 'K') {
      longLink = cstr(data, 0, data.length);
      continue;
    }
    const prefix = cstr(h, 345, 155);
    let name = cstr(h, 0, 100);
    if (prefix) name = `${prefix}/${name}`;
    name = pax.get('path')?.toString('utf8') ?? longName ?? name;
    const linkname = pax.get('linkpath')?.toString('utf8') ?? longLink ?? cstr(h, 157, 100);
    out.push({
      name,
      typeflag,
      size,
      mode: octalField(h, 100, 8),
      uid: Number(pax.get('uid')?.toString() ?? octalField(h, 108, 8)),
      gid: Number(pax.get('gid')?.toString() ?? octalField(h, 116, 8)),
      linkname,
      devmajor: octalField(h, 329, 8),
      devminor: octalField(h, 337, 8),
      pax,
      sha256: createHash('sha256').update(data).digest('hex'),
    });
    pax = new Map();
    longName = undefined;
    longLink = undefined;
  }
  return out;
}
