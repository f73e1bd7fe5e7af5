import { constants } from 'node:fs';
import {
  chmod,
  chown,
  copyFile,
  mkdir,
  open,
  readFile,
  realpath,
  rename,
  rm,
  stat,
} from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';

/**
 * Editing an engine's config file idempotently: read it, let the caller decide the new text, and
 * write only when the text changes: after a backup of the old file, atomically, keeping its
 * owner and mode. A command reads and plans every file it touches before it writes any, so a
 * file it refuses leaves the others untouched too.
 */

/** A file a setup command refuses to edit, with a stable code; the file is left as it was. */
export class SetupError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'SetupError';
  }
}

export interface ConfigFile {
  /** The file (the target of a symlink, if the path was one). */
  readonly path: string;
  /** Its text; null when there is no file. */
  readonly text: string | null;
  readonly owner?: { mode: number; uid: number; gid: number };
}

export async function readConfigFile(file: string): Promise<ConfigFile> {
  let path = resolve(file);
  try {
    path = await realpath(path);
    const st = await stat(path);
    if (!st.isFile()) throw new Error(`${path} is not a regular file`);
    const text = await readFile(path, 'utf8');
    return { path, text, owner: { mode: st.mode, uid: st.uid, gid: st.gid } };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    return { path, text: null };
  }
}

export interface WriteResult {
  /** False when the file already held the text. */
  readonly written: boolean;
  /** Where the previous file was copied to, when one was replaced. */
  readonly backup?: string;
}

/**
 * Writes `text` over `file` unless it already holds it. A file that existed is first copied to
 * `<path>.lcfs-backup-<time>`; a missing one is created, with its folder.
 */
export async function writeConfigFile(file: ConfigFile, text: string): Promise<WriteResult> {
  if (text === file.text) return { written: false };
  if (file.text === null) {
    await mkdir(dirname(file.path), { recursive: true, mode: 0o755 });
    await writeAtomically(file.path, text);
    return { written: true };
  }
  const backup = await backUp(file.path);
  await writeAtomically(file.path, text, file.owner);
  return { written: true, backup };
}

function stamp(date: Date): string {
  // 20261129-072100: sorts in time order, no characters a shell needs quoted.
  return date.toISOString().slice(0, 19).replace(/[-:]/g, '').replace('T', '-');
}

/** A free `<path>.lcfs-backup-<stamp>[.n]`, copied without ever overwriting one. */
async function backUp(path: string): Promise<string> {
  const base = `${path}.lcfs-backup-${stamp(new Date())}`;
  for (let n = 0; ; n++) {
    const candidate = n === 0 ? base : `${base}.${n}`;
    try {
      await copyFile(path, candidate, constants.COPYFILE_EXCL);
      return candidate;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
}

/** Writes through a temp file in the same folder, fsynced, then renamed over `path`. */
async function writeAtomically(
  path: string,
  text: string,
  like?: { mode: number; uid: number; gid: number },
): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.lcfs-${process.pid}.tmp`);
  const fh = await open(tmp, 'w', like ? like.mode & 0o7777 : 0o644);
  try {
    await fh.writeFile(text, 'utf8');
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    if (like) {
      await chmod(tmp, like.mode & 0o7777);
      await chown(tmp, like.uid, like.gid).catch(() => undefined);
    }
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  // The rename itself is durable once the folder is.
  const dir = await open(dirname(path), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}
