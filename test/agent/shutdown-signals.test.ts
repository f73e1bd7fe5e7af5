import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { pino } from 'pino';
import { onShutdownSignals } from '../../agent/shutdown-signals.js';

describe('shutdown signals', () => {
  const silentLog = pino({ level: 'silent' });

  function watch(): { source: EventEmitter; shutdowns: string[]; forcedExits: number[] } {
    const source = new EventEmitter();
    const shutdowns: string[] = [];
    const forcedExits: number[] = [];
    onShutdownSignals(source, silentLog, {
      shutdown: (signal) => shutdowns.push(signal),
      forceExit: (code) => forcedExits.push(code),
    });
    return { source, shutdowns, forcedExits };
  }

  it('starts one clean shutdown on the first SIGTERM', () => {
    const { source, shutdowns, forcedExits } = watch();
    source.emit('SIGTERM', 'SIGTERM');
    assert.deepEqual(shutdowns, ['SIGTERM']);
    assert.deepEqual(forcedExits, []);
  });

  it('treats SIGINT like SIGTERM', () => {
    const { source, shutdowns } = watch();
    source.emit('SIGINT', 'SIGINT');
    assert.deepEqual(shutdowns, ['SIGINT']);
  });

  it('forces an exit with 128 + signal number on a second signal', () => {
    const { source, shutdowns, forcedExits } = watch();
    source.emit('SIGTERM', 'SIGTERM');
    source.emit('SIGINT', 'SIGINT');
    source.emit('SIGTERM', 'SIGTERM');
    assert.deepEqual(shutdowns, ['SIGTERM']);
    assert.deepEqual(forcedExits, [130, 143]);
  });
});
