/**
 * Shared pieces of the crash test (test/fs/crash.test.ts) and its child (test/fs/crash-writer.ts):
 * a seeded PRNG, seeded incompressible content, the ack journal format and parser, and a tree
 * hash computed through the LayerStore API only.
 */
import { createHash } from 'node:crypto';
import type { LayerStore } from '../../fs/layer-store.js';
import { S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG } from './helpers/posix.js';
import { sha256Hex, type SeededRandom } from './helpers/prng.js';

// ---------- seeded randomness ----------

/** A file size: mostly small, some medium, about one in six above one chunk (1 MiB). */
export function randomFileSize(rng: SeededRandom): number {
  const r = rng.next();
  if (r < 0.08) return 0;
  if (r < 0.6) return rng.int(1, 64 * 1024);
  if (r < 0.83) return rng.int(64 * 1024, 1024 * 1024 - 1);
  return rng.int(1024 * 1024 + 1, 3 * 1024 * 1024 + 123);
}

// ---------- file types ----------

export function typeChar(mode: number): string {
  switch (mode & S_IFMT) {
    case S_IFDIR:
      return 'd';
    case S_IFREG:
      return 'f';
    case S_IFLNK:
      return 'l';
    case S_IFCHR:
      return 'c';
    case S_IFBLK:
      return 'b';
    case S_IFIFO:
      return 'p';
    default:
      return `?${(mode & S_IFMT).toString(8)}`;
  }
}

// ---------- tree walk and hash (through the API only) ----------

export interface WalkedNode {
  readonly path: string;
  readonly ino: number;
  readonly dir: number;
  readonly name: string;
  readonly mode: number;
  readonly size: number;
}

export interface TreeWalk {
  /** One canonical line per node, in walk order (sorted by name, depth first). */
  readonly lines: string[];
  readonly nodes: WalkedNode[];
  /** sha256 over the lines; content hashes included only when walked with content. */
  readonly hash: string;
}

async function contentHash(
  store: LayerStore,
  id: string,
  ino: number,
  size: number,
  path: string,
): Promise<string> {
  const h = createHash('sha256');
  let off = 0;
  while (off < size) {
    const want = Math.min(1 << 20, size - off);
    const buf = await store.read(id, ino, off, want);
    if (buf.length === 0)
      throw new Error(`read ${id}:${path} returned 0 bytes at offset ${off} of ${size}`);
    if (buf.length > want)
      throw new Error(`read ${id}:${path} returned ${buf.length} bytes, asked ${want}`);
    h.update(buf);
    off += buf.length;
  }
  const tail = await store.read(id, ino, size, 4096);
  if (tail.length !== 0)
    throw new Error(`read ${id}:${path} returned ${tail.length} bytes past EOF (size ${size})`);
  return h.digest('hex');
}

/**
 * Walks a layer's whole tree via root/readdir/getattr/lookup/readlink/read/listxattr/getxattr.
 * Throws on any API error or inconsistency (readdir attr vs getattr vs lookup). The line of each
 * node holds path, type, permission bits, owner, nlink, size, mtime, the sha256 of file content (or
 * the symlink target, or rdev), and the xattrs.
 */
export async function walkTree(
  store: LayerStore,
  id: string,
  withContent = true,
): Promise<TreeWalk> {
  const lines: string[] = [];
  const nodes: WalkedNode[] = [];
  const rootIno = store.root(id);
  const rootAttr = store.getattr(id, rootIno);
  if ((rootAttr.mode & S_IFMT) !== S_IFDIR)
    throw new Error(`root of ${id} is not a directory (mode ${rootAttr.mode.toString(8)})`);
  lines.push(`/\td\t${(rootAttr.mode & 0o7777).toString(8)}\t${rootAttr.uid}:${rootAttr.gid}`);
  const seenDirs = new Set<number>([rootIno]);

  const walkDir = async (dirIno: number, prefix: string): Promise<void> => {
    const entries = store
      .readdir(id, dirIno)
      .filter((e) => e.name !== '.' && e.name !== '..')
      .sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
    const names = new Set<string>();
    for (const e of entries) {
      const path = prefix + e.name;
      if (names.has(e.name))
        throw new Error(`readdir ${id}:${prefix || '/'} lists ${e.name} twice`);
      names.add(e.name);
      const a = store.getattr(id, e.attr.ino);
      const l = store.lookup(id, dirIno, e.name);
      if (l.ino !== e.attr.ino)
        throw new Error(`lookup ${id}:${path} gives ino ${l.ino}, readdir gave ${e.attr.ino}`);
      if (a.mode !== e.attr.mode || a.size !== e.attr.size) {
        throw new Error(
          `${id}:${path} readdir attr (mode ${e.attr.mode.toString(8)} size ${e.attr.size}) != getattr (mode ${a.mode.toString(8)} size ${a.size})`,
        );
      }
      const t = typeChar(a.mode);
      let extra = '';
      if (t === 'f') extra = withContent ? await contentHash(store, id, a.ino, a.size, path) : '';
      else if (t === 'l') extra = store.readlink(id, a.ino);
      else if (t === 'c' || t === 'b') extra = String(a.rdev);
      const xnames = store.listxattr(id, a.ino).slice().sort();
      const xattrs = xnames
        .map((n) => `${n}=${sha256Hex(store.getxattr(id, a.ino, n)).slice(0, 16)}`)
        .join(',');
      lines.push(
        [
          path,
          t,
          (a.mode & 0o7777).toString(8),
          `${a.uid}:${a.gid}`,
          a.nlink,
          a.size,
          `${a.mtime[0]}.${a.mtime[1]}`,
          extra,
          xattrs,
        ].join('\t'),
      );
      nodes.push({ path, ino: a.ino, dir: dirIno, name: e.name, mode: a.mode, size: a.size });
      if (t === 'd') {
        if (seenDirs.has(a.ino))
          throw new Error(`${id}:${path} directory ino ${a.ino} reached twice (cycle?)`);
        seenDirs.add(a.ino);
        await walkDir(a.ino, path + '/');
      }
    }
  };
  await walkDir(rootIno, '');
  return { lines, nodes, hash: sha256Hex(lines.join('\n')) };
}

/** Resolves a path and returns the sha256 of the file's content. */
export async function fileHash(
  store: LayerStore,
  id: string,
  path: string,
): Promise<{ sha: string; size: number; ino: number }> {
  const a = store.resolve(id, path);
  if ((a.mode & S_IFMT) !== S_IFREG)
    throw new Error(`${id}:${path} is not a regular file (mode ${a.mode.toString(8)})`);
  return { sha: await contentHash(store, id, a.ino, a.size, path), size: a.size, ino: a.ino };
}

// ---------- the ack journal ----------

/**
 * One line per event, space separated. Intents (`creating`, `removing`) are written before the
 * call; acknowledgements after the promise resolved (then the journal is fsynced).
 *   iter <n> <seed>
 *   creating <id> <parent|->
 *   created <id> <parent|->
 *   applied <id> <entryBytes> <treeHash>
 *   frozen <id> <treeHash>
 *   ino <id> <path> <ino>
 *   fsynced <id> <path> <sha256> <size>
 *   removing <id>
 *   removed <id>
 */
export interface JournalLayer {
  id: string;
  parent: string | null;
  creating: boolean;
  created: boolean;
  appliedHash?: string;
  frozenHash?: string;
  removing: boolean;
  removed: boolean;
  /** The journal line number of the last acked hash (applied/frozen), for incremental checks. */
  hashLine: number;
}

export interface JournalFsync {
  id: string;
  path: string;
  sha: string;
  size: number;
  line: number;
}

export interface JournalIno {
  id: string;
  path: string;
  ino: number;
  line: number;
}

export interface Journal {
  layers: Map<string, JournalLayer>;
  fsynced: JournalFsync[];
  inos: JournalIno[];
  lines: number;
  iters: number;
}

export function parseJournal(text: string): Journal {
  const j: Journal = { layers: new Map(), fsynced: [], inos: [], lines: 0, iters: 0 };
  const all = text.split('\n');
  // A last line without its newline was torn by the kill: it was never acknowledged.
  if (!text.endsWith('\n')) all.pop();
  const layer = (id: string): JournalLayer => {
    let l = j.layers.get(id);
    if (!l) {
      l = {
        id,
        parent: null,
        creating: false,
        created: false,
        removing: false,
        removed: false,
        hashLine: 0,
      };
      j.layers.set(id, l);
    }
    return l;
  };
  all.forEach((line, i) => {
    if (line === '') return;
    j.lines = i + 1;
    const f = line.split(' ');
    const id = f[1] ?? '';
    switch (f[0]) {
      case 'iter':
        j.iters++;
        break;
      case 'creating':
        layer(id).creating = true;
        layer(id).parent = f[2] === '-' ? null : (f[2] ?? null);
        break;
      case 'created':
        layer(id).created = true;
        layer(id).parent = f[2] === '-' ? null : (f[2] ?? null);
        break;
      case 'applied':
        layer(id).appliedHash = f[3];
        layer(id).hashLine = i + 1;
        break;
      case 'frozen':
        layer(id).frozenHash = f[2];
        layer(id).hashLine = i + 1;
        break;
      case 'ino':
        j.inos.push({ id, path: f[2] ?? '', ino: Number(f[3]), line: i + 1 });
        break;
      case 'fsynced':
        j.fsynced.push({ id, path: f[2] ?? '', sha: f[3] ?? '', size: Number(f[4]), line: i + 1 });
        break;
      case 'removing':
        layer(id).removing = true;
        break;
      case 'removed':
        layer(id).removed = true;
        break;
      default:
        throw new Error(`journal line ${i + 1} not understood: ${line}`);
    }
  });
  return j;
}

// ---------- checking a store against the journal ----------

export interface VerifyStats {
  layers: number;
  hashChecks: number;
  walks: number;
  fsyncChecks: number;
  inoChecks: number;
}

/**
 * Checks the store against the journal. `sinceLine`: journal entries after it are new and always
 * checked; older hashes and fsynced files are checked when `full`, else a sample.
 */
export async function verify(
  store: LayerStore,
  j: Journal,
  opts: { full: boolean; sinceLine: number; rng: SeededRandom },
): Promise<{ errors: string[]; stats: VerifyStats }> {
  const errors: string[] = [];
  const stats: VerifyStats = { layers: 0, hashChecks: 0, walks: 0, fsyncChecks: 0, inoChecks: 0 };
  const guard = async (what: string, fn: () => Promise<void> | void): Promise<void> => {
    try {
      await fn();
    } catch (err) {
      const e = err as Error & { code?: string };
      errors.push(`${what}: threw ${e?.code ?? ''} ${e?.message ?? String(err)}`);
    }
  };

  // The layer graph.
  const listed = store.listLayers();
  stats.layers = listed.length;
  const byId = new Map(listed.map((l) => [l.id, l]));
  const childCount = new Map<string, number>();
  for (const l of listed) {
    if (l.parent !== null) {
      childCount.set(l.parent, (childCount.get(l.parent) ?? 0) + 1);
      if (!byId.has(l.parent)) errors.push(`layer ${l.id}: parent ${l.parent} is not listed`);
    }
    if (!store.exists(l.id)) errors.push(`layer ${l.id} is listed but exists() says false`);
  }
  for (const l of listed) {
    const n = childCount.get(l.id) ?? 0;
    if (l.children !== n)
      errors.push(`layer ${l.id}: children=${l.children} but ${n} listed layers name it as parent`);
    if (n > 0 && l.state !== 'frozen')
      errors.push(`layer ${l.id} has ${n} children but is ${l.state}`);
  }

  // Journaled layers.
  const hashed = new Set<string>();
  const checkHash = async (id: string, expected: string, what: string): Promise<void> => {
    hashed.add(id);
    stats.hashChecks++;
    await guard(`layer ${id} (${what})`, async () => {
      const w = await walkTree(store, id, true);
      if (w.hash !== expected)
        errors.push(`layer ${id}: tree hash ${w.hash}, journaled ${what} hash ${expected}`);
    });
  };
  const due = (line: number): boolean => opts.full || line > opts.sinceLine || opts.rng.chance(0.1);
  for (const jl of j.layers.values()) {
    const exists = store.exists(jl.id);
    const expected = jl.frozenHash ?? jl.appliedHash;
    if (jl.removed) {
      if (exists) errors.push(`layer ${jl.id}: removeLayer was acknowledged but the layer exists`);
    } else if (jl.removing) {
      // Not acknowledged: all or nothing.
      if (exists && expected !== undefined && due(jl.hashLine))
        await checkHash(jl.id, expected, 'pre-removal');
    } else if (jl.created) {
      if (!exists) {
        errors.push(
          `layer ${jl.id}: createLayer was acknowledged${expected ? ' and its tree journaled' : ''} but the layer is gone`,
        );
        continue;
      }
      const info = byId.get(jl.id);
      if (info && info.parent !== jl.parent)
        errors.push(`layer ${jl.id}: parent ${info.parent}, journaled ${jl.parent}`);
      if (jl.frozenHash !== undefined && info && info.state !== 'frozen') {
        errors.push(`layer ${jl.id}: freeze was acknowledged but the layer is ${info.state}`);
      }
      if (expected !== undefined && due(jl.hashLine))
        await checkHash(jl.id, expected, jl.frozenHash ? 'frozen' : 'applied');
    }
  }

  // Every listed layer is walkable (content read unless its tree was hashed above or it is a
  // journaled frozen layer not due this round: then names and attributes only).
  for (const l of listed) {
    if (hashed.has(l.id)) continue;
    const jl = j.layers.get(l.id);
    const known = jl !== undefined && (jl.frozenHash ?? jl.appliedHash) !== undefined;
    stats.walks++;
    await guard(
      `layer ${l.id} (${known ? 'journaled, not due' : 'unacknowledged or writable'}) walk`,
      async () => {
        await walkTree(store, l.id, !known || opts.full);
      },
    );
  }

  // fsynced files.
  const alive = (id: string): boolean => {
    const jl = j.layers.get(id);
    return jl !== undefined && !jl.removed && !jl.removing && store.exists(id);
  };
  for (const f of j.fsynced) {
    if (!alive(f.id) || !due(f.line)) continue;
    stats.fsyncChecks++;
    await guard(`fsynced file ${f.id}:${f.path}`, async () => {
      const got = await fileHash(store, f.id, f.path);
      if (got.sha !== f.sha || got.size !== f.size) {
        errors.push(
          `fsynced file ${f.id}:${f.path}: size ${got.size} sha ${got.sha}, journaled size ${f.size} sha ${f.sha}`,
        );
      }
    });
  }

  // Inode numbers of frozen layers.
  for (const r of j.inos) {
    if (!alive(r.id)) continue;
    stats.inoChecks++;
    await guard(`ino of ${r.id}:${r.path}`, () => {
      const a = store.resolve(r.id, r.path);
      if (a.ino !== r.ino) errors.push(`ino of ${r.id}:${r.path} is ${a.ino}, journaled ${r.ino}`);
    });
  }
  return { errors, stats };
}
