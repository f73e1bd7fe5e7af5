/**
 * Child process of the crash test (test/fs/crash.test.ts); the parent kills it with SIGKILL.
 *
 *   node --import tsx test/fs/crash-writer.ts <storeDir> <journalPath> <seed> <iter>
 *
 * Opens the store, reconciles it with the ack journal left by earlier (killed) children, then loops
 * until killed: creates layers (children of the last frozen one), writes files of random sizes with
 * seeded content, modifies inherited files, fsyncs some files, freezes, applies small generated
 * tars, removes leaf layers. After each acknowledged call it appends a line to the journal and
 * fsyncs it (format: see parseJournal in crash-lib.ts). Prints `started` once loaded and `opened`
 * once the store is open. An unexpected error is printed as `FAIL ...` on stderr, exit code 3.
 */
import { appendFileSync, fsyncSync, openSync, readFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { openLayerStore } from '../../fs/index.js';
import type { LayerStore } from '../../fs/layer-store.js';
import type { Caller } from '../../fs/types.js';
import { type Journal, parseJournal, randomFileSize, walkTree } from './crash-lib.js';
import { S_IFIFO, S_IFMT, S_IFREG } from './helpers/posix.js';
import { labelledBytes, SeededRandom, sha256Hex } from './helpers/prng.js';

const [storeDir, journalPath, seedArg, iterArg] = process.argv.slice(2);
if (!storeDir || !journalPath || !seedArg || !iterArg) {
  process.stderr.write('usage: crash-writer.ts <storeDir> <journalPath> <seed> <iter>\n');
  process.exit(2);
}
const seed = seedArg;
const iter = Number(iterArg);
const rng = new SeededRandom(`${seed}:child:${iter}`);
const caller: Caller = { uid: 0, gid: 0 };
// Safety net: never outlive a parent that forgot us.
setTimeout(() => process.exit(4), 60_000).unref();

const jfd = openSync(journalPath, 'a');
function ack(line: string): void {
  appendFileSync(jfd, line + '\n');
  fsyncSync(jfd);
}

let counter = 0;
const uniq = (p: string): string => `${p}${iter}_${counter++}`;

interface Model {
  journal: Journal;
  /** Candidate parents (frozen, or applied and about to be frozen by a child), most recent last. */
  order: string[];
}

function liveJournalLayers(j: Journal): string[] {
  return [...j.layers.values()]
    .filter((l) => l.created && !l.removing && !l.removed)
    .map((l) => l.id);
}

async function removeLayer(store: LayerStore, m: Model, id: string): Promise<void> {
  ack(`removing ${id}`);
  await store.removeLayer(id);
  ack(`removed ${id}`);
  const l = m.journal.layers.get(id);
  if (l) {
    l.removing = true;
    l.removed = true;
  }
  m.order = m.order.filter((x) => x !== id);
}

async function freezeAndJournal(store: LayerStore, m: Model, id: string): Promise<void> {
  if (store.layer(id).state !== 'frozen') await store.freeze(id);
  const w = await walkTree(store, id, true);
  ack(`frozen ${id} ${w.hash}`);
  const l = m.journal.layers.get(id)!;
  l.frozenHash = w.hash;
  m.order = m.order.filter((x) => x !== id).concat(id);
  const files = w.nodes.filter((n) => (n.mode & S_IFMT) === S_IFREG);
  for (let k = 0; k < 2 && files.length > 0; k++) {
    const f = rng.pick(files);
    ack(`ino ${id} ${f.path} ${f.ino}`);
  }
}

async function createLayer(store: LayerStore, m: Model, parent: string | null): Promise<string> {
  const id = uniq('L');
  ack(`creating ${id} ${parent ?? '-'}`);
  await store.createLayer(id, parent);
  ack(`created ${id} ${parent ?? '-'}`);
  m.journal.layers.set(id, {
    id,
    parent,
    creating: true,
    created: true,
    removing: false,
    removed: false,
    hashLine: 0,
  });
  // Creating a child froze an applied parent: journal it as frozen with the tree it had.
  if (parent !== null) {
    const p = m.journal.layers.get(parent);
    if (p && p.frozenHash === undefined && p.appliedHash !== undefined) {
      const info = store.layer(parent);
      if (info.state !== 'frozen')
        throw new Error(`createLayer(${id}, ${parent}) resolved but ${parent} is ${info.state}`);
      ack(`frozen ${parent} ${p.appliedHash}`);
      p.frozenHash = p.appliedHash;
    }
  }
  return id;
}

/** Writes `data` at `offset` in pieces of random sizes, sometimes out of order. */
async function writePieces(
  store: LayerStore,
  id: string,
  ino: number,
  offset: number,
  data: Buffer,
): Promise<void> {
  const pieces: Array<[number, number]> = [];
  for (let off = 0; off < data.length;) {
    const len = Math.min(data.length - off, rng.chance(0.2) ? data.length : rng.int(1, 300 * 1024));
    pieces.push([off, len]);
    off += len;
  }
  if (rng.chance(0.2)) pieces.reverse();
  for (const [off, len] of pieces) {
    const n = await store.write(id, ino, offset + off, data.subarray(off, off + len));
    if (n !== len)
      throw new Error(`write ${id} ino ${ino} at ${offset + off}: wrote ${n} of ${len}`);
  }
}

interface FileRef {
  path: string;
  ino: number;
  dir: number;
  name: string;
  size: number;
}
interface DirRef {
  path: string;
  ino: number;
}

async function writeSession(store: LayerStore, m: Model, id: string): Promise<void> {
  const protectedPaths = new Set(m.journal.fsynced.filter((f) => f.id === id).map((f) => f.path));
  const walk = await walkTree(store, id, false);
  const rootIno = store.root(id);
  const dirs: DirRef[] = [{ path: '', ino: rootIno }];
  const dirInos = new Map<string, number>([['', rootIno]]);
  let files: FileRef[] = [];
  for (const n of walk.nodes) {
    const t = n.mode & S_IFMT;
    if (t === 0o040000) {
      dirs.push({ path: n.path, ino: n.ino });
      dirInos.set(n.path, n.ino);
    } else if (t === S_IFREG && !protectedPaths.has(n.path)) {
      files.push({ path: n.path, ino: n.ino, dir: n.dir, name: n.name, size: n.size });
    }
  }
  const join = (d: DirRef, name: string): string => (d.path === '' ? name : `${d.path}/${name}`);

  const nOps = rng.int(2, 9);
  for (let op = 0; op < nOps; op++) {
    const r = rng.next();
    if (r < 0.5 || files.length === 0) {
      // A new file with seeded content, maybe fsynced (with every ancestor directory).
      const d = rng.pick(dirs);
      const name = uniq('f');
      const path = join(d, name);
      const perm = rng.pick([0o644, 0o600, 0o755, 0o640]);
      const a = store.create(id, d.ino, name, S_IFREG | perm, caller);
      const size = randomFileSize(rng);
      const data = labelledBytes(`${seed}:${id}:${path}`, size);
      await writePieces(store, id, a.ino, 0, data);
      if (rng.chance(0.35)) {
        await store.fsync(id, a.ino);
        const parts = path.split('/');
        for (let k = parts.length - 1; k >= 0; k--) {
          const dirPath = parts.slice(0, k).join('/');
          await store.fsync(id, dirInos.get(dirPath) ?? store.resolve(id, dirPath).ino);
        }
        ack(`fsynced ${id} ${path} ${sha256Hex(data)} ${size}`);
        protectedPaths.add(path);
      } else {
        files.push({ path, ino: a.ino, dir: d.ino, name, size });
      }
    } else if (r < 0.6) {
      const d = rng.pick(dirs);
      const name = uniq('d');
      const a = store.mkdir(id, d.ino, name, rng.pick([0o755, 0o700, 0o750]), caller);
      const path = join(d, name);
      dirs.push({ path, ino: a.ino });
      dirInos.set(path, a.ino);
    } else if (r < 0.72) {
      // Overwrite a range of an existing (often inherited) file: copy-on-write of one chunk or more.
      const f = rng.pick(files);
      const off = rng.int(0, f.size);
      const len = rng.int(1, 200 * 1024);
      const data = labelledBytes(`${seed}:${id}:${f.path}:mod${counter++}`, len);
      await writePieces(store, id, f.ino, off, data);
      f.size = Math.max(f.size, off + len);
    } else if (r < 0.77) {
      const f = rng.pick(files);
      const size = rng.int(0, f.size + 100_000);
      await store.setattr(id, f.ino, { size });
      f.size = size;
    } else if (r < 0.82) {
      const f = rng.pick(files);
      store.unlink(id, f.dir, f.name);
      files = files.filter((x) => x !== f);
    } else if (r < 0.87) {
      const f = rng.pick(files);
      const d = rng.pick(dirs);
      const name = uniq('r');
      store.rename(id, f.dir, f.name, d.ino, name);
      files = files.filter((x) => x !== f);
      files.push({ ...f, dir: d.ino, name, path: join(d, name) });
    } else if (r < 0.9) {
      const d = rng.pick(dirs);
      store.symlink(id, d.ino, uniq('s'), rng.pick(files).path, caller);
    } else if (r < 0.93) {
      const f = rng.pick(files);
      const d = rng.pick(dirs);
      const name = uniq('h');
      const a = store.link(id, f.ino, d.ino, name);
      files.push({ path: join(d, name), ino: a.ino, dir: d.ino, name, size: a.size });
    } else if (r < 0.96) {
      const f = rng.pick(files);
      store.setxattr(
        id,
        f.ino,
        `user.k${rng.int(0, 3)}`,
        labelledBytes(`${seed}:x${counter++}`, rng.int(0, 200)),
      );
      await store.setattr(id, f.ino, { mode: S_IFREG | rng.pick([0o600, 0o644, 0o700, 0o755]) });
    } else {
      const d = rng.pick(dirs);
      store.mknod(id, d.ino, uniq('p'), S_IFIFO | 0o644, 0, caller);
    }
  }
}

async function buildTar(store: LayerStore, parent: string | null): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => void chunks.push(c as Buffer));
  const ended = new Promise<void>((resolve, reject) => {
    pack.on('end', resolve);
    pack.on('error', reject);
  });
  const mtime = new Date(1_700_000_000_000 + rng.int(0, 1_000_000) * 1000);
  const owner = (): { uid: number; gid: number } =>
    rng.pick([
      { uid: 0, gid: 0 },
      { uid: 1000, gid: 1000 },
    ]);
  const used = new Set<string>();
  const addFile = (name: string): void => {
    const size = randomFileSize(rng) >> (rng.chance(0.5) ? 1 : 0);
    const data = labelledBytes(`${seed}:tar:${name}:${counter++}`, size);
    pack.entry({ name, size, mode: rng.pick([0o644, 0o600, 0o755]), mtime, ...owner() }, data);
    used.add(name);
  };

  // Changes to inherited paths: overwrite, whiteout, opaque directory.
  if (parent !== null) {
    const pw = await walkTree(store, parent, false);
    const pfiles = pw.nodes.filter((n) => (n.mode & S_IFMT) === S_IFREG);
    const pdirs = pw.nodes.filter((n) => (n.mode & S_IFMT) === 0o040000);
    if (pfiles.length > 0 && rng.chance(0.5)) addFile(rng.pick(pfiles).path);
    for (let k = rng.int(0, 2); k > 0 && pfiles.length > 0; k--) {
      const f = rng.pick(pfiles);
      if (used.has(f.path)) continue;
      const slash = f.path.lastIndexOf('/');
      const wh =
        slash < 0 ? `.wh.${f.path}` : `${f.path.slice(0, slash)}/.wh.${f.path.slice(slash + 1)}`;
      pack.entry({ name: wh, size: 0, mode: 0o644, mtime }, Buffer.alloc(0));
      used.add(f.path);
    }
    if (pdirs.length > 0 && rng.chance(0.15)) {
      const d = rng.pick(pdirs);
      if (![...used].some((u) => u.startsWith(d.path + '/'))) {
        pack.entry({ name: `${d.path}/`, type: 'directory', mode: 0o755, mtime });
        pack.entry(
          { name: `${d.path}/.wh..wh..opq`, size: 0, mode: 0o644, mtime },
          Buffer.alloc(0),
        );
        addFile(`${d.path}/${uniq('o')}`);
      }
    }
  }

  const top = uniq('a');
  pack.entry({ name: `${top}/`, type: 'directory', mode: 0o755, mtime, ...owner() });
  const tdirs = [top];
  const tfiles: string[] = [];
  for (let k = rng.int(3, 20); k > 0; k--) {
    if (rng.chance(0.15)) {
      const d = `${rng.pick(tdirs)}/${uniq('sd')}`;
      pack.entry({
        name: `${d}/`,
        type: 'directory',
        mode: rng.pick([0o755, 0o700]),
        mtime,
        ...owner(),
      });
      tdirs.push(d);
    }
    const name = `${rng.pick(tdirs)}/${uniq('t')}`;
    addFile(name);
    tfiles.push(name);
  }
  if (rng.chance(0.5))
    pack.entry({
      name: `${top}/${uniq('sl')}`,
      type: 'symlink',
      linkname: rng.pick(tfiles),
      mtime,
    });
  if (rng.chance(0.4))
    pack.entry({ name: `${top}/${uniq('hl')}`, type: 'link', linkname: rng.pick(tfiles), mtime });
  pack.finalize();
  await ended;
  return Buffer.concat(chunks);
}

/** Feeds a buffer in pieces of random sizes, so the tar parser meets every kind of boundary. */
function piecewise(buf: Buffer): Readable {
  const parts: Buffer[] = [];
  for (let off = 0; off < buf.length;) {
    const len = Math.min(buf.length - off, rng.int(1, 64 * 1024));
    parts.push(buf.subarray(off, off + len));
    off += len;
  }
  return Readable.from(parts, { objectMode: false });
}

async function applySession(store: LayerStore, m: Model, parent: string | null): Promise<void> {
  const tarBuf = await buildTar(store, parent);
  const id = await createLayer(store, m, parent);
  const n = await store.applyDiff(id, parent, piecewise(tarBuf));
  const w = await walkTree(store, id, true);
  ack(`applied ${id} ${n} ${w.hash}`);
  const l = m.journal.layers.get(id)!;
  l.appliedHash = w.hash;
  m.order.push(id);
  if (rng.chance(0.5)) {
    await store.freeze(id);
    const w2 = await walkTree(store, id, true);
    if (w2.hash !== w.hash)
      throw new Error(`freeze(${id}) changed the tree hash: ${w.hash} -> ${w2.hash}`);
    ack(`frozen ${id} ${w2.hash}`);
    l.frozenHash = w2.hash;
  }
}

function pickParent(store: LayerStore, m: Model): string | null {
  const live = m.order.filter((id) => store.exists(id));
  if (live.length === 0 || rng.chance(0.08)) return null;
  let p = live[live.length - 1];
  if (rng.chance(0.2)) p = rng.pick(live);
  if (store.layer(p).depth >= 10) {
    const shallow = live.filter((id) => store.layer(id).depth < 4);
    return shallow.length > 0 && rng.chance(0.6) ? rng.pick(shallow) : null;
  }
  return p;
}

async function main(): Promise<void> {
  const journal = parseJournal(readFileSync(journalPath, 'utf8'));
  ack(`iter ${iter} ${seed}`);
  process.stdout.write('started\n');
  const store = await openLayerStore({ dir: storeDir });
  process.stdout.write('opened\n');

  const m: Model = { journal, order: [] };
  m.order = [...journal.layers.values()]
    .filter(
      (l) =>
        l.created &&
        !l.removing &&
        !l.removed &&
        (l.frozenHash !== undefined || l.appliedHash !== undefined),
    )
    .sort((a, b) => a.hashLine - b.hashLine)
    .map((l) => l.id);

  // Reconcile with what the killed children left behind.
  for (const l of store.listLayers()) {
    const jl = journal.layers.get(l.id);
    if ((!jl || !jl.created || jl.removing) && l.children === 0) await removeLayer(store, m, l.id);
  }
  for (const jl of [...journal.layers.values()]) {
    if (
      !jl.created ||
      jl.removed ||
      jl.removing ||
      jl.frozenHash !== undefined ||
      jl.appliedHash !== undefined
    )
      continue;
    if (!store.exists(jl.id))
      throw new Error(`layer ${jl.id}: createLayer was acknowledged, but the layer is gone`);
    const info = store.layer(jl.id);
    if (info.children > 0) continue;
    if (rng.chance(0.5)) {
      await removeLayer(store, m, jl.id);
    } else if (info.state === 'frozen') {
      await freezeAndJournal(store, m, jl.id);
    } else {
      await writeSession(store, m, jl.id);
      await freezeAndJournal(store, m, jl.id);
    }
  }

  for (;;) {
    const live = liveJournalLayers(m.journal).filter((id) => store.exists(id));
    const r = rng.next();
    if ((r < 0.2 && live.length > 4) || live.length > 24) {
      const leaves = live.filter((id) => store.layer(id).children === 0);
      if (leaves.length > 0) {
        await removeLayer(store, m, rng.pick(leaves));
        continue;
      }
    }
    const parent = pickParent(store, m);
    if (r < 0.55) {
      await applySession(store, m, parent);
    } else {
      const id = await createLayer(store, m, parent);
      await writeSession(store, m, id);
      if (rng.chance(0.85)) await freezeAndJournal(store, m, id);
    }
  }
}

main().catch((err: unknown) => {
  const e = err as Error & { code?: string };
  process.stderr.write(
    `FAIL iter ${iter} seed ${seed}: ${e?.code ?? ''} ${e?.stack ?? String(err)}\n`,
  );
  process.exit(3);
});
