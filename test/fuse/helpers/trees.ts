/**
 * Real trees for the FUSE workload tests: a busybox rootfs and a seeded tree of many files, built
 * on the local disk (never on the mount), and a manifest of a tree for byte-for-byte comparison.
 */
import {
  chmod,
  chown,
  copyFile,
  lutimes,
  link,
  mkdir,
  symlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { SeededRandom } from '../../fs/helpers/prng.js';
import { PYTHON, py, run, shOk } from './shell.js';

/** Runs `fn` over `items` with at most `limit` in flight. */
export async function pool<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** A seeded timestamp in 2001–2023, with a fractional part (seconds). */
function oldTime(rng: SeededRandom): number {
  return rng.int(1_000_000_000, 1_700_000_000) + rng.int(0, 999_999) / 1e6;
}

/**
 * A busybox rootfs in `root`: bin/busybox and a symlink for every applet (`busybox --list-full`),
 * /etc/passwd and /etc/group, /tmp (1777) and /root. Every mtime is set to an old, fixed value.
 */
export async function buildBusyboxRootfs(root: string, rng: SeededRandom): Promise<number> {
  await mkdir(join(root, 'bin'), { recursive: true });
  await copyFile('/usr/bin/busybox', join(root, 'bin', 'busybox'));
  await chmod(join(root, 'bin', 'busybox'), 0o755);
  const applets = (await shOk('/usr/bin/busybox --list-full')).trim().split('\n');
  const paths = ['bin', 'bin/busybox'];
  for (const applet of applets) {
    if (applet === 'bin/busybox') continue;
    const dir = dirname(applet);
    await mkdir(join(root, dir), { recursive: true });
    await symlink(relative(dir, 'bin/busybox'), join(root, applet));
    paths.push(applet);
  }
  await mkdir(join(root, 'etc'), { recursive: true });
  await writeFile(
    join(root, 'etc', 'passwd'),
    'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\n',
  );
  await writeFile(join(root, 'etc', 'group'), 'root:x:0:\nuser:x:1000:\n');
  await mkdir(join(root, 'tmp'), { recursive: true });
  await chmod(join(root, 'tmp'), 0o1777);
  await mkdir(join(root, 'root'), { recursive: true });
  await chmod(join(root, 'root'), 0o700);
  // Old, fixed times for everything, deepest first so directories keep theirs.
  const all = (await shOk(`cd ${JSON.stringify(root)} && find . -mindepth 1 -depth -print0`))
    .split('\0')
    .filter(Boolean);
  for (const p of all) {
    const t = oldTime(rng);
    await lutimes(join(root, p), t, t);
  }
  return applets.length;
}

export interface GeneratedTree {
  /** Regular files with one name, no xattrs: safe targets for modifications. Relative to the tree root. */
  plainFiles: string[];
  /** Files of at least 1 MiB among plainFiles. */
  bigFiles: string[];
  dirs: string[];
  files: number;
  bytes: number;
}

/**
 * A seeded tree under `root/<top>`: `fileCount` regular files of various sizes (some with
 * duplicate content) in nested directories, plus symlinks, hard links, FIFOs and xattrs, with
 * various modes, owners and old mtimes.
 */
export async function buildGeneratedTree(
  root: string,
  top: string,
  fileCount: number,
  rng: SeededRandom,
): Promise<GeneratedTree> {
  const dirs = [top];
  const depth = new Map([[top, 0]]);
  for (let i = 0; i < Math.ceil(fileCount / 25); i++) {
    const candidates = dirs.filter((d) => depth.get(d)! < 6);
    const parent = rng.pick(candidates);
    const d = `${parent}/d${i}`;
    dirs.push(d);
    depth.set(d, depth.get(parent)! + 1);
  }
  for (const d of dirs) await mkdir(join(root, d), { recursive: true });

  const files: {
    path: string;
    size: number;
    mode: number;
    uid: number;
    gid: number;
    dup?: number;
  }[] = [];
  let bytes = 0;
  for (let i = 0; i < fileCount; i++) {
    const size = rng.weighted<() => number>([
      [4, () => 0],
      [70, () => rng.int(1, 4096)],
      [23, () => rng.int(4097, 16_384)],
      [2.8, () => rng.int(16_385, 262_144)],
      [0.2, () => rng.int(1 << 20, (5 << 20) / 2)],
    ])();
    const dup = i > 10 && rng.chance(0.05) ? rng.int(0, i - 1) : undefined;
    const ext = rng.pick(['bin', 'txt', 'so', 'json', 'py']);
    const f = {
      path: `${rng.pick(dirs)}/f${i}.${ext}`,
      size: dup === undefined ? size : files[dup].size,
      mode: rng.weighted([
        [60, 0o644],
        [20, 0o755],
        [8, 0o600],
        [6, 0o444],
        [5, 0o640],
        [1, 0o4755],
      ]),
      uid: rng.weighted([
        [85, 0],
        [8, 1000],
        [4, 65534],
        [3, 4242],
      ]),
      gid: 0,
      dup,
    };
    f.gid =
      f.uid === 0
        ? rng.weighted([
            [90, 0],
            [10, 42],
          ])
        : f.uid;
    files.push(f);
    bytes += f.size;
  }
  const seeds = files.map(() => rng.int(0, 0x7fffffff));
  await pool(files, 16, async (f, i) => {
    const content = new SeededRandom(seeds[f.dup ?? i]).bytes(f.size);
    const p = join(root, f.path);
    await writeFile(p, content);
    await chown(p, f.uid, f.gid);
    await chmod(p, f.mode);
  });

  const special = new Set<string>();
  // Hard links (tar restores them with link()).
  for (let i = 0; i < 60; i++) {
    const target = rng.pick(files);
    const name = `${rng.pick(dirs)}/hl${i}`;
    await link(join(root, target.path), join(root, name));
    special.add(target.path);
  }
  // Symlinks, relative and absolute, some dangling.
  for (let i = 0; i < 150; i++) {
    const from = rng.pick(dirs);
    const target = rng.chance(0.1) ? `missing-${i}` : relative(from, rng.pick(files).path);
    await symlink(rng.chance(0.1) ? `/${target}` : target, join(root, from, `sl${i}`));
  }
  const fifos: string[] = [];
  for (let i = 0; i < 5; i++) fifos.push(`${rng.pick(dirs)}/fifo${i}`);
  await run(['mkfifo', ...fifos.map((p) => join(root, p))]);
  // user.* xattrs on some files and directories.
  const withXattrs = [
    ...Array.from({ length: 30 }, () => rng.pick(files).path),
    ...Array.from({ length: 5 }, () => rng.pick(dirs)),
  ];
  for (const p of withXattrs) special.add(p);
  await py(
    [
      'import json',
      `root = ${JSON.stringify(root)}`,
      `for i, p in enumerate(${JSON.stringify(withXattrs)}):`,
      "    os.setxattr(os.path.join(root, p), 'user.lcfs.test', ('value-%d' % i).encode())",
      "    os.setxattr(os.path.join(root, p), 'user.bin', bytes(range(i, i + 40)))",
    ].join('\n'),
  );
  // Old times for every node, deepest first so directory times stick.
  const all = (
    await shOk(`cd ${JSON.stringify(root)} && find ${JSON.stringify(top)} -depth -print0`)
  )
    .split('\0')
    .filter(Boolean);
  await pool(all, 16, async (p) => {
    const t = oldTime(rng);
    await lutimes(join(root, p), t, t);
  });
  await utimes(join(root, top), 1_234_567_890.5, 1_234_567_890.5);

  const plainFiles = files.filter((f) => !special.has(f.path)).map((f) => f.path);
  const plainSet = new Set(plainFiles);
  return {
    plainFiles,
    bigFiles: files.filter((f) => f.size >= 1 << 20 && plainSet.has(f.path)).map((f) => f.path),
    dirs,
    files: files.length,
    bytes,
  };
}

/**
 * A manifest of the tree at `root`: one line per node, sorted by path, with type, mode, owner,
 * nlink, mtime (ns), size and sha256 for files, the target for symlinks, device numbers, user.*
 * xattrs, and for hard links the first path of the same inode. Directory sizes are left out
 * (ext4 and lcfs count them differently).
 */
export async function manifest(root: string): Promise<string[]> {
  const script = String.raw`
import os, sys, hashlib, stat
root = sys.argv[1]
paths = ['.']
for d, dirs, files in os.walk(root):
    rel = os.path.relpath(d, root)
    for n in dirs + files:
        paths.append(os.path.normpath(os.path.join(rel, n)))
paths.sort()
first = {}
for p in paths:
    st = os.lstat(os.path.join(root, p))
    if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
        first.setdefault(st.st_ino, p)
for p in paths:
    full = os.path.join(root, p)
    st = os.lstat(full)
    m = st.st_mode
    f = [p, oct(m), str(st.st_uid), str(st.st_gid), str(st.st_nlink), str(st.st_mtime_ns)]
    if stat.S_ISREG(m):
        h = hashlib.sha256()
        with open(full, 'rb') as fh:
            while True:
                b = fh.read(1 << 20)
                if not b:
                    break
                h.update(b)
        f += [str(st.st_size), h.hexdigest()]
        if st.st_nlink > 1:
            f.append('link=' + first[st.st_ino])
    elif stat.S_ISLNK(m):
        f += [str(st.st_size), '->' + os.readlink(full)]
    elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
        f.append('dev=%d,%d' % (os.major(st.st_rdev), os.minor(st.st_rdev)))
    names = sorted(n for n in os.listxattr(full, follow_symlinks=False) if n.startswith('user.'))
    for n in names:
        f.append('%s=%s' % (n, os.getxattr(full, n, follow_symlinks=False).hex()))
    print('|'.join(f))
`;
  const r = await run([PYTHON, '-c', script, root], { timeoutMs: 120_000 });
  if (r.code !== 0) throw new Error(`manifest of ${root} failed: ${r.stderr}`);
  return r.stdout.trimEnd().split('\n');
}

/** The lines of `a` and `b` that differ, for an assertion message (at most `max` each). */
export function manifestDiff(a: string[], b: string[], max = 20): string {
  const sa = new Set(a);
  const sb = new Set(b);
  const onlyA = a.filter((l) => !sb.has(l));
  const onlyB = b.filter((l) => !sa.has(l));
  return (
    `${onlyA.length} line(s) only in the first, ${onlyB.length} only in the second\n` +
    onlyA
      .slice(0, max)
      .map((l) => `- ${l}`)
      .join('\n') +
    '\n' +
    onlyB
      .slice(0, max)
      .map((l) => `+ ${l}`)
      .join('\n')
  );
}
