/**
 * An HTTP reverse proxy on a loopback port in front of an upstream registry, for the cluster
 * tests and the pull benchmark: it counts what the upstream served, can throttle it to a shared
 * bandwidth (so the upstream is the bottleneck, as in real life), and can go down and come back.
 *
 *   const proxy = await UpstreamProxy.start({ upstream: registry.url, bytesPerSecond: 50e6 });
 *   ... agents use proxy.url (http://127.0.0.1:PORT) as their upstream ...
 *   proxy.blobGets().get(digest);     // { gets, bytes }: served blob GETs (200 or 206)
 *   proxy.requestCounts();            // Map 'GET /v2/…' → count
 *   proxy.resetCounts();
 *   proxy.throttle(undefined);        // unthrottled from now on
 *   await proxy.stop();               // the upstream is down: open transfers are cut
 *   await proxy.start();              // back, on the same port
 *   await proxy.dispose();
 *
 * Bodies stream through in both directions; nothing is buffered whole. Headers pass through
 * (WWW-Authenticate, Range, Content-Range, Docker-Content-Digest, …) except hop-by-hop ones, and
 * a `Location` that points at the upstream (the registry makes them absolute, from the Host it
 * was sent) is rewritten to point at the proxy.
 */
import { once } from 'node:events';
import {
  Agent,
  createServer,
  request,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type OutgoingHttpHeaders,
  type Server,
  type ServerResponse,
} from 'node:http';
import type { Socket } from 'node:net';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { sleep } from '../../helpers/cleanup.js';
import { countBlobGets, type BlobGetCount } from '../../helpers/registry.js';

export interface UpstreamProxyOptions {
  /** The upstream's base URL, e.g. `registry.url`. */
  upstream: string;
  /** Bandwidth of all responses together, in bytes per second; default unthrottled. */
  bytesPerSecond?: number;
  /** Default a free port. */
  port?: number;
}

/** One proxied request; `status` and `bytes` fill in as the response goes out. */
export interface ProxiedRequest {
  method: string;
  /** Path and query, as requested. */
  uri: string;
  /** The upstream's status; 502 if it could not be reached; 0 until it answers. */
  status: number;
  /** Body bytes sent to the client so far. */
  bytes: number;
}

/** Headers that belong to one connection, not to the message (RFC 9110 §7.6.1). */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

function endToEndHeaders(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const named = String(headers.connection ?? '')
    .split(',')
    .map((h) => h.trim().toLowerCase());
  const out: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers))
    if (value !== undefined && !HOP_BY_HOP.has(name) && !named.includes(name)) out[name] = value;
  return out;
}

/**
 * A byte budget refilled at `bytesPerSecond`, shared by every response. A sender takes what it
 * sends and waits out any debt, so concurrent senders queue behind each other and together
 * never exceed the rate by more than one burst.
 */
class TokenBucket {
  private readonly burst: number;
  private tokens: number;
  private last = performance.now();

  constructor(readonly bytesPerSecond: number) {
    // A twentieth of a second's worth (at least 64 KiB) absorbs timer lateness.
    this.burst = Math.max(64 * 1024, bytesPerSecond / 20);
    this.tokens = this.burst;
  }

  /** Takes `bytes`; returns how many ms the sender must wait before sending them. */
  take(bytes: number): number {
    const now = performance.now();
    this.tokens = Math.min(
      this.burst,
      this.tokens + ((now - this.last) / 1000) * this.bytesPerSecond,
    );
    this.last = now;
    this.tokens -= bytes;
    return this.tokens >= 0 ? 0 : (-this.tokens / this.bytesPerSecond) * 1000;
  }
}

/** Slices a chunk small enough that concurrent responses interleave under the throttle. */
const PIECE = 64 * 1024;

/** Passes a response body through, paced by the current bucket, counting what it passes. */
class Meter extends Transform {
  constructor(
    private readonly bucket: () => TokenBucket | undefined,
    private readonly onBytes: (bytes: number) => void,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.pace(chunk).then(() => done(), done);
  }

  private async pace(chunk: Buffer): Promise<void> {
    for (let offset = 0; offset < chunk.length; offset += PIECE) {
      const piece = chunk.subarray(offset, offset + PIECE);
      const wait = this.bucket()?.take(piece.length) ?? 0;
      if (wait > 0) await sleep(wait);
      this.onBytes(piece.length);
      this.push(piece);
    }
  }
}

export class UpstreamProxy {
  private readonly upstream: URL;
  private proxied: ProxiedRequest[] = [];
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private agent = new Agent({ keepAlive: true });
  private bucket: TokenBucket | undefined;
  private listening = false;

  private constructor(
    upstream: string,
    private listenPort: number,
    bytesPerSecond: number | undefined,
  ) {
    this.upstream = new URL(upstream);
    this.throttle(bytesPerSecond);
    this.server = createServer((req, res) => this.forward(req, res));
    this.server.on('connection', (socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
  }

  static async start(opts: UpstreamProxyOptions): Promise<UpstreamProxy> {
    const proxy = new UpstreamProxy(opts.upstream, opts.port ?? 0, opts.bytesPerSecond);
    await proxy.start();
    return proxy;
  }

  get port(): number {
    return this.listenPort;
  }

  /** `127.0.0.1:PORT`, as registry references spell hosts. */
  get host(): string {
    return `127.0.0.1:${this.port}`;
  }

  get url(): string {
    return `http://${this.host}`;
  }

  get running(): boolean {
    return this.listening;
  }

  /** Limits all responses together to `bytesPerSecond` from now on; undefined lifts the limit. */
  throttle(bytesPerSecond: number | undefined): void {
    if (bytesPerSecond !== undefined && !(bytesPerSecond > 0))
      throw new Error(`bad throttle ${bytesPerSecond}`);
    this.bucket = bytesPerSecond === undefined ? undefined : new TokenBucket(bytesPerSecond);
  }

  /** Every request since the last resetCounts(), in arrival order. */
  get requests(): readonly ProxiedRequest[] {
    return this.proxied;
  }

  /** Requests per `METHOD path` (query left out). */
  requestCounts(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const r of this.requests) {
      const key = `${r.method} ${r.uri.split('?')[0]}`;
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
    return counts;
  }

  /** Served (200 or 206) blob GETs per digest, with the body bytes sent for them. */
  blobGets(): Map<string, BlobGetCount> {
    return countBlobGets(this.requests);
  }

  /** Body bytes sent to clients, all requests together. */
  get bytesSent(): number {
    return this.requests.reduce((sum, r) => sum + r.bytes, 0);
  }

  resetCounts(): void {
    this.proxied = [];
  }

  /** Listens (again) on its port; the first start picks a free one. */
  async start(): Promise<void> {
    if (this.listening) return;
    this.server.listen(this.listenPort, '127.0.0.1');
    await once(this.server, 'listening');
    const address = this.server.address();
    if (address === null || typeof address === 'string') throw new Error('no port');
    this.listenPort = address.port;
    this.listening = true;
  }

  /** Stops listening and cuts every open connection, mid-transfer or idle. */
  async stop(): Promise<void> {
    if (!this.listening) return;
    this.listening = false;
    const closed = new Promise((resolve) => this.server.close(resolve));
    for (const socket of this.sockets) socket.destroy();
    // Idle keep-alive connections to the upstream go too; a fresh pool serves the next start().
    this.agent.destroy();
    this.agent = new Agent({ keepAlive: true });
    await closed;
  }

  async dispose(): Promise<void> {
    await this.stop();
    this.agent.destroy();
  }

  private forward(req: IncomingMessage, res: ServerResponse): void {
    const entry: ProxiedRequest = {
      method: req.method ?? 'GET',
      uri: req.url ?? '/',
      status: 0,
      bytes: 0,
    };
    this.proxied.push(entry);
    const toUpstream = request({
      protocol: this.upstream.protocol,
      hostname: this.upstream.hostname,
      port: this.upstream.port,
      method: entry.method,
      path: entry.uri,
      headers: { ...endToEndHeaders(req.headers), host: this.upstream.host },
      agent: this.agent,
    });
    toUpstream.on('response', (answer) => {
      entry.status = answer.statusCode ?? 502;
      const headers = endToEndHeaders(answer.headers);
      if (typeof headers.location === 'string')
        headers.location = this.rewriteLocation(headers.location);
      res.writeHead(entry.status, headers);
      const meter = new Meter(
        () => this.bucket,
        (bytes) => (entry.bytes += bytes),
      );
      // A client that goes away destroys the upstream response too, and the other way round.
      pipeline(answer, meter, res).catch(() => undefined);
    });
    toUpstream.on('error', (err) => {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      entry.status = 502;
      res.writeHead(502, { 'content-type': 'text/plain' }).end(`upstream: ${err.message}\n`);
    });
    // Not pipeline(): on an upstream error it would destroy `req`, and with it the socket the
    // 502 must go out on.
    req.pipe(toUpstream);
    res.on('close', () => {
      if (!res.writableFinished) toUpstream.destroy();
    });
  }

  /** An absolute URL on the upstream becomes the same URL on the proxy. */
  private rewriteLocation(location: string): string {
    const target = new URL(location, this.upstream);
    if (target.origin !== this.upstream.origin) return location;
    return `${this.url}${target.pathname}${target.search}`;
  }
}
