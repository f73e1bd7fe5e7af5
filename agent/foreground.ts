import { startAgent } from './agent.js';
import type { AgentConfig } from './config.js';
import { createAgentLogger } from './logger.js';
import { onShutdownSignals } from './shutdown-signals.js';

/** Exit codes of `lcfs agent`; a forced exit uses 128 + the signal number. */
export const EXIT_OK = 0;
export const EXIT_FAILED = 1;

// Longest delay setInterval accepts; the timer only keeps the event loop alive.
const KEEP_ALIVE_MS = 2 ** 31 - 1;

/**
 * Runs the agent as the process's main job: starts it, keeps the process alive, and stops it on
 * SIGTERM or SIGINT. This function owns the process's exit; it resolves once the agent has
 * started (or never, if start fails and the process exits).
 */
export async function runAgentInForeground(config: AgentConfig): Promise<void> {
  const logger = createAgentLogger(config.logLevel);
  const log = logger.child({ component: 'agent' });
  const keepAlive = setInterval(() => {}, KEEP_ALIVE_MS);

  const exit = (code: number): void => {
    clearInterval(keepAlive);
    // pino flushes pending log lines in its exit handler.
    process.exit(code);
  };

  process.on('uncaughtException', (err) => {
    log.fatal({ err }, 'uncaught exception');
    exit(EXIT_FAILED);
  });
  process.on('unhandledRejection', (reason) => {
    log.fatal({ err: reason }, 'unhandled promise rejection');
    exit(EXIT_FAILED);
  });

  const starting = startAgent(config, logger);

  // A signal during start waits for start to finish, then stops what was started.
  onShutdownSignals(process, log, {
    shutdown: () => {
      starting
        .then((agent) => agent.stop())
        .then(
          () => exit(EXIT_OK),
          (err: unknown) => {
            log.error({ err }, 'agent did not stop cleanly');
            exit(EXIT_FAILED);
          },
        );
    },
    forceExit: exit,
  });

  try {
    await starting;
  } catch (err) {
    log.fatal({ err }, 'agent failed to start');
    exit(EXIT_FAILED);
  }
}
