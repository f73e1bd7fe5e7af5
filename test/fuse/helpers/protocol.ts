/** The IPC messages between volume-process.ts (the test) and volume-server.ts (the mount). */

export interface WireError {
  name: string;
  message: string;
  stack?: string;
  code?: string;
  errno?: string | number;
}

export type ToChild = { type: 'call'; id: number; op: string; args: unknown[] };
export type FromChild =
  | { type: 'ready'; pid: number; mountpoint: string }
  | { type: 'fatal'; error: WireError }
  | { type: 'reply'; id: number; ok: true; result: unknown }
  | { type: 'reply'; id: number; ok: false; error: WireError };

export function toWire(err: unknown): WireError {
  if (!(err instanceof Error)) return { name: 'Error', message: String(err) };
  const e = err as Error & { code?: unknown; errno?: unknown };
  const out: WireError = { name: e.name, message: e.message, stack: e.stack };
  if (typeof e.code === 'string') out.code = e.code;
  if (typeof e.errno === 'string' || typeof e.errno === 'number') out.errno = e.errno;
  return out;
}

/** An Error again, carrying the remote `code` and `errno`, with both stacks. */
export function fromWire(
  w: WireError,
  context: string,
): Error & { code?: string; errno?: string | number } {
  const err = new Error(w.message) as Error & { code?: string; errno?: string | number };
  err.name = w.name;
  if (w.code !== undefined) err.code = w.code;
  if (w.errno !== undefined) err.errno = w.errno;
  err.stack = `${w.name}: ${w.message}\n    (in the volume process, ${context})\n${(w.stack ?? '').split('\n').slice(1).join('\n')}`;
  return err;
}
