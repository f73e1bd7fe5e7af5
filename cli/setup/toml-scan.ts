/**
 * A TOML scanner for editing configuration files as text: it reads where each table starts, each
 * key's full dotted path and the span of each value, so that an edit can touch a few bytes and
 * keep an operator's comments, order and formatting. It never re-serializes a document.
 */

export class TomlScanError extends Error {
  constructor(
    readonly reason: string,
    readonly line: number,
    readonly column: number,
  ) {
    super(`line ${line}, column ${column}: ${reason}`);
    this.name = 'TomlScanError';
  }
}

/** A `key = value`, with the full dotted path of the key (its table's path first). */
export interface TomlAssignment {
  readonly path: readonly string[];
  /** The value's span in the text: [start, end). */
  readonly start: number;
  readonly end: number;
  /** 1-based line of the key. */
  readonly line: number;
  readonly kind: 'string' | 'inline-table' | 'array' | 'other';
  /** The value as written. */
  readonly raw: string;
  /** The decoded value, for strings. */
  readonly value?: string;
  /** Set inside an inline table `{ ... }`, and for dotted keys: no line can be added there. */
  readonly nested: boolean;
}

/** A `[table]` or `[[array.of.tables]]` header. */
export interface TomlHeader {
  readonly path: readonly string[];
  readonly array: boolean;
  readonly line: number;
  /** Offset just past the header's line (after its newline, or the end of the text). */
  readonly lineEnd: number;
}

export interface TomlScan {
  readonly headers: TomlHeader[];
  readonly assignments: TomlAssignment[];
}

const BARE_KEY = /[A-Za-z0-9_-]/;
const SCALAR = /[A-Za-z0-9_+\-.:]/;

/**
 * Reads the structure of a TOML document: headers and assignments with value spans. It accepts
 * what TOML 1.0 accepts (and TOML 1.1's multi-line inline tables); it does not check semantic
 * rules such as a key defined twice, which containerd's own parser reports.
 */
export function scanToml(text: string): TomlScan {
  const headers: TomlHeader[] = [];
  const assignments: TomlAssignment[] = [];
  // A byte order mark is not part of the document.
  let i = text.charCodeAt(0) === 0xfeff ? 1 : 0;
  let table: string[] = [];

  const lineStarts = [0];
  for (let k = 0; k < text.length; k++) if (text[k] === '\n') lineStarts.push(k + 1);
  const position = (at: number): { line: number; column: number } => {
    let lo = 0;
    let hi = lineStarts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (lineStarts[mid] <= at) lo = mid;
      else hi = mid - 1;
    }
    return { line: lo + 1, column: at - lineStarts[lo] + 1 };
  };
  const fail = (reason: string, at = i): never => {
    const { line, column } = position(at);
    throw new TomlScanError(reason, line, column);
  };
  const skipSpaces = (): void => {
    while (i < text.length && (text[i] === ' ' || text[i] === '\t')) i++;
  };
  const skipComment = (): void => {
    if (text[i] !== '#') return;
    while (i < text.length && text[i] !== '\n') {
      const code = text.charCodeAt(i);
      if ((code < 0x20 && code !== 0x09) || code === 0x7f) fail('control character in a comment');
      i++;
    }
  };
  /** Spaces, then an optional comment, then a newline or the end. */
  const endOfLine = (): void => {
    skipSpaces();
    skipComment();
    if (i >= text.length) return;
    if (text[i] === '\r' && text[i + 1] === '\n') i += 2;
    else if (text[i] === '\n') i++;
    else fail(`unexpected "${text[i]}" after a value or header`);
  };
  /** Spaces, comments and newlines: inside arrays (and TOML 1.1 inline tables). */
  const skipBlank = (): void => {
    for (;;) {
      skipSpaces();
      skipComment();
      if (text[i] === '\n') i++;
      else if (text[i] === '\r' && text[i + 1] === '\n') i += 2;
      else return;
    }
  };

  /** A basic string `"..."`, decoded; i is at the opening quote. */
  const basicString = (): string => {
    const open = i;
    i++;
    let out = '';
    for (;;) {
      if (i >= text.length || text[i] === '\n') fail('unterminated string', open);
      const c = text[i];
      if (c === '"') {
        i++;
        return out;
      }
      if (c === '\\') {
        const e = text[i + 1];
        const simple: Record<string, string> = {
          b: '\b',
          t: '\t',
          n: '\n',
          f: '\f',
          r: '\r',
          e: '\x1b',
          '"': '"',
          '\\': '\\',
        };
        if (e !== undefined && simple[e] !== undefined) {
          out += simple[e];
          i += 2;
          continue;
        }
        const digits = e === 'u' ? 4 : e === 'U' ? 8 : e === 'x' ? 2 : 0;
        const hex = text.slice(i + 2, i + 2 + digits);
        if (digits === 0 || !new RegExp(`^[0-9A-Fa-f]{${digits}}$`).test(hex))
          fail(`bad escape sequence in a string`);
        const code = parseInt(hex, 16);
        if (code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) fail('bad unicode escape');
        out += String.fromCodePoint(code);
        i += 2 + digits;
        continue;
      }
      const code = c.charCodeAt(0);
      if ((code < 0x20 && c !== '\t') || code === 0x7f) fail('control character in a string');
      out += c;
      i++;
    }
  };
  /** A literal string `'...'`; i is at the opening quote. */
  const literalString = (): string => {
    const open = i;
    const close = text.indexOf("'", i + 1);
    const newline = text.indexOf('\n', i + 1);
    if (close < 0 || (newline >= 0 && newline < close)) fail('unterminated string', open);
    const out = text.slice(i + 1, close);
    i = close + 1;
    return out;
  };
  /** A multi-line string `"""..."""` or `'''...'''`; i is at the first quote. */
  const multilineString = (quote: '"' | "'"): void => {
    const open = i;
    const fence = quote.repeat(3);
    i += 3;
    for (;;) {
      if (i >= text.length) fail('unterminated multi-line string', open);
      if (quote === '"' && text[i] === '\\') {
        i += 2;
        continue;
      }
      if (text.startsWith(fence, i)) {
        i += 3;
        // Up to two more quotes belong to the content: `""""` ends with one quote inside.
        for (let extra = 0; extra < 2 && text[i] === quote; extra++) i++;
        return;
      }
      i++;
    }
  };

  const simpleKey = (): string => {
    if (text[i] === '"') {
      if (text.startsWith('"""', i)) fail('a key cannot be a multi-line string');
      return basicString();
    }
    if (text[i] === "'") {
      if (text.startsWith("'''", i)) fail('a key cannot be a multi-line string');
      return literalString();
    }
    const start = i;
    while (i < text.length && BARE_KEY.test(text[i])) i++;
    if (i === start) fail(text[i] === undefined ? 'expected a key' : `unexpected "${text[i]}"`);
    return text.slice(start, i);
  };
  const dottedKey = (): string[] => {
    const parts = [simpleKey()];
    for (;;) {
      const save = i;
      skipSpaces();
      if (text[i] !== '.') {
        i = save;
        return parts;
      }
      i++;
      skipSpaces();
      parts.push(simpleKey());
    }
  };

  /** A value at i; records assignments inside inline tables under `path`. */
  const value = (path: string[], nested: boolean, keyLine: number): TomlAssignment => {
    const start = i;
    const done = (kind: TomlAssignment['kind'], decoded?: string): TomlAssignment => ({
      path,
      start,
      end: i,
      line: keyLine,
      kind,
      raw: text.slice(start, i),
      value: decoded,
      nested,
    });
    const c = text[i];
    if (c === '"' || c === "'") {
      if (text.startsWith(c.repeat(3), i)) {
        multilineString(c);
        return done('string');
      }
      return done('string', c === '"' ? basicString() : literalString());
    }
    if (c === '[') {
      i++;
      skipBlank();
      while (text[i] !== ']') {
        value([...path, '[]'], true, keyLine);
        skipBlank();
        if (text[i] === ',') {
          i++;
          skipBlank();
        } else if (text[i] !== ']') fail('expected "," or "]" in an array');
      }
      i++;
      return done('array');
    }
    if (c === '{') {
      i++;
      skipBlank();
      if (text[i] === '}') {
        i++;
        return done('inline-table');
      }
      for (;;) {
        const line = position(i).line;
        const key = dottedKey();
        skipSpaces();
        if (text[i] !== '=') fail('expected "=" after a key');
        i++;
        skipSpaces();
        assignments.push(value([...path, ...key], true, line));
        skipBlank();
        if (text[i] === ',') {
          i++;
          skipBlank();
          continue;
        }
        if (text[i] === '}') {
          i++;
          return done('inline-table');
        }
        fail('expected "," or "}" in an inline table');
      }
    }
    // Numbers, booleans, dates and times: `1979-05-27 07:32:00` may hold one space.
    while (i < text.length && SCALAR.test(text[i])) i++;
    if (
      /^\d{4}-\d{2}-\d{2}$/.test(text.slice(start, i)) &&
      text[i] === ' ' &&
      /^\d{2}:/.test(text.slice(i + 1, i + 4))
    ) {
      i++;
      while (i < text.length && SCALAR.test(text[i])) i++;
    }
    if (i === start) fail(c === undefined || c === '\n' ? 'expected a value' : `unexpected "${c}"`);
    return done('other');
  };

  while (i < text.length) {
    skipBlank();
    if (i >= text.length) break;
    const line = position(i).line;
    if (text[i] === '[') {
      const array = text[i + 1] === '[';
      i += array ? 2 : 1;
      skipSpaces();
      const path = dottedKey();
      skipSpaces();
      if (!text.startsWith(array ? ']]' : ']', i))
        fail(`expected "${array ? ']]' : ']'}" to close a table header`);
      i += array ? 2 : 1;
      endOfLine();
      headers.push({ path, array, line, lineEnd: i });
      table = path;
      continue;
    }
    const key = dottedKey();
    skipSpaces();
    if (text[i] !== '=') fail('expected "=" after a key');
    i++;
    skipSpaces();
    const full = [...table, ...key];
    // `a.b = 1` defines table a implicitly: mark each prefix as set by a dotted key.
    for (let n = table.length + 1; n < full.length; n++) {
      assignments.push({
        path: full.slice(0, n),
        start: i,
        end: i,
        line,
        kind: 'inline-table',
        raw: '',
        nested: true,
      });
    }
    assignments.push(value(full, key.length > 1, line));
    endOfLine();
  }
  return { headers, assignments };
}

export const pathStartsWith = (path: readonly string[], prefix: readonly string[]): boolean =>
  prefix.every((part, n) => path[n] === part);

export const samePath = (a: readonly string[], b: readonly string[]): boolean =>
  a.length === b.length && pathStartsWith(a, b);
