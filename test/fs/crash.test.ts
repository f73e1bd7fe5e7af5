/**
 * Crash safety of the layer store: a child process (crash-writer.ts) works on a store and is
 * killed with SIGKILL at seeded random moments (20-400 ms after it loaded, or after the store
 * opened), at least 50 times on the same store directory.
 * After every kill the test opens the store and checks it against the child's ack journal:
 * - the store opens;
 * - every layer acknowledged as created (and not being removed) exists with its parent;
 * - every layer acknowledged as frozen (or applied) exists and its whole tree (names, types,
 *   modes, owners, nlink, sizes, mtimes, content sha256, symlink targets, xattrs, walked through
 *   the API) hashes to the journaled value;
 * - every acknowledged removal is gone; an unacknowledged removal is all or nothing;
 * - every fsynced file reads back with the journaled sha256 and size;
 * - journaled inode numbers of frozen layers are unchanged;
 * - every listed layer is walkable and the layer graph is consistent (nothing half-made).
 * New journal entries are checked after each kill, plus a seeded sample of old ones; everything
 * is checked after the last kill.
 *
 * Env: LCFS_CRASH_SEED (default: random, printed), LCFS_CRASH_KILLS (default 60),
 * LCFS_CRASH_KEEP=1 keeps the store directory.
 */
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openLayerStore } from '../../fs/index.js';
import type { LayerStore } from '../../fs/layer-store.js';
import { type VerifyStats, parseJournal, verify } from './crash-lib.js';
import { SeededRandom } from './helpers/prng.js';

const here = dirname(fileURLToPath(import.meta.url));
const writer = join(here, 'crash-writer.ts');

interface ChildResult {
  killed: boolean;
  opened: boolean;
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
}

/**
 * Spawns the writer, waits for its `from` line (`started`: modules loaded, store not yet opened;
 * `opened`: openLayerStore resolved), kills it `delayMs` later with SIGKILL.
 */
function runChild(
  storeDir: string,
  journal: string,
  seed: string,
  iter: number,
  delayMs: number,
  from: 'started' | 'opened',
): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', writer, storeDir, journal, seed, String(iter)],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let stdout = '';
    let stderr = '';
    let killed = false;
    let timer: NodeJS.Timeout | undefined;
    let hung = false;
    const guard = setTimeout(() => {
      hung = true;
      child.kill('SIGKILL');
    }, 30_000);
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (timer === undefined && stdout.includes(`${from}\n`)) {
        timer = setTimeout(() => {
          killed = true;
          child.kill('SIGKILL');
        }, delayMs);
      }
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(guard);
      if (timer) clearTimeout(timer);
      if (hung)
        stderr += `\n(no '${from}' line within 30 s; the child was killed; stdout: ${JSON.stringify(stdout)})`;
      resolve({
        killed: killed && !hung && signal === 'SIGKILL',
        opened: stdout.includes('opened\n'),
        code,
        signal,
        stderr,
      });
    });
  });
}

/** Closes the store; a rejection is a finding, reported once, and the test goes on. */
async function closeStore(store: LayerStore, fail: (msg: string) => void): Promise<void> {
  try {
    await store.close();
  } catch (err) {
    const e = err as Error & { code?: string };
    fail(`close() rejected: ${e?.code ?? ''} ${e?.message ?? String(err)}`);
  }
}

describe('layer store crash safety (SIGKILL at random moments)', function () {
  this.timeout(240_000);

  it('keeps every acknowledged operation across 50+ kills', async function () {
    const seed = process.env.LCFS_CRASH_SEED ?? String(randomInt(1, 2 ** 31));
    const kills = Number(process.env.LCFS_CRASH_KILLS ?? 60);
    const budgetMs = Number(process.env.LCFS_CRASH_BUDGET_MS ?? 110_000);
    console.log(`      crash test seed: ${seed} (rerun with LCFS_CRASH_SEED=${seed})`);
    const rng = new SeededRandom(`${seed}:parent`);
    const base = mkdtempSync(join(tmpdir(), 'lcfs-crash-'));
    const storeDir = join(base, 'store');
    const journalPath = join(base, 'journal');
    writeFileSync(journalPath, '');

    // Distinct findings, each with the first iteration it showed in and how often it showed.
    const findings = new Map<string, { first: number | 'final'; count: number }>();
    const fail = (iter: number | 'final', msg: string): void => {
      const f = findings.get(msg);
      if (f) f.count++;
      else findings.set(msg, { first: iter, count: 1 });
    };
    const failures = {
      get length(): number {
        return findings.size;
      },
      list(): string[] {
        return [...findings].map(
          ([msg, f]) => `[iter ${f.first}${f.count > 1 ? `, seen ${f.count}x` : ''}] ${msg}`,
        );
      },
    };
    let killed = 0;
    let killedBeforeOpen = 0;
    let childErrors = 0;
    let sinceLine = 0;
    let iter = 0;
    let openMsMax = 0;
    const started = Date.now();
    let stopped = false;

    try {
      while (killed < kills && failures.length < 30 && childErrors < 5) {
        if (killed >= 50 && Date.now() - started > budgetMs) break;
        // A third of the kills are timed from process start (so some land in openLayerStore's
        // recovery), the rest from the moment the store is open (so they land in the work).
        const delay = rng.int(20, 400);
        const from = rng.chance(1 / 3) ? 'started' : 'opened';
        const r = await runChild(storeDir, journalPath, seed, iter, delay, from);
        if (r.killed) {
          killed++;
          if (!r.opened) killedBeforeOpen++;
        } else {
          childErrors++;
          fail(
            iter,
            `child exited by itself (code ${r.code}, signal ${r.signal}): ${r.stderr.trim().slice(0, 2000)}`,
          );
        }

        const j = parseJournal(readFileSync(journalPath, 'utf8'));
        const t0 = Date.now();
        let store: LayerStore;
        try {
          store = await openLayerStore({ dir: storeDir });
        } catch (err) {
          const e = err as Error & { code?: string };
          fail(
            iter,
            `openLayerStore failed after kill: ${e?.code ?? ''} ${e?.stack ?? String(err)}`,
          );
          stopped = true;
          break;
        }
        openMsMax = Math.max(openMsMax, Date.now() - t0);
        try {
          const { errors } = await verify(store, j, { full: false, sinceLine, rng });
          for (const e of errors) fail(iter, e);
        } finally {
          await closeStore(store, (msg) => fail(iter, msg));
        }
        sinceLine = j.lines;
        iter++;
      }

      // Final full check.
      const j = parseJournal(readFileSync(journalPath, 'utf8'));
      let stats: VerifyStats | undefined;
      if (!stopped) {
        let store: LayerStore | undefined;
        try {
          const opened: LayerStore = await openLayerStore({ dir: storeDir });
          store = opened;
          const res = await verify(opened, j, { full: true, sinceLine, rng });
          stats = res.stats;
          for (const e of res.errors) fail('final', e);
        } catch (err) {
          const e = err as Error & { code?: string };
          fail('final', `final open/verify failed: ${e?.code ?? ''} ${e?.stack ?? String(err)}`);
        } finally {
          if (store) await closeStore(store, (msg) => fail('final', msg));
        }
      }

      const count = (p: string): number =>
        readFileSync(journalPath, 'utf8')
          .split('\n')
          .filter((l) => l.startsWith(p + ' ')).length;
      console.log(
        `      ${iter} children, ${killed} SIGKILLs (${killedBeforeOpen} before the store finished opening), ` +
          `${((Date.now() - started) / 1000).toFixed(1)} s, slowest reopen ${openMsMax} ms`,
      );
      console.log(
        `      acks: created ${count('created')}, applied ${count('applied')}, frozen ${count('frozen')}, ` +
          `removed ${count('removed')}, fsynced ${count('fsynced')}, ino ${count('ino')}`,
      );
      if (stats) {
        console.log(
          `      final check: ${stats.layers} layers listed, ${stats.hashChecks} tree hashes, ${stats.walks} other walks, ` +
            `${stats.fsyncChecks} fsynced files, ${stats.inoChecks} inos`,
        );
      }
      assert.ok(killed >= 50 || failures.length > 0, `only ${killed} kills`);
      const list = failures.list();
      assert.ok(
        list.length === 0,
        `seed ${seed}, store ${storeDir}: ${list.length} finding(s):\n  ${list.join('\n  ')}`,
      );
    } finally {
      if (failures.length === 0 && process.env.LCFS_CRASH_KEEP !== '1')
        rmSync(base, { recursive: true, force: true });
      else console.log(`      store and journal kept in ${base}`);
    }
  });
});
