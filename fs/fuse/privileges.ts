import type { LayerStore } from '../layer-store.js';
import { S_ISGID } from '../records.js';

const S_ISUID = 0o4000;
const S_IXGRP = 0o010;
/** File capabilities: what `ping` and friends run with. */
const CAPABILITY_XATTR = 'security.capability';

/** Who sent a request: the caller's fsuid and fsgid. */
export interface Caller {
  uid: number;
  gid: number;
}

/**
 * What a write, truncate or chown takes away, as the VFS does on a local disk (the volume told
 * the kernel it handles this itself: FUSE_HANDLE_KILLPRIV_V2, see docs/fuse.md): the file's
 * capabilities always; and when the kernel asks on behalf of `killFor` (a chown, or a caller
 * without CAP_FSETID), the setuid bit, and the setgid bit if the file is group-executable or the
 * caller is outside its group. Only the caller's own gid is known, so a member through a
 * supplementary group loses a non-executable file's setgid bit where the VFS would keep it: the
 * safe side.
 *
 * Removes the capabilities at once; returns the mode without those bits if it must change.
 */
export function dropPrivileges(
  store: LayerStore,
  layer: string,
  ino: number,
  killFor: Caller | undefined,
): number | undefined {
  if (store.listxattr(layer, ino).includes(CAPABILITY_XATTR))
    store.removexattr(layer, ino, CAPABILITY_XATTR);
  if (!killFor) return undefined;
  const attr = store.getattr(layer, ino);
  const mode = attr.mode & 0o7777;
  const inGroup = killFor.uid === 0 || killFor.gid === attr.gid;
  let kept = mode & ~S_ISUID;
  if (mode & S_IXGRP || !inGroup) kept &= ~S_ISGID;
  return kept === mode ? undefined : kept;
}
