/**
 * Errors of the cluster services. Each has a stable `code` an operator can search for; the
 * registry mirror maps them onto the OCI distribution error codes and HTTP statuses.
 */
export type ClusterErrorCode =
  | 'LCFS_EDIGEST_INVALID'
  | 'LCFS_EDIGEST_MISMATCH'
  | 'LCFS_EBLOB_UNKNOWN'
  | 'LCFS_EMANIFEST_UNKNOWN'
  | 'LCFS_EUPSTREAM'
  | 'LCFS_EUPSTREAM_UNREACHABLE'
  | 'LCFS_EACCESS_DENIED'
  | 'LCFS_EPEER'
  | 'LCFS_ECLUSTER_SECRET'
  | 'LCFS_EREGISTRY_AUTH';

export class ClusterError extends Error {
  readonly code: ClusterErrorCode;
  /** The upstream's HTTP status, when the error is an upstream's answer. */
  readonly status: number | undefined;
  /** The upstream's WWW-Authenticate challenge, passed on to a client it refused. */
  readonly challenge: string | undefined;

  constructor(code: ClusterErrorCode, message: string, status?: number, challenge?: string) {
    super(message);
    this.name = 'ClusterError';
    this.code = code;
    this.status = status;
    this.challenge = challenge;
  }
}

export function isClusterError(err: unknown, code?: ClusterErrorCode): err is ClusterError {
  return err instanceof ClusterError && (code === undefined || err.code === code);
}
