/**
 * Every failure the store reports is a StoreError: a stable `code` that users can search for,
 * the POSIX errno name that FUSE and the engine adapters translate it into, and a message that
 * names the layer, inode or tar entry at fault.
 */
export type Errno =
  | 'ENOENT'
  | 'EEXIST'
  | 'ENOTDIR'
  | 'EISDIR'
  | 'ENOTEMPTY'
  | 'EROFS'
  | 'EINVAL'
  | 'EBUSY'
  | 'EXDEV'
  | 'ENODATA'
  | 'ENAMETOOLONG'
  | 'EPERM'
  | 'ELOOP'
  | 'EIO'
  | 'EFBIG'
  | 'ENOSPC';

export type StoreErrorCode =
  | 'LCFS_ELAYER_NOT_FOUND'
  | 'LCFS_ELAYER_EXISTS'
  | 'LCFS_ELAYER_FROZEN'
  | 'LCFS_ELAYER_HAS_CHILDREN'
  | 'LCFS_ELAYER_IN_USE'
  | 'LCFS_ELAYER_BAD_ID'
  | 'LCFS_EPARENT_MISMATCH'
  | 'LCFS_ENODE'
  | 'LCFS_ETAR_UNSAFE'
  | 'LCFS_ETAR_INVALID'
  | 'LCFS_ESTORE_CLOSED'
  | 'LCFS_EMOUNT'
  | 'LCFS_EQUOTA'
  | 'LCFS_ESTORE_CORRUPT';

export class StoreError extends Error {
  readonly code: StoreErrorCode;
  readonly errno: Errno;

  constructor(code: StoreErrorCode, errno: Errno, message: string) {
    super(message);
    this.name = 'StoreError';
    this.code = code;
    this.errno = errno;
  }
}

/**
 * A POSIX failure on a node: the message carries the operation and the name. These are answers
 * (a lookup of a missing name, a missing xattr), raised thousands of times a second under FUSE,
 * so they skip the stack trace, which costs more than the operation itself.
 */
export function nodeError(errno: Errno, message: string): StoreError {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return new StoreError('LCFS_ENODE', errno, `${errno}: ${message}`);
  } finally {
    Error.stackTraceLimit = limit;
  }
}

export function isStoreError(err: unknown, errno?: Errno): err is StoreError {
  return err instanceof StoreError && (errno === undefined || err.errno === errno);
}
