import { Command, Flags } from '@oclif/core';
import { constants } from 'node:fs';
import {
  chmod,
  chown,
  copyFile,
  mkdir,
  open,
  readFile,
  realpath,
  rename,
  rm,
  stat,
} from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { describeKey } from '../../../agent/config.js';

/**
 * `lcfs setup containerd`: declares the agent's snapshotter in containerd's config.toml as the
 * proxy plugin `[proxy_plugins.lcfs]`.
 *
 * The file is edited as text, never re-serialized: an operator's comments, order and formatting
 * stay as they were. A small TOML scanner (below) reads the whole file first: where each table
 * starts, each key's full dotted path and the span of each value. From that the command decides
 * between appending the block, fixing a value in place, or changing nothing, and it refuses a
 * file it cannot read rather than guess. `[proxy_plugins.NAME]` is the same table in containerd
 * config versions 1, 2 and 3.
 */

export const PLUGIN_NAME = 'lcfs';
const PLUGIN_TYPE = 'snapshot';
const PLUGIN_PATH = ['proxy_plugins', PLUGIN_NAME];
export const DEFAULT_CONTAINERD_CONFIG = '/etc/containerd/config.toml';

// ---------------------------------------------------------------------------------------------
// TOML scanning

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

// ---------------------------------------------------------------------------------------------
// Planning the change

export class ContainerdConfigError extends Error {
  constructor(
    readonly code:
      'LCFS_ECONTAINERD_CONFLICT' | 'LCFS_ECONTAINERD_PARSE' | 'LCFS_ECONTAINERD_UNSUPPORTED',
    message: string,
  ) {
    super(message);
    this.name = 'ContainerdConfigError';
  }
}

export interface ConfigPlan {
  /** `unchanged`: the file already declares the plugin as wanted. */
  action: 'create' | 'append' | 'update' | 'unchanged';
  /** The new text (the old one when unchanged). */
  text: string;
  /** What changed, one line each, for the operator. */
  changes: string[];
  /** containerd config version the file declares: 1 when it has no `version` key. */
  version: number | string;
}

/** A TOML basic string. */
export function tomlString(value: string): string {
  let out = '"';
  for (const ch of value) {
    const code = ch.codePointAt(0)!;
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\t') out += '\\t';
    else if (code < 0x20 || code === 0x7f)
      out += `\\u${code.toString(16).padStart(4, '0').toUpperCase()}`;
    else out += ch;
  }
  return out + '"';
}

/** The block `lcfs setup containerd` appends. */
export function pluginBlock(socket: string): string {
  return (
    `# The lcfs agent's containerd snapshotter, added by \`lcfs setup containerd\`.\n` +
    `[proxy_plugins.${PLUGIN_NAME}]\n` +
    `  type = ${tomlString(PLUGIN_TYPE)}\n` +
    `  address = ${tomlString(socket)}\n`
  );
}

/** containerd dials `unix:///path` and `/path` alike. */
function sameAddress(a: string, b: string): boolean {
  const strip = (s: string): string => (s.startsWith('unix://') ? s.slice('unix://'.length) : s);
  return strip(a) === strip(b);
}

const startsWith = (path: readonly string[], prefix: readonly string[]): boolean =>
  prefix.every((part, n) => path[n] === part);
const equals = (a: readonly string[], b: readonly string[]): boolean =>
  a.length === b.length && startsWith(a, b);

/** The file's `version` key: 1 when absent, as containerd reads it. */
function configVersion(scan: TomlScan): number | string {
  const v = scan.assignments.find((a) => equals(a.path, ['version']));
  if (!v) return 1;
  return v.kind === 'other' && /^\d+$/.test(v.raw) ? Number(v.raw) : v.raw;
}

export interface PlanOptions {
  socket: string;
  /** Replace a different address or type of an existing `[proxy_plugins.lcfs]`. */
  force?: boolean;
  /** For messages. */
  file?: string;
}

/**
 * What `lcfs setup containerd` does to a config file's text (`null`: there is no file). Throws
 * ContainerdConfigError when the file cannot be read or declares the plugin otherwise (unless
 * `force`).
 */
export function planContainerdConfig(existing: string | null, opts: PlanOptions): ConfigPlan {
  const { socket } = opts;
  const file = opts.file ?? 'the config';
  const name = `[${PLUGIN_PATH.join('.')}]`;
  if (existing === null) {
    return {
      action: 'create',
      text:
        `# containerd configuration, created by \`lcfs setup containerd\`.\n` +
        `version = 2\n\n` +
        pluginBlock(socket),
      changes: [`created the file (containerd config version 2) with ${name} at ${socket}`],
      version: 2,
    };
  }

  let scan: TomlScan;
  try {
    scan = scanToml(existing);
  } catch (err) {
    if (!(err instanceof TomlScanError)) throw err;
    throw new ContainerdConfigError(
      'LCFS_ECONTAINERD_PARSE',
      `${file} is not valid TOML (${err.message}); it was not changed`,
    );
  }
  const version = configVersion(scan);

  const inPlugin = scan.assignments.filter((a) => startsWith(a.path, PLUGIN_PATH));
  const pluginHeaders = scan.headers.filter((h) => startsWith(h.path, PLUGIN_PATH));
  const header = pluginHeaders.find((h) => equals(h.path, PLUGIN_PATH) && !h.array);
  const arrayHeader = pluginHeaders.find((h) => h.array && h.path.length <= PLUGIN_PATH.length + 1);
  if (arrayHeader) {
    throw new ContainerdConfigError(
      'LCFS_ECONTAINERD_UNSUPPORTED',
      `${file} line ${arrayHeader.line}: [[${arrayHeader.path.join('.')}]] is an array of ` +
        `tables, which containerd does not read as a proxy plugin; it was not changed`,
    );
  }
  const eol = existing.includes('\r\n') ? '\r\n' : '\n';
  const lines = (block: string): string => block.replace(/\n/g, eol);
  const proxyValue = scan.assignments.find(
    (a) => equals(a.path, ['proxy_plugins']) && a.kind !== 'inline-table',
  );
  if (proxyValue) {
    throw new ContainerdConfigError(
      'LCFS_ECONTAINERD_UNSUPPORTED',
      `${file} line ${proxyValue.line}: proxy_plugins is not a table; it was not changed`,
    );
  }
  // proxy_plugins = { ... } cannot take a [proxy_plugins.lcfs] table after it.
  const proxyInline = scan.assignments.find(
    (a) => equals(a.path, ['proxy_plugins']) && a.kind === 'inline-table' && !a.nested,
  );

  const append = (): ConfigPlan => {
    if (proxyInline) {
      throw new ContainerdConfigError(
        'LCFS_ECONTAINERD_UNSUPPORTED',
        `${file} line ${proxyInline.line} defines proxy_plugins as an inline table, which ` +
          `cannot take ${name}; add ${PLUGIN_NAME} = { type = "${PLUGIN_TYPE}", address = ` +
          `${tomlString(socket)} } to it by hand. The file was not changed`,
      );
    }
    const sep = existing.trim() === '' ? '' : existing.endsWith('\n') ? eol : eol + eol;
    return {
      action: 'append',
      text: existing + sep + lines(pluginBlock(socket)),
      changes: [`added ${name} (type "${PLUGIN_TYPE}", address ${socket})`],
      version,
    };
  };
  if (inPlugin.length === 0 && pluginHeaders.length === 0) return append();

  const single = (key: string): TomlAssignment | undefined => {
    const found = inPlugin.filter((a) => equals(a.path, [...PLUGIN_PATH, key]));
    if (found.length > 1) {
      throw new ContainerdConfigError(
        'LCFS_ECONTAINERD_PARSE',
        `${file} sets ${PLUGIN_PATH.join('.')}.${key} twice (lines ` +
          `${found.map((a) => a.line).join(', ')}); it was not changed`,
      );
    }
    return found[0];
  };
  const address = single('address');
  const type = single('type');

  const addressConflict =
    address !== undefined && !(address.value !== undefined && sameAddress(address.value, socket));
  const typeConflict = type !== undefined && type.value !== PLUGIN_TYPE;
  const conflicts: string[] = [];
  if (address && addressConflict) conflicts.push(`address ${address.raw} (line ${address.line})`);
  if (type && typeConflict) conflicts.push(`type ${type.raw} (line ${type.line})`);
  if (conflicts.length > 0 && !opts.force) {
    throw new ContainerdConfigError(
      'LCFS_ECONTAINERD_CONFLICT',
      `${file} already declares ${name} with ${conflicts.join(' and ')}, where lcfs needs ` +
        `type "${PLUGIN_TYPE}" and address ${socket}. Another snapshotter may be using the ` +
        `name "${PLUGIN_NAME}": check, then rerun with --force to replace the value. ` +
        `The file was not changed`,
    );
  }

  // Edits as [start, end, replacement], applied from the end so offsets stay valid.
  const edits: Array<[number, number, string]> = [];
  const changes: string[] = [];
  if (address && addressConflict) {
    edits.push([address.start, address.end, tomlString(socket)]);
    changes.push(`replaced address ${address.raw} with ${socket} (line ${address.line}, --force)`);
  }
  if (type && typeConflict) {
    edits.push([type.start, type.end, tomlString(PLUGIN_TYPE)]);
    changes.push(`replaced type ${type.raw} with "${PLUGIN_TYPE}" (line ${type.line}, --force)`);
  }
  const missing = [
    ...(type ? [] : [`type = ${tomlString(PLUGIN_TYPE)}`]),
    ...(address ? [] : [`address = ${tomlString(socket)}`]),
  ];
  if (missing.length > 0) {
    if (header) {
      const lead = existing[header.lineEnd - 1] === '\n' ? '' : eol;
      edits.push([
        header.lineEnd,
        header.lineEnd,
        lead + missing.map((l) => `  ${l}${eol}`).join(''),
      ]);
      changes.push(`added ${missing.join(', ')} to ${name} (line ${header.line})`);
    } else if (inPlugin.length === 0) {
      // Only sub-tables such as [proxy_plugins.lcfs.exports]: the table itself may follow.
      return append();
    } else {
      throw new ContainerdConfigError(
        'LCFS_ECONTAINERD_UNSUPPORTED',
        `${file} line ${inPlugin[0].line} declares ${PLUGIN_PATH.join('.')} without ` +
          `${missing.join(' and ')}, in a form this command does not edit (an inline table or ` +
          `dotted keys); add them by hand. The file was not changed`,
      );
    }
  }
  if (edits.length === 0) return { action: 'unchanged', text: existing, changes: [], version };
  let text = existing;
  for (const [start, end, replacement] of edits.sort((a, b) => b[0] - a[0]))
    text = text.slice(0, start) + replacement + text.slice(end);
  return { action: 'update', text, changes, version };
}

// ---------------------------------------------------------------------------------------------
// Applying it

export interface SetupResult {
  plan: ConfigPlan;
  /** The file written (the target of a symlink, if the path was one). */
  path: string;
  /** Where the previous file was copied to, when it was changed. */
  backup?: string;
}

function stamp(date: Date): string {
  // 20261129-072100: sorts in time order, no characters a shell needs quoted.
  return date.toISOString().slice(0, 19).replace(/[-:]/g, '').replace('T', '-');
}

/** A free `<path>.lcfs-backup-<stamp>[.n]`, copied without ever overwriting one. */
async function backup(path: string): Promise<string> {
  const base = `${path}.lcfs-backup-${stamp(new Date())}`;
  for (let n = 0; ; n++) {
    const candidate = n === 0 ? base : `${base}.${n}`;
    try {
      await copyFile(path, candidate, constants.COPYFILE_EXCL);
      return candidate;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
}

/** Writes through a temp file in the same folder, fsynced, then renamed over `path`. */
async function writeAtomically(
  path: string,
  text: string,
  like?: { mode: number; uid: number; gid: number },
): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.lcfs-${process.pid}.tmp`);
  const fh = await open(tmp, 'w', like ? like.mode & 0o7777 : 0o644);
  try {
    await fh.writeFile(text, 'utf8');
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    if (like) {
      await chmod(tmp, like.mode & 0o7777);
      await chown(tmp, like.uid, like.gid).catch(() => undefined);
    }
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  // The rename itself is durable once the folder is.
  const dir = await open(dirname(path), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

/** Plans and, unless `dryRun`, writes: the testable core of the command. */
export async function setupContainerd(opts: {
  config: string;
  socket: string;
  force?: boolean;
  dryRun?: boolean;
}): Promise<SetupResult> {
  let path = resolve(opts.config);
  let existing: string | null = null;
  let info: { mode: number; uid: number; gid: number } | undefined;
  try {
    path = await realpath(path);
    const st = await stat(path);
    if (!st.isFile()) throw new Error(`${path} is not a regular file`);
    info = { mode: st.mode, uid: st.uid, gid: st.gid };
    existing = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const plan = planContainerdConfig(existing, {
    socket: opts.socket,
    force: opts.force,
    file: path,
  });
  // The result must read back as wanted: a guard against a scanner or editing mistake.
  const check = planContainerdConfig(plan.text, { socket: opts.socket, file: path });
  if (check.action !== 'unchanged')
    throw new Error(`internal error: the edited ${path} does not declare the plugin as planned`);
  if (opts.dryRun || plan.action === 'unchanged') return { plan, path };

  if (existing === null) {
    await mkdir(dirname(path), { recursive: true, mode: 0o755 });
    await writeAtomically(path, plan.text);
    return { plan, path };
  }
  const copy = await backup(path);
  await writeAtomically(path, plan.text, info);
  return { plan, path, backup: copy };
}

// ---------------------------------------------------------------------------------------------
// The command

export default class SetupContainerdCommand extends Command {
  static override summary = "Declare the lcfs snapshotter in containerd's config.toml.";

  static override description = `Adds the proxy plugin block

  [proxy_plugins.lcfs]
    type = "snapshot"
    address = "<socket>"

to containerd's config, so containerd (and what runs on it: nerdctl, Kubernetes, Docker's containerd image store) can use lcfs as the snapshotter "lcfs". The file is edited as text: comments and formatting stay. Running it again changes nothing. When it changes an existing file it first copies it to <file>.lcfs-backup-<time>; a missing file is created with "version = 2". A file that already declares [proxy_plugins.lcfs] with another address or type is refused unless --force. Config versions 1, 2 and 3 are handled alike.

containerd reads its config at start only: restart it afterwards.`;

  static override examples = [
    '<%= config.bin %> <%= command.id %>',
    '<%= config.bin %> <%= command.id %> --dry-run',
    '<%= config.bin %> <%= command.id %> --config /etc/containerd/config.toml --socket /run/lcfs/snapshotter.sock',
  ];

  static override flags = {
    config: Flags.string({
      summary: "containerd's config file",
      default: DEFAULT_CONTAINERD_CONFIG,
      helpValue: 'PATH',
    }),
    socket: Flags.string({
      summary: "the agent's snapshotter socket (its snapshotterSocket setting)",
      default: describeKey('snapshotterSocket').defaultText,
      helpValue: 'PATH',
    }),
    force: Flags.boolean({
      summary: 'replace another address or type already declared for [proxy_plugins.lcfs]',
      default: false,
    }),
    'dry-run': Flags.boolean({
      summary: 'print what would change; write nothing',
      default: false,
    }),
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(SetupContainerdCommand);
    if (flags.socket.trim() === '' || flags.socket.includes('\n'))
      this.error('--socket must be a path', { code: 'LCFS_ECONTAINERD_SOCKET', exit: 2 });
    const socket = resolve(flags.socket.replace(/^unix:\/\//, ''));
    const dryRun = flags['dry-run'];
    let result: SetupResult;
    try {
      result = await setupContainerd({
        config: flags.config,
        socket,
        force: flags.force,
        dryRun,
      });
    } catch (err) {
      if (err instanceof ContainerdConfigError)
        this.error(err.message, { code: err.code, exit: 1 });
      const e = err as NodeJS.ErrnoException;
      this.error(`cannot update ${flags.config}: ${e.message}`, {
        code: e.code ?? 'LCFS_ECONTAINERD_IO',
        exit: 1,
      });
    }
    const { plan, path } = result;
    const versionText = `containerd config version ${plan.version}`;
    if (plan.action === 'unchanged') {
      this.log(
        `${path} already declares [proxy_plugins.${PLUGIN_NAME}] (type "${PLUGIN_TYPE}", address ${socket}); nothing changed.`,
      );
      return;
    }
    const verb = dryRun ? 'would change' : plan.action === 'create' ? 'created' : 'changed';
    this.log(`${dryRun ? 'dry run: ' : ''}${path} (${versionText}) ${verb}:`);
    for (const change of plan.changes) this.log(`  - ${change}`);
    if (dryRun) {
      this.log(plan.action === 'update' ? '\nthe new file:\n' : '\nthe block:\n');
      this.log((plan.action === 'update' ? plan.text : pluginBlock(socket)).replace(/\n$/, ''));
      this.log('\nnothing was written.');
      return;
    }
    if (result.backup) this.log(`  - the previous file is kept as ${result.backup}`);
    this.log(
      `\nRestart containerd to load it (systemctl restart containerd), with the lcfs agent ` +
        `running. Then: ctr run --snapshotter ${PLUGIN_NAME} ..., or for Kubernetes set ` +
        `snapshotter = "${PLUGIN_NAME}" in the CRI plugin's containerd section.`,
    );
  }
}
