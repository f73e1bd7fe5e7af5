/**
 * Shared benchmark plumbing: timing, medians, and the report every benchmark prints and writes
 * to bench-results/NAME.json (see ARCHITECTURE.md, "Benchmarks").
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** One figure a benchmark measured, against a baseline measured in the same run. */
export interface BenchRow {
  metric: string;
  unit: string;
  value: number;
  baseline: string;
  baselineValue: number;
  /** Which direction of `ratio` is good; shown in the table only. */
  better?: 'higher' | 'lower' | 'closer to 1';
}

/** What bench-results/NAME.json holds: an array of these. */
export interface ReportRow {
  metric: string;
  unit: string;
  value: number;
  baseline: string;
  baselineValue: number;
  ratio: number;
}

/** A benchmark module's default export. */
export type BenchMain = () => Promise<BenchRow[]>;

export const resultsDir = join(
  dirname(fileURLToPath(import.meta.url)),
  '..',
  '..',
  'bench-results',
);

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

export function nowNs(): bigint {
  return process.hrtime.bigint();
}

/** Runs `fn` once; returns its result and the elapsed time in nanoseconds. */
export async function timeNs<T>(fn: () => Promise<T> | T): Promise<{ ns: number; result: T }> {
  const t0 = process.hrtime.bigint();
  const result = await fn();
  return { ns: Number(process.hrtime.bigint() - t0), result };
}

/** Runs `sample` n times (sequentially) and returns the median of what it returns and all samples. */
export async function medianOf(
  n: number,
  sample: (run: number) => Promise<number> | number,
): Promise<{ median: number; samples: number[] }> {
  const samples: number[] = [];
  for (let i = 0; i < n; i++) samples.push(await sample(i));
  return { median: median(samples), samples };
}

function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const a = Math.abs(n);
  if (a === 0) return '0';
  if (a >= 1000) return n.toFixed(0);
  if (a >= 10) return n.toFixed(1);
  if (a >= 0.01) return n.toFixed(3);
  return n.toPrecision(3);
}

/** Computes ratios, prints the table, writes bench-results/NAME.json; returns the JSON rows. */
export function report(name: string, rows: readonly BenchRow[], outDir = resultsDir): ReportRow[] {
  const out: ReportRow[] = rows.map((r) => ({
    metric: r.metric,
    unit: r.unit,
    value: r.value,
    baseline: r.baseline,
    baselineValue: r.baselineValue,
    ratio: r.value / r.baselineValue,
  }));
  const header = [
    'metric',
    'unit',
    'value (median)',
    'baseline',
    'baseline value',
    'ratio',
    'better',
  ];
  const table = out.map((r, i) => [
    r.metric,
    r.unit,
    fmt(r.value),
    r.baseline,
    fmt(r.baselineValue),
    fmt(r.ratio),
    rows[i].better ?? '',
  ]);
  const widths = header.map((h, c) => Math.max(h.length, ...table.map((row) => row[c].length)));
  const numeric = new Set([2, 4, 5]);
  const line = (cells: string[]): string =>
    cells
      .map((cell, c) => (numeric.has(c) ? cell.padStart(widths[c]) : cell.padEnd(widths[c])))
      .join('  ')
      .trimEnd();
  const text = [
    `benchmark ${name} (ratio = value / baseline value)`,
    line(header),
    line(widths.map((w) => '-'.repeat(w))),
    ...table.map(line),
  ].join('\n');
  process.stdout.write(text + '\n');
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `${name}.json`);
  writeFileSync(file, JSON.stringify(out, null, 2) + '\n');
  process.stdout.write(`wrote ${file}\n`);
  return out;
}
