/** Assertions on the StoreError a LayerStore call fails with (sync throw or rejected promise). */
import assert from 'node:assert/strict';
import { StoreError, type Errno, type StoreErrorCode } from '../../../fs/errors.js';

export interface ExpectedStoreError {
  /** The errno, or any of several. */
  errno?: Errno | readonly Errno[];
  /** The code, or any of several. */
  code?: StoreErrorCode | readonly StoreErrorCode[];
  /** Each string must occur in the message verbatim; each RegExp must match it. */
  message?: string | RegExp | ReadonlyArray<string | RegExp>;
}

function asList<T>(v: T | readonly T[] | undefined): readonly T[] | undefined {
  if (v === undefined) return undefined;
  return Array.isArray(v) ? (v as readonly T[]) : [v as T];
}

export function describeError(err: unknown): string {
  if (err instanceof StoreError)
    return `StoreError code=${err.code} errno=${err.errno} message=${JSON.stringify(err.message)}`;
  if (err instanceof Error)
    return `${err.constructor.name} ${JSON.stringify(err.message)} (code=${(err as NodeJS.ErrnoException).code})`;
  return `non-error ${String(err)}`;
}

/** Runs `fn`; asserts it fails with a StoreError matching `expected`; returns that error. */
export async function expectStoreError(
  what: string,
  fn: () => unknown,
  expected: ExpectedStoreError = {},
): Promise<StoreError> {
  let err: unknown;
  let succeeded = false;
  try {
    await fn();
    succeeded = true;
  } catch (e) {
    err = e;
  }
  const want = JSON.stringify({
    errno: expected.errno,
    code: expected.code,
    message: String(expected.message ?? ''),
  });
  if (succeeded) assert.fail(`${what}: expected a StoreError ${want}, but it succeeded`);
  if (!(err instanceof StoreError))
    assert.fail(`${what}: expected a StoreError ${want}, got ${describeError(err)}`);
  const errnos = asList(expected.errno);
  if (errnos && !errnos.includes(err.errno)) {
    assert.fail(`${what}: expected errno ${errnos.join('|')}, got ${describeError(err)}`);
  }
  const codes = asList(expected.code);
  if (codes && !codes.includes(err.code)) {
    assert.fail(`${what}: expected code ${codes.join('|')}, got ${describeError(err)}`);
  }
  for (const m of asList(expected.message) ?? []) {
    const ok = typeof m === 'string' ? err.message.includes(m) : m.test(err.message);
    if (!ok)
      assert.fail(
        `${what}: expected the message to contain ${String(m)}, got ${describeError(err)}`,
      );
  }
  return err;
}
