import { pino, type Logger } from 'pino';
import type { LogLevel } from './config.js';

export type { Logger };

/**
 * The agent's root logger: JSON lines on stdout, which systemd's journal or the install
 * script's log file collects. Components log through `logger.child({ component })`.
 * Writes are asynchronous so a slow reader never blocks the event loop that serves FUSE; pino
 * flushes what is pending when the process exits.
 */
export function createAgentLogger(level: LogLevel): Logger {
  return pino({
    name: 'lcfs',
    level,
    timestamp: pino.stdTimeFunctions.isoTime,
  });
}
