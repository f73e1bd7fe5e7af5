import type { SnapshotRecord } from './snapshot-catalog.js';

/**
 * containerd's filter language, as far as snapshot listings use it: comma-joined clauses of
 * `field`, `field==value`, `field!=value` or `field~=regex`, over `name`, `parent`, `kind` and
 * `labels.<key>` (a key with dots or other characters in double quotes). A listing matches any
 * of its filters; a filter matches when all its clauses do.
 */

export class FilterSyntaxError extends Error {
  readonly code = 'LCFS_EFILTER';
}

const FIELDS = ['name', 'parent', 'kind', 'labels'];

type Clause = { path: string[]; op: '==' | '!=' | '~=' | 'present'; value: string };
export type Filter = (rec: SnapshotRecord) => boolean;

const COMPONENT = String.raw`(?:[A-Za-z0-9_./-]+?|"(?:[^"\\]|\\.)*")`;
const CLAUSE = new RegExp(
  String.raw`^\s*(${COMPONENT}(?:\.${COMPONENT})*)\s*(?:(==|!=|~=)\s*(.*?))?\s*$`,
);

function unquote(text: string): string {
  if (!text.startsWith('"')) return text;
  try {
    return JSON.parse(text) as string;
  } catch {
    throw new FilterSyntaxError(`bad quoted string ${text}`);
  }
}

/** Splits on a separator that is not inside double quotes. */
function splitOutsideQuotes(text: string, sep: string): string[] {
  const parts: string[] = [];
  let quoted = false;
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    if (text[i] === '\\' && quoted) i++;
    else if (text[i] === '"') quoted = !quoted;
    else if (!quoted && text[i] === sep) {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
  }
  if (quoted) throw new FilterSyntaxError(`unterminated quote in "${text}"`);
  parts.push(text.slice(start));
  return parts;
}

function parseClause(text: string): Clause {
  const m = CLAUSE.exec(text);
  if (!m) throw new FilterSyntaxError(`cannot parse filter clause "${text}"`);
  const path = splitOutsideQuotes(m[1], '.').map(unquote);
  if (!FIELDS.includes(path[0]))
    throw new FilterSyntaxError(`unknown filter field "${path.join('.')}"`);
  const op = (m[2] as Clause['op'] | undefined) ?? 'present';
  const value = m[3] === undefined ? '' : unquote(m[3]);
  if (op === '~=') {
    try {
      new RegExp(value);
    } catch {
      throw new FilterSyntaxError(`bad regular expression "${value}"`);
    }
  }
  return { path, op, value };
}

function field(rec: SnapshotRecord, path: string[]): string | undefined {
  const [head, ...rest] = path;
  switch (head) {
    case 'name':
      return rest.length === 0 ? rec.name : undefined;
    case 'parent':
      return rest.length === 0 ? rec.parent : undefined;
    case 'kind':
      // containerd prints kinds as View, Active, Committed.
      return rest.length === 0 ? rec.kind[0] + rec.kind.slice(1).toLowerCase() : undefined;
    default:
      return rest.length === 0 ? undefined : rec.labels[rest.join('.')];
  }
}

export function parseFilter(text: string): Filter {
  const clauses = splitOutsideQuotes(text, ',').map(parseClause);
  return (rec) =>
    clauses.every(({ path, op, value }) => {
      const v = field(rec, path);
      if (op === 'present') return v !== undefined && v !== '';
      if (op === '==') return v === value;
      if (op === '!=') return v !== value;
      return v !== undefined && new RegExp(value).test(v);
    });
}

/** Parses every filter first, so a bad one fails the request before anything is listed. */
export function parseFilters(filters: string[]): Filter {
  const parsed = filters.filter((f) => f.trim() !== '').map(parseFilter);
  return (rec) => parsed.length === 0 || parsed.some((f) => f(rec));
}
