/**
 * One image pull as an engine does it, in its own process, for `npm run bench -- pull`
 * (a fetch client in the same Node process as the throttling proxy is itself the bottleneck).
 *
 *   node --import tsx test/bench/pull-worker.ts '{"base":"http://127.0.0.1:PORT","name":"a/b","tag":"latest","parallel":3}'
 *
 * The worker prints `ready`, waits for a line `go` on stdin, then pulls: the manifest by tag,
 * then the config and every layer (`parallel` at a time, in manifest order), each hashed as it
 * arrives. A blob body cut short is asked for again from where it stopped (`Range`), up to
 * MAX_RETRIES times per blob, as dockerd does; a wrong digest is not retried. It prints one line
 * of JSON (a PullResult) and exits 0; on any failure it prints `{"error": "…"}` and exits 1.
 * Times are epoch milliseconds with sub-millisecond precision.
 */
import { createHash } from 'node:crypto';
import { Agent, get, type IncomingMessage } from 'node:http';
import { createInterface } from 'node:readline';
import { MANIFEST_TYPES } from '../../cluster/upstream-registry.js';

export interface PullJob {
  /** The registry (or mirror) base URL, `http://HOST:PORT`. */
  base: string;
  name: string;
  tag: string;
  /** Blob downloads at once (dockerd's and containerd's CRI default is 3). */
  parallel: number;
}

export interface PullResult {
  /** When `go` arrived and the manifest request went out. */
  startMs: number;
  /** When the last blob's last byte was hashed. */
  endMs: number;
  manifestDigest: string;
  /** sha256 of what arrived, by the digest asked for: config first, then layers. */
  blobs: Record<string, string>;
  /** Body bytes received: the manifest and every blob. */
  bytes: number;
  /** This process's CPU over the pull, in seconds (user + system). */
  cpuSeconds: number;
  /** Blob GETs sent again after a body was cut, with what went wrong. */
  retries: string[];
}

const MAX_RETRIES = 5;
const RETRY_PAUSE_MS = 100;

/** A body that ended early or broke: worth resuming from `received`. */
class CutBody extends Error {
  constructor(
    message: string,
    readonly received: number,
  ) {
    super(message);
  }
}

/** What engines send: every manifest type the mirror relays. */
const ACCEPT = MANIFEST_TYPES.join(', ');

const now = (): number => performance.timeOrigin + performance.now();

/** GETs `url`, feeding the body to `onChunk`; resolves with the body's length. */
function download(
  agent: Agent,
  url: string,
  headers: Record<string, string>,
  onChunk: (chunk: Buffer) => void,
): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = get(url, { agent, headers }, (res: IncomingMessage) => {
      const wanted = headers.range === undefined ? 200 : 206;
      if (res.statusCode !== wanted) {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => reject(new Error(`GET ${url}: ${res.statusCode} ${text.trim()}`)));
        res.on('error', reject);
        return;
      }
      let bytes = 0;
      res.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        onChunk(chunk);
      });
      res.on('end', () => {
        if (!res.complete) reject(new CutBody(`GET ${url}: body cut at ${bytes} bytes`, bytes));
        else resolve(bytes);
      });
      res.on('error', (err) => reject(new CutBody(`GET ${url}: ${err.message}`, bytes)));
      res.on('aborted', () => reject(new CutBody(`GET ${url}: aborted at ${bytes} bytes`, bytes)));
    });
    // Before any response (a reset connection): nothing was received, so ask again.
    req.on('error', (err) => reject(new CutBody(`GET ${url}: ${err.message}`, 0)));
  });
}

async function pull(job: PullJob): Promise<PullResult> {
  const agent = new Agent({ keepAlive: true, maxSockets: job.parallel });
  const cpu0 = process.cpuUsage();
  const startMs = now();
  const base = `${job.base}/v2/${job.name}`;
  const manifestChunks: Buffer[] = [];
  let bytes = await download(agent, `${base}/manifests/${job.tag}`, { accept: ACCEPT }, (c) =>
    manifestChunks.push(c),
  );
  const manifestBody = Buffer.concat(manifestChunks);
  const manifest = JSON.parse(manifestBody.toString('utf8')) as {
    config: { digest: string };
    layers: Array<{ digest: string }>;
  };
  const digests = [manifest.config.digest, ...manifest.layers.map((layer) => layer.digest)];
  const blobs: Record<string, string> = {};
  const retries: string[] = [];
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < digests.length) {
      const digest = digests[next++];
      const hash = createHash('sha256');
      let received = 0;
      for (let attempt = 0; ; attempt++) {
        const range: Record<string, string> = received > 0 ? { range: `bytes=${received}-` } : {};
        try {
          received += await download(agent, `${base}/blobs/${digest}`, range, (c) =>
            hash.update(c),
          );
          break;
        } catch (err) {
          if (!(err instanceof CutBody) || attempt >= MAX_RETRIES) throw err;
          received += err.received;
          retries.push(err.message);
          await new Promise((resolve) => setTimeout(resolve, RETRY_PAUSE_MS));
        }
      }
      bytes += received;
      blobs[digest] = `sha256:${hash.digest('hex')}`;
    }
  };
  await Promise.all(Array.from({ length: Math.min(job.parallel, digests.length) }, lane));
  const endMs = now();
  const cpu = process.cpuUsage(cpu0);
  agent.destroy();
  return {
    startMs,
    endMs,
    manifestDigest: `sha256:${createHash('sha256').update(manifestBody).digest('hex')}`,
    blobs,
    bytes,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    retries,
  };
}

async function main(): Promise<void> {
  const job = JSON.parse(process.argv[2] ?? '') as PullJob;
  const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  process.stdout.write('ready\n');
  const line = await lines.next();
  if (line.done === true || line.value.trim() !== 'go') throw new Error('no "go" on stdin');
  const result = await pull(job);
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stdout.write(`${JSON.stringify({ error: String(err) })}\n`);
    process.exit(1);
  },
);
