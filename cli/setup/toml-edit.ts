import type { TomlHeader } from './toml-scan.js';

/** Text edits on a TOML document located by `scanToml`: each keeps every other byte as it was. */

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

/** Replace [start, end) of the text with `replacement`. */
export type TextEdit = readonly [start: number, end: number, replacement: string];

/** Applies edits from the end of the text, so that earlier offsets stay valid. */
export function applyEdits(text: string, edits: readonly TextEdit[]): string {
  let out = text;
  for (const [start, end, replacement] of [...edits].sort((a, b) => b[0] - a[0]))
    out = out.slice(0, start) + replacement + out.slice(end);
  return out;
}

/** The line ending the file uses; new lines are written the same way. */
export function lineEnding(text: string): '\r\n' | '\n' {
  return text.includes('\r\n') ? '\r\n' : '\n';
}

/** `block` (written with \n) after `existing`, a blank line between them. */
export function appendBlock(existing: string, block: string): string {
  const eol = lineEnding(existing);
  const sep = existing.trim() === '' ? '' : existing.endsWith('\n') ? eol : eol + eol;
  return existing + sep + block.replace(/\n/g, eol);
}

/** Inserts `block` (written with \n) before the line at `offset`, a blank line after it. */
export function insertBlockBefore(existing: string, offset: number, block: string): TextEdit {
  const eol = lineEnding(existing);
  return [offset, offset, block.replace(/\n/g, eol) + eol];
}

/** An edit that adds `keyLines` (`key = value`) as the first keys of the table `header` opens. */
export function keysAfterHeader(
  existing: string,
  header: TomlHeader,
  keyLines: readonly string[],
): TextEdit {
  const eol = lineEnding(existing);
  // A header on the file's last line may have no newline after it.
  const lead = existing[header.lineEnd - 1] === '\n' ? '' : eol;
  return [header.lineEnd, header.lineEnd, lead + keyLines.map((l) => `  ${l}${eol}`).join('')];
}

/**
 * Where a block placed before the header on `line` should start: above the comment lines that
 * sit right on top of that header, since they describe it.
 */
export function startOfHeaderBlock(text: string, line: number): number {
  const lines = text.split('\n');
  let first = line - 1;
  while (first > 0 && /^\s*#/.test(lines[first - 1])) first--;
  return lines.slice(0, first).reduce((offset, l) => offset + l.length + 1, 0);
}

/** A key as TOML needs it written: bare when it can be, quoted otherwise. */
export function tomlKey(part: string): string {
  return /^[A-Za-z0-9_-]+$/.test(part) ? part : tomlString(part);
}
