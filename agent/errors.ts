/**
 * Errors the agent reports at start and stop. Each has a stable `code` an operator can search
 * for; the message says what to fix.
 */
export type AgentErrorCode =
  | 'LCFS_ECONFIG_INVALID'
  | 'LCFS_ECONFIG_UNKNOWN_KEY'
  | 'LCFS_ECONFIG_FILE'
  | 'LCFS_EDATADIR_LOCKED'
  | 'LCFS_EDATADIR_CONTENDED';

export class AgentError extends Error {
  readonly code: AgentErrorCode;

  constructor(code: AgentErrorCode, message: string) {
    super(message);
    this.name = 'AgentError';
    this.code = code;
  }
}
