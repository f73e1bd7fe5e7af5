/**
 * stat(2) vocabulary the engine tests share: file type bits, special permission bits, the glibc
 * dev_t encoding and the callers nodes are created as.
 */
import type { Caller } from '../../../fs/types.js';

export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;

export const S_ISUID = 0o4000;
export const S_ISGID = 0o2000;
export const S_ISVTX = 0o1000;

export type NodeType = 'dir' | 'file' | 'symlink' | 'fifo' | 'char' | 'block' | 'socket';

export function nodeType(mode: number): NodeType {
  switch (mode & S_IFMT) {
    case S_IFDIR:
      return 'dir';
    case S_IFREG:
      return 'file';
    case S_IFLNK:
      return 'symlink';
    case S_IFIFO:
      return 'fifo';
    case S_IFCHR:
      return 'char';
    case S_IFBLK:
      return 'block';
    case S_IFSOCK:
      return 'socket';
    default:
      throw new Error(`mode ${mode.toString(8)} has no known file type`);
  }
}

/** Permission and special bits only. */
export function perm(mode: number): number {
  return mode & 0o7777;
}

/** glibc's makedev(3): st_rdev as stat(2) reports it (and as the kernel's new_encode_dev for small numbers). */
export function makedev(major: number, minor: number): number {
  const lowMajor = major % 0x1000;
  const highMajor = Math.floor(major / 0x1000);
  const lowMinor = minor % 0x100;
  const highMinor = Math.floor(minor / 0x100);
  return highMajor * 2 ** 44 + highMinor * 2 ** 20 + lowMajor * 2 ** 8 + lowMinor;
}

export function major(dev: number): number {
  return (Math.floor(dev / 2 ** 8) % 0x1000) + Math.floor(dev / 2 ** 44) * 0x1000;
}

export function minor(dev: number): number {
  return (dev % 0x100) + (Math.floor(dev / 2 ** 20) % 2 ** 24) * 0x100;
}

export const ROOT: Caller = { uid: 0, gid: 0 };

export function fmtMode(mode: number): string {
  return '0' + mode.toString(8);
}
