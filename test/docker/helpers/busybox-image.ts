/**
 * A busybox base image built on the host, with no registry: a rootfs folder with /bin/busybox
 * and a symlink for each applet of `busybox --list-full`, /etc/passwd and /etc/group holding
 * root and the user `app` (uid 1000, gid 1000, home /home/app owned 1000:1000), tarred with
 * numeric owners and xattrs, then `docker import`ed.
 */
import { chmod, chown, copyFile, mkdir, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Dockerd } from './dockerd.js';
import { execOk } from './exec.js';

export const BUSYBOX = '/bin/busybox';

export const PASSWD = 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n';
export const GROUP = 'root:x:0:\napp:x:1000:\n';
export const APP = { uid: 1000, gid: 1000, home: '/home/app' };

/** Applet paths relative to /, e.g. `usr/bin/sha256sum`; /bin/busybox itself excluded. */
export async function appletPaths(): Promise<string[]> {
  const out = await execOk([BUSYBOX, '--list-full']);
  return out
    .split('\n')
    .filter((p) => p.includes('/') && p !== 'bin/busybox')
    .sort();
}

/** Fills `rootfs` (an empty folder) with the busybox tree. */
export async function makeBusyboxRootfs(rootfs: string): Promise<void> {
  for (const dir of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc', 'home', 'dev', 'proc', 'sys'])
    await mkdir(join(rootfs, dir), { recursive: true, mode: 0o755 });
  await copyFile(BUSYBOX, join(rootfs, 'bin/busybox'));
  await chmod(join(rootfs, 'bin/busybox'), 0o755);
  for (const applet of await appletPaths()) {
    await mkdir(dirname(join(rootfs, applet)), { recursive: true, mode: 0o755 });
    await symlink('/bin/busybox', join(rootfs, applet));
  }
  await writeFile(join(rootfs, 'etc/passwd'), PASSWD, { mode: 0o644 });
  await writeFile(join(rootfs, 'etc/group'), GROUP, { mode: 0o644 });
  await mkdir(join(rootfs, 'root'), { mode: 0o700 });
  await chmod(join(rootfs, 'root'), 0o700);
  await mkdir(join(rootfs, 'tmp'));
  await chmod(join(rootfs, 'tmp'), 0o1777);
  await mkdir(join(rootfs, 'home/app'), { mode: 0o755 });
  await chown(join(rootfs, 'home/app'), APP.uid, APP.gid);
}

/** Tars `rootfs` with numeric owners and its security.* xattrs (PAX SCHILY.xattr records). */
export async function tarRootfs(rootfs: string, tarPath: string): Promise<void> {
  await execOk([
    'tar',
    '--numeric-owner',
    '--xattrs',
    '--xattrs-include=security.*',
    '-C',
    rootfs,
    '-cf',
    tarPath,
    '.',
  ]);
}

/** `docker import` of a rootfs tar; resolves to the image id. */
export async function importImage(d: Dockerd, tarPath: string, tag: string): Promise<string> {
  const out = await d.docker(['import', tarPath, tag]);
  return out.trim();
}
