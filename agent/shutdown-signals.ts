import { constants } from 'node:os';
import type { Logger } from './logger.js';

export const SHUTDOWN_SIGNALS = ['SIGTERM', 'SIGINT'] as const;
export type ShutdownSignal = (typeof SHUTDOWN_SIGNALS)[number];

/** Where signals come from: `process`, or an EventEmitter in unit tests. */
export interface SignalSource {
  on(event: ShutdownSignal, listener: (signal: ShutdownSignal) => void): unknown;
}

export interface ShutdownHandlers {
  /** Stops the agent cleanly; called once, on the first signal. */
  shutdown(signal: ShutdownSignal): void;
  /** Ends the process at once; called on a second signal while shutdown is under way. */
  forceExit(exitCode: number): void;
}

/**
 * The first SIGTERM or SIGINT starts a clean shutdown. A second one means the operator will not
 * wait (or shutdown is stuck): exit at once with 128 + the signal number, as a shell reports it.
 */
export function onShutdownSignals(
  source: SignalSource,
  log: Logger,
  handlers: ShutdownHandlers,
): void {
  let received: ShutdownSignal | undefined;
  for (const name of SHUTDOWN_SIGNALS) {
    source.on(name, (signal) => {
      if (received === undefined) {
        received = signal;
        log.info({ signal }, 'shutdown requested');
        handlers.shutdown(signal);
        return;
      }
      log.warn({ signal, first: received }, 'second signal during shutdown: forcing exit');
      handlers.forceExit(128 + constants.signals[signal]);
    });
  }
}
