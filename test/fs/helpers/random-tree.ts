/**
 * Random trees and random mutations driven by a SeededRandom, through the public API only. Every
 * operation is appended to a log so a failing seed can be read back step by step.
 */
import type { LayerStore } from '../../../fs/layer-store.js';
import type { Caller } from '../../../fs/types.js';
import { isStoreError } from '../../../fs/errors.js';
import { joinPath, lookupPath, parentOf, removeTree, writeAt } from './paths.js';
import { makedev, ROOT, S_IFCHR, S_IFIFO, S_IFREG } from './posix.js';
import type { SeededRandom } from './prng.js';
import { snapshotTree, type NodeSnapshot } from './tree.js';

const MiB = 1 << 20;
/** A small pool, so names collide: renames over existing files, re-created names. */
const NAMES = [
  'a',
  'b',
  'c',
  'd',
  'e',
  'etc',
  'bin',
  'lib',
  'usr',
  'data',
  'x',
  'y',
  'conf',
  'log',
  'tmp',
];
const CALLERS: Caller[] = [
  ROOT,
  ROOT,
  { uid: 1000, gid: 1000 },
  { uid: 1, gid: 2 },
  { uid: 33, gid: 0 },
];
const FILE_MODES = [0o644, 0o644, 0o600, 0o755, 0o4755, 0o2755, 0o444, 0o640, 0o000, 0o6711];
const DIR_MODES = [0o755, 0o755, 0o700, 0o775, 0o1777, 0o2755, 0o750, 0o711];

export interface RandomTreeOptions {
  /** How many files of 1–3 MiB the base gets at most (default 2). */
  bigFiles?: number;
}

export class RandomTreeWriter {
  readonly log: string[] = [];
  private counter = 0;

  constructor(
    readonly store: LayerStore,
    readonly id: string,
    readonly rng: SeededRandom,
  ) {}

  private note(op: string): void {
    this.log.push(op);
  }

  private freshName(dirPath: string): string {
    const dir = lookupPath(this.store, this.id, dirPath).ino;
    for (let i = 0; ; i++) {
      const name = i < 4 ? this.rng.pick(NAMES) : `n${++this.counter}`;
      try {
        this.store.lookup(this.id, dir, name);
      } catch (err) {
        if (isStoreError(err, 'ENOENT')) return name;
        throw err;
      }
    }
  }

  private smallSize(): number {
    return this.rng.weighted<number>([
      [10, 0],
      [60, this.rng.int(1, 4096)],
      [30, this.rng.int(4097, 300_000)],
    ]);
  }

  private timespec(): [number, number] {
    return [this.rng.int(1_000_000_000, 1_900_000_000), this.rng.int(0, 999_999_999)];
  }

  async addFile(dirPath: string, size = this.smallSize()): Promise<string> {
    const path = joinPath(dirPath, this.freshName(dirPath));
    const mode = this.rng.pick(FILE_MODES);
    const caller = this.rng.pick(CALLERS);
    const { dir, name } = parentOf(this.store, this.id, path);
    this.note(
      `create ${path} mode=${mode.toString(8)} owner=${caller.uid}:${caller.gid} size=${size}`,
    );
    const a = this.store.create(this.id, dir, name, S_IFREG | mode, caller);
    if (size > 0)
      await writeAt(
        this.store,
        this.id,
        a.ino,
        0,
        this.rng.bytes(size),
        this.rng.pick([4096, 128 * 1024, MiB]),
      );
    return path;
  }

  addDir(dirPath: string): string {
    const path = joinPath(dirPath, this.freshName(dirPath));
    const mode = this.rng.pick(DIR_MODES);
    const caller = this.rng.pick(CALLERS);
    const { dir, name } = parentOf(this.store, this.id, path);
    this.note(`mkdir ${path} mode=${mode.toString(8)} owner=${caller.uid}:${caller.gid}`);
    this.store.mkdir(this.id, dir, name, mode, caller);
    return path;
  }

  addSymlink(dirPath: string, existing: readonly string[]): string {
    const path = joinPath(dirPath, this.freshName(dirPath));
    const target = this.rng.weighted<string>([
      [3, existing.length > 0 ? this.rng.pick(existing).slice(1) : 'a'],
      [2, existing.length > 0 ? this.rng.pick(existing) : '/a'],
      [1, '../nowhere/' + this.rng.pick(NAMES)],
      [1, '/etc/passwd'],
      [1, '..'],
    ]);
    const caller = this.rng.pick(CALLERS);
    const { dir, name } = parentOf(this.store, this.id, path);
    this.note(`symlink ${path} -> ${target}`);
    this.store.symlink(this.id, dir, name, target, caller);
    return path;
  }

  addHardLink(filePath: string, dirPath: string): string {
    const path = joinPath(dirPath, this.freshName(dirPath));
    const ino = lookupPath(this.store, this.id, filePath).ino;
    const { dir, name } = parentOf(this.store, this.id, path);
    this.note(`link ${filePath} ${path}`);
    this.store.link(this.id, ino, dir, name);
    return path;
  }

  addDevice(dirPath: string): string {
    const path = joinPath(dirPath, this.freshName(dirPath));
    const { dir, name } = parentOf(this.store, this.id, path);
    if (this.rng.chance(0.5)) {
      this.note(`mkfifo ${path}`);
      this.store.mknod(this.id, dir, name, S_IFIFO | 0o644, 0, ROOT);
    } else {
      const rdev = makedev(this.rng.int(1, 300), this.rng.int(0, 600));
      this.note(`mknod ${path} char rdev=${rdev}`);
      this.store.mknod(this.id, dir, name, S_IFCHR | 0o600, rdev, ROOT);
    }
    return path;
  }

  setXattr(path: string, isFile: boolean): void {
    const ino = lookupPath(this.store, this.id, path).ino;
    if (isFile && this.rng.chance(0.3)) {
      this.note(`setxattr ${path} security.capability`);
      this.store.setxattr(this.id, ino, 'security.capability', this.rng.bytes(20));
      return;
    }
    const name = `user.${this.rng.pick(['k1', 'k2', 'mime', 'origin'])}`;
    const value = this.rng.bytes(this.rng.int(0, 40));
    this.note(`setxattr ${path} ${name} (${value.length} bytes)`);
    this.store.setxattr(this.id, ino, name, value);
  }

  async setTimes(path: string): Promise<void> {
    const mtime = this.timespec();
    this.note(`utimens ${path} mtime=${mtime.join('.')}`);
    await this.store.setattr(this.id, lookupPath(this.store, this.id, path).ino, {
      mtime,
      atime: this.timespec(),
    });
  }

  /** A base tree: directories, files (some over a chunk), symlinks, hard links, a fifo and a device. */
  async populate(options: RandomTreeOptions = {}): Promise<void> {
    const dirs = ['/'];
    for (let i = this.rng.int(4, 12); i > 0; i--) {
      const parent = this.rng.pick(dirs.filter((d) => d.split('/').length <= 4));
      dirs.push(this.addDir(parent));
    }
    const files: string[] = [];
    for (let i = this.rng.int(8, 25); i > 0; i--)
      files.push(await this.addFile(this.rng.pick(dirs)));
    for (let i = this.rng.int(1, options.bigFiles ?? 2); i > 0; i--) {
      files.push(await this.addFile(this.rng.pick(dirs), this.rng.int(MiB + 1, 3 * MiB)));
    }
    for (let i = this.rng.int(1, 4); i > 0; i--) this.addSymlink(this.rng.pick(dirs), files);
    for (let i = this.rng.int(0, 3); i > 0; i--)
      files.push(this.addHardLink(this.rng.pick(files), this.rng.pick(dirs)));
    this.addDevice(this.rng.pick(dirs));
    this.addDevice(this.rng.pick(dirs));
    for (const f of files) {
      if (this.rng.chance(0.2)) this.setXattr(f, true);
      if (this.rng.chance(0.3)) await this.setTimes(f);
    }
    for (const d of dirs.slice(1)) if (this.rng.chance(0.2)) this.setXattr(d, false);
  }

  /** `count` random mutations of every kind a container makes. */
  async mutate(count: number): Promise<void> {
    for (let i = 0; i < count; i++) await this.mutateOnce();
  }

  private async mutateOnce(): Promise<void> {
    const { store, id, rng } = this;
    const tree = await snapshotTree(store, id, { content: false });
    const nodes = [...tree.values()].filter((n) => n.path !== '/');
    const dirs = [...tree.values()].filter((n) => n.type === 'dir');
    const subdirs = dirs.filter((n) => n.path !== '/');
    const files = nodes.filter((n) => n.type === 'file');
    const nondirs = nodes.filter((n) => n.type !== 'dir');
    const within = (p: string, d: string) => p === d || p.startsWith(d + '/');
    type Op = () => Promise<void> | void;
    const choices: Array<[number, Op]> = [
      [8, () => this.addFile(rng.pick(dirs).path).then(() => undefined)],
      [3, () => void this.addDir(rng.pick(dirs).path)],
      [
        3,
        () =>
          void this.addSymlink(
            rng.pick(dirs).path,
            nondirs.map((n) => n.path),
          ),
      ],
      [1, () => void this.addDevice(rng.pick(dirs).path)],
    ];
    if (files.length > 0) {
      choices.push(
        [
          8,
          async () => {
            const f = rng.pick(files);
            const len = rng.int(1, 8192);
            const off =
              f.size > MiB && rng.chance(0.7) ? rng.int(MiB - 4096, f.size) : rng.int(0, f.size);
            this.note(`write ${f.path} off=${off} len=${len}`);
            await store.write(id, f.ino, off, rng.bytes(len));
          },
        ],
        [
          4,
          async () => {
            const f = rng.pick(files);
            const len = rng.int(1, 20_000);
            this.note(`append ${f.path} off=${f.size} len=${len}`);
            await writeAt(store, id, f.ino, f.size, rng.bytes(len));
          },
        ],
        [
          4,
          async () => {
            const f = rng.pick(files);
            const size = rng.int(0, Math.floor(f.size * 1.5) + 100);
            this.note(`truncate ${f.path} ${f.size} -> ${size}`);
            await store.setattr(id, f.ino, { size });
          },
        ],
        [4, () => void this.addHardLink(rng.pick(files).path, rng.pick(dirs).path)],
      );
    }
    if (nondirs.length > 0) {
      choices.push(
        [
          5,
          () => {
            const n = rng.pick(nondirs);
            const { dir, name } = parentOf(store, id, n.path);
            this.note(`unlink ${n.path}`);
            store.unlink(id, dir, name);
          },
        ],
        [5, () => this.renameNonDir(rng.pick(nondirs), dirs, tree)],
        [
          3,
          async () => {
            const n = rng.pick(nondirs);
            const { dir, name } = parentOf(store, id, n.path);
            this.note(`replace ${n.path} (${n.type}) with a directory`);
            store.unlink(id, dir, name);
            store.mkdir(id, dir, name, rng.pick(DIR_MODES), rng.pick(CALLERS));
            if (rng.chance(0.5)) await this.addFile(n.path);
          },
        ],
      );
    }
    if (subdirs.length > 0) {
      choices.push(
        [
          4,
          () => {
            const d = rng.pick(subdirs);
            this.note(`rm -rf ${d.path}`);
            removeTree(store, id, d.path);
          },
        ],
        [
          4,
          () => {
            const d = rng.pick(subdirs);
            const targets = dirs.filter((t) => !within(t.path, d.path));
            const to = rng.pick(targets).path;
            const newPath = joinPath(to, this.freshName(to));
            const from = parentOf(store, id, d.path);
            const dest = parentOf(store, id, newPath);
            this.note(`rename dir ${d.path} -> ${newPath}`);
            store.rename(id, from.dir, from.name, dest.dir, dest.name);
          },
        ],
        [
          3,
          async () => {
            const d = rng.pick(subdirs);
            this.note(`replace directory ${d.path} with a file`);
            removeTree(store, id, d.path);
            const { dir, name } = parentOf(store, id, d.path);
            const a = store.create(
              id,
              dir,
              name,
              S_IFREG | rng.pick(FILE_MODES),
              rng.pick(CALLERS),
            );
            await writeAt(store, id, a.ino, 0, rng.bytes(this.smallSize()));
          },
        ],
        [
          3,
          async () => {
            const d = rng.pick(subdirs);
            this.note(`rm -rf ${d.path} and mkdir it again`);
            removeTree(store, id, d.path);
            const { dir, name } = parentOf(store, id, d.path);
            store.mkdir(
              id,
              dir,
              name,
              rng.chance(0.5) ? d.mode & 0o7777 : rng.pick(DIR_MODES),
              ROOT,
            );
            if (rng.chance(0.7)) await this.addFile(d.path);
          },
        ],
      );
    }
    const chmodable = nodes.filter((m) => m.type !== 'symlink');
    const xattrable = nodes.filter((m) => m.type === 'file' || m.type === 'dir');
    if (chmodable.length > 0) {
      choices.push([
        4,
        async () => {
          const n = rng.pick(chmodable);
          const modes = n.type === 'dir' ? DIR_MODES : FILE_MODES;
          const mode = rng.pick(modes.filter((m) => m !== (n.mode & 0o7777)));
          this.note(`chmod ${n.path} ${(n.mode & 0o7777).toString(8)} -> ${mode.toString(8)}`);
          await store.setattr(id, n.ino, { mode });
        },
      ]);
    }
    if (xattrable.length > 0) {
      choices.push([
        5,
        () => {
          const n = rng.pick(xattrable);
          const names = Object.keys(n.xattrs);
          if (names.length > 0 && rng.chance(0.4)) {
            const name = rng.pick(names);
            this.note(`removexattr ${n.path} ${name}`);
            store.removexattr(id, n.ino, name);
          } else {
            this.setXattr(n.path, n.type === 'file');
          }
        },
      ]);
    }
    if (nodes.length > 0) {
      choices.push(
        [
          3,
          async () => {
            const n = rng.pick(nodes);
            const c = rng.pick(CALLERS.filter((x) => x.uid !== n.uid || x.gid !== n.gid));
            this.note(`chown ${n.path} ${n.uid}:${n.gid} -> ${c.uid}:${c.gid}`);
            await store.setattr(id, n.ino, { uid: c.uid, gid: c.gid });
          },
        ],
        [3, () => this.setTimes(rng.pick(nodes).path)],
      );
    }
    await rng.weighted(choices)();
  }

  private renameNonDir(
    n: NodeSnapshot,
    dirs: readonly NodeSnapshot[],
    tree: ReadonlyMap<string, NodeSnapshot>,
  ): void {
    const { store, id, rng } = this;
    const to = rng.pick(dirs).path;
    // Sometimes over an existing non-directory (never another link of the same node: a no-op in POSIX).
    const victims = [...tree.values()].filter(
      (m) =>
        m.type !== 'dir' && m.ino !== n.ino && m.path.slice(0, m.path.lastIndexOf('/') || 1) === to,
    );
    const newPath =
      victims.length > 0 && rng.chance(0.4)
        ? rng.pick(victims).path
        : joinPath(to, this.freshName(to));
    const from = parentOf(store, id, n.path);
    const dest = parentOf(store, id, newPath);
    this.note(`rename ${n.path} -> ${newPath}`);
    store.rename(id, from.dir, from.name, dest.dir, dest.name);
  }
}
