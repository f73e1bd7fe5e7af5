/**
 * Benchmark runner: `npm run bench -- NAME` runs test/bench/NAME.bench.ts, whose default export
 * (a BenchMain) returns the rows; the runner prints them and writes bench-results/NAME.json.
 */
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { type BenchMain, report } from './report.js';

const here = dirname(fileURLToPath(import.meta.url));
const available = readdirSync(here)
  .filter((f) => f.endsWith('.bench.ts'))
  .map((f) => f.slice(0, -'.bench.ts'.length))
  .sort();

const name = process.argv[2];
if (!name || !available.includes(name)) {
  process.stderr.write(
    `${name ? `no benchmark named "${name}"` : 'missing benchmark name'}\n` +
      `usage: npm run bench -- NAME\navailable: ${available.join(', ') || '(none)'}\n`,
  );
  process.exit(2);
}

const mod = (await import(pathToFileURL(join(here, `${name}.bench.ts`)).href)) as {
  default?: BenchMain;
};
if (typeof mod.default !== 'function') {
  process.stderr.write(`test/bench/${name}.bench.ts has no default export function\n`);
  process.exit(2);
}
const started = Date.now();
const rows = await mod.default();
report(name, rows);
process.stdout.write(`benchmark ${name} took ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
// A handle or worker the benchmark left open must not keep the runner alive.
process.exit(0);
