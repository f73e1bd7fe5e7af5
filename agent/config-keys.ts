import { dirname, resolve } from 'node:path';

/**
 * The kinds of configuration key: how each kind parses a raw value (from the file, the
 * environment or a flag) and says why one is invalid. `config.ts` builds its schema from these.
 */

/** Where a value came from; error messages name it so an operator knows what to fix. */
export type ConfigSource =
  { kind: 'file'; path: string } | { kind: 'env'; name: string } | { kind: 'flag'; name: string };

export interface KeySpec<T> {
  readonly description: string;
  /** The default as help text shows it. */
  readonly defaultText: string;
  /** Turns a raw value into a typed one, or returns the reason it is invalid. */
  parse(raw: unknown, source: ConfigSource): { value: T } | { invalid: string };
  /** The value when no source sets the key; it may read keys listed before it in the schema. */
  fallback(resolvedSoFar: Readonly<Record<string, unknown>>): T;
}

/** A path; relative paths are taken from the config file's folder, or else the working dir. */
export function pathKey(
  description: string,
  defaultText: string,
  fallback: KeySpec<string>['fallback'],
): KeySpec<string> {
  return {
    description,
    defaultText,
    fallback,
    parse(raw, source) {
      if (typeof raw !== 'string' || raw.trim() === '') {
        return { invalid: 'must be a non-empty path' };
      }
      const base = source.kind === 'file' ? dirname(source.path) : process.cwd();
      return { value: resolve(base, raw) };
    },
  };
}

export function enumKey<const T extends string>(
  description: string,
  allowed: readonly T[],
  fallback: T,
): KeySpec<T> {
  return {
    description,
    defaultText: fallback,
    fallback: () => fallback,
    parse(raw) {
      const found = allowed.find((choice) => choice === raw);
      return found === undefined
        ? { invalid: `must be one of ${allowed.join(',')}` }
        : { value: found };
    },
  };
}

/** An integer; env and flag values arrive as strings, the file may hold a number or a string. */
export function integerKey(
  description: string,
  min: number,
  max: number,
  fallback: number,
): KeySpec<number> {
  return {
    description,
    defaultText: String(fallback),
    fallback: () => fallback,
    parse(raw) {
      const value =
        typeof raw === 'number'
          ? raw
          : typeof raw === 'string' && /^-?\d+$/.test(raw.trim())
            ? Number(raw)
            : NaN;
      if (!Number.isSafeInteger(value) || value < min || value > max) {
        return { invalid: `must be an integer from ${min} to ${max}` };
      }
      return { value };
    },
  };
}

/** A `host:port` to listen on; an empty string turns the listener off. */
export function addressKey(description: string, fallback: string): KeySpec<string> {
  return {
    description,
    defaultText: fallback === '' ? '(off)' : fallback,
    fallback: () => fallback,
    parse(raw) {
      if (raw === '') return { value: '' };
      if (typeof raw !== 'string' || !/^[^\s:]+:\d{1,5}$/.test(raw.trim())) {
        return { invalid: 'must be host:port, or empty to turn it off' };
      }
      const port = Number(raw.trim().split(':')[1]);
      return port > 65535 ? { invalid: 'must have a port up to 65535' } : { value: raw.trim() };
    },
  };
}

/**
 * A list: a JSON array of strings in the file, or comma-separated text in env and flags. Each
 * item is checked by `item`, which returns the reason it is invalid.
 */
export function listKey(
  description: string,
  fallback: readonly string[],
  item: (value: string) => string | undefined,
): KeySpec<readonly string[]> {
  return {
    description,
    defaultText: fallback.length === 0 ? '(none)' : fallback.join(','),
    fallback: () => fallback,
    parse(raw) {
      const items =
        typeof raw === 'string'
          ? raw
              .split(',')
              .map((part) => part.trim())
              .filter((part) => part !== '')
          : raw;
      if (!Array.isArray(items) || !items.every((entry) => typeof entry === 'string')) {
        return { invalid: 'must be a list of strings (JSON array, or comma-separated)' };
      }
      for (const entry of items) {
        const reason = item(entry);
        if (reason !== undefined) return { invalid: `has an invalid item "${entry}": ${reason}` };
      }
      return { value: items };
    },
  };
}

export function booleanKey(description: string, fallback: boolean): KeySpec<boolean> {
  return {
    description,
    defaultText: String(fallback),
    fallback: () => fallback,
    parse(raw) {
      if (raw === true || raw === 'true') return { value: true };
      if (raw === false || raw === 'false') return { value: false };
      return { invalid: 'must be true or false' };
    },
  };
}

/** A string matching `pattern`. */
export function patternKey(
  description: string,
  fallback: string,
  pattern: RegExp,
  invalid: string,
): KeySpec<string> {
  return {
    description,
    defaultText: fallback,
    fallback: () => fallback,
    parse: (raw) => (typeof raw === 'string' && pattern.test(raw) ? { value: raw } : { invalid }),
  };
}

/** An optional path: empty means unset. */
export function optionalPathKey(description: string): KeySpec<string> {
  const path = pathKey(description, '(none)', () => '');
  return {
    ...path,
    parse: (raw, source) => (raw === '' ? { value: '' } : path.parse(raw, source)),
  };
}

export function urlReason(value: string): string | undefined {
  try {
    const url = new URL(value);
    return url.protocol === 'http:' || url.protocol === 'https:' ? undefined : 'not http(s)';
  } catch {
    return 'not a URL';
  }
}
