import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import type { AccessCheck } from './access-check.js';
import type { BlobCache } from './blob-cache.js';
import { digestOf, isDigest, mismatch } from './digest.js';
import { ClusterError, isClusterError } from './errors.js';
import type { MirrorMetrics } from './metrics.js';
import type { PullRouter, UpstreamTarget } from './pull-router.js';
import type { TagMemory } from './tag-memory.js';
import type { ContentKind } from './upstream-registry.js';
import type { Upstreams } from './upstreams.js';

/**
 * The registry mirror: the pull side of the OCI distribution API, served to the engines on this
 * host (dockerd's `registry-mirrors`, containerd's hosts.toml). Blobs, and manifests by digest,
 * come through the PullRouter (cache, then peers, then upstream) after an AccessCheck; tags are
 * resolved upstream, on behalf of the client's own identity.
 *
 *   GET  /v2/                                  API version check
 *   HEAD|GET /v2/<name>/manifests/<tag|digest>  with Accept negotiation (upstream's, for tags)
 *   HEAD|GET /v2/<name>/blobs/<digest>          with Range: bytes=N- or N-M
 *
 * `?ns=<registry>` names the upstream; without it the request is for Docker Hub.
 */

export interface RegistryMirrorOptions {
  /** host:port to listen on. */
  readonly address: string;
  readonly upstreams: Upstreams;
  readonly router: PullRouter;
  readonly cache: BlobCache;
  readonly access: AccessCheck;
  readonly tags: TagMemory;
  readonly serveStaleTags: boolean;
  readonly metrics: MirrorMetrics;
  readonly logger: Logger;
}

export interface RegistryMirror {
  /** The address it listens on (the port filled in when 0 was asked for). */
  readonly address: string;
  close(): Promise<void>;
}

const ROUTE =
  /^\/v2\/((?:[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)\/(manifests|blobs)\/([^/]+)$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;

/** OCI distribution error codes by our codes. */
function httpErrorOf(err: unknown): { status: number; code: string; message: string } {
  const message = err instanceof Error ? err.message : String(err);
  if (!isClusterError(err)) return { status: 500, code: 'UNKNOWN', message };
  switch (err.code) {
    case 'LCFS_EDIGEST_INVALID':
      return { status: 400, code: 'DIGEST_INVALID', message };
    case 'LCFS_EBLOB_UNKNOWN':
      return { status: err.status === 416 ? 416 : 404, code: 'BLOB_UNKNOWN', message };
    case 'LCFS_EMANIFEST_UNKNOWN':
      return { status: 404, code: 'MANIFEST_UNKNOWN', message };
    case 'LCFS_EUPSTREAM_UNREACHABLE':
      return { status: 503, code: 'UNAVAILABLE', message };
    case 'LCFS_EACCESS_DENIED': {
      const status = err.status ?? 403;
      const code =
        status === 401
          ? 'UNAUTHORIZED'
          : status === 404
            ? 'NAME_UNKNOWN'
            : status === 503
              ? 'UNAVAILABLE'
              : 'DENIED';
      return { status, code, message };
    }
    default:
      return {
        status: err.status !== undefined && err.status >= 400 ? err.status : 502,
        code: 'UNKNOWN',
        message,
      };
  }
}

/** The digest at the end of a request's path, if there is one. */
function digestIn(url: string | undefined): string {
  return /sha256:[a-f0-9]{64}$/.exec(new URL(url ?? '/', 'http://mirror').pathname)?.[0] ?? '';
}

/** The media type of a manifest, from its own `mediaType`, or its shape for OCI ones without. */
export function manifestTypeOf(body: Uint8Array): string {
  try {
    const parsed = JSON.parse(Buffer.from(body).toString('utf8')) as {
      mediaType?: unknown;
      manifests?: unknown;
    };
    if (typeof parsed.mediaType === 'string') return parsed.mediaType;
    return Array.isArray(parsed.manifests)
      ? 'application/vnd.oci.image.index.v1+json'
      : 'application/vnd.oci.image.manifest.v1+json';
  } catch {
    return 'application/octet-stream';
  }
}

/** `bytes=N-` or `bytes=N-M`; undefined for no header; throws on one we do not serve. */
function parseRange(header: string | undefined): { start: number; end?: number } | undefined {
  if (header === undefined) return undefined;
  const match = /^bytes=(\d+)-(\d*)$/.exec(header.trim());
  if (match === null) {
    throw new ClusterError('LCFS_EBLOB_UNKNOWN', `unsupported Range "${header}"`, 416);
  }
  const range = { start: Number(match[1]), end: match[2] === '' ? undefined : Number(match[2]) };
  if (range.end !== undefined && range.end < range.start) {
    throw new ClusterError('LCFS_EBLOB_UNKNOWN', `Range "${header}" ends before it starts`, 416);
  }
  return range;
}

export async function startRegistryMirror(options: RegistryMirrorOptions): Promise<RegistryMirror> {
  const { logger } = options;
  const server: Server = createServer((req, res) => {
    handle(options, req, res).catch((err: unknown) => {
      const { status, code, message } = httpErrorOf(err);
      logger[status >= 500 ? 'warn' : 'debug']({ url: req.url, err }, 'mirror request failed');
      if (res.headersSent) {
        // Mid-body: cutting the connection is the only way to tell the engine the bytes are bad.
        res.destroy(err as Error);
        return;
      }
      const body = JSON.stringify({ errors: [{ code, message }] });
      if (status === 416) {
        const size = options.cache.stat(digestIn(req.url))?.size;
        if (size !== undefined) res.setHeader('content-range', `bytes */${size}`);
      }
      if (isClusterError(err, 'LCFS_EACCESS_DENIED') && err.challenge !== undefined) {
        res.setHeader('www-authenticate', err.challenge);
      }
      res.writeHead(status, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
      });
      res.end(req.method === 'HEAD' ? undefined : body);
    });
  });
  const [host, port] = options.address.split(':');
  server.listen(Number(port), host);
  await once(server, 'listening');
  const bound = server.address() as AddressInfo;
  const address = `${bound.address}:${bound.port}`;
  logger.info({ address }, 'registry mirror listening');
  return {
    address,
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

async function handle(
  options: RegistryMirrorOptions,
  req: IncomingMessage,
  res: ServerResponse,
): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://mirror');
  res.setHeader('docker-distribution-api-version', 'registry/2.0');
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD' }).end();
    return;
  }
  if (url.pathname === '/v2/' || url.pathname === '/v2') {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': 2 });
    res.end(req.method === 'HEAD' ? undefined : '{}');
    return;
  }
  const route = ROUTE.exec(url.pathname);
  if (route === null) {
    throw new ClusterError('LCFS_EBLOB_UNKNOWN', `no such registry route: ${url.pathname}`, 404);
  }
  const [, repo, kind, reference] = route as unknown as [string, string, ContentKind, string];
  const upstream = options.upstreams.resolve(url.searchParams.get('ns'));
  const identity = upstream.identityFor(req.headers.authorization);
  const target: UpstreamTarget = { kind, upstream, repo, identity };
  if (kind === 'manifests' && !isDigest(reference)) {
    if (!TAG.test(reference)) {
      throw new ClusterError('LCFS_EMANIFEST_UNKNOWN', `invalid tag or digest "${reference}"`);
    }
    return serveTag(options, req, res, target, reference);
  }
  if (!isDigest(reference)) {
    throw new ClusterError(
      'LCFS_EDIGEST_INVALID',
      `unsupported or malformed digest "${reference}"`,
    );
  }
  return serveByDigest(options, req, res, target, reference);
}

/** A blob, or a manifest by digest: checked against the upstream's access rules, then routed. */
async function serveByDigest(
  options: RegistryMirrorOptions,
  req: IncomingMessage,
  res: ServerResponse,
  target: UpstreamTarget,
  digest: string,
): Promise<void> {
  const decision = await options.access.check(
    target.upstream,
    target.kind,
    target.repo,
    digest,
    target.identity,
  );
  if (!decision.allowed) {
    throw new ClusterError(
      'LCFS_EACCESS_DENIED',
      decision.reason,
      decision.status,
      decision.challenge,
    );
  }
  const range = parseRange(req.headers.range);
  const known =
    options.cache.stat(digest)?.size ?? options.cache.partial(digest)?.size ?? decision.size;
  const isManifest = target.kind === 'manifests';
  if (req.method === 'HEAD' && known !== undefined && !isManifest) {
    res.writeHead(200, {
      'content-length': known,
      'docker-content-digest': digest,
      'content-type': 'application/octet-stream',
      'accept-ranges': 'bytes',
    });
    res.end();
    return;
  }
  const opened = await options.router.open(digest, target, range?.start ?? 0);
  const kindLabel = isManifest ? 'manifest' : 'blob';
  options.metrics.requestsServed.inc({ source: opened.source, kind: kindLabel });
  if (isManifest) {
    // Manifests are small: read whole (verified by the stream) to name their media type.
    const chunks: Buffer[] = [];
    for await (const chunk of opened.stream) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    options.metrics.bytesServed.inc({ source: opened.source }, body.length);
    sendManifest(res, req.method === 'HEAD', body, digest);
    return;
  }
  const start = range?.start ?? 0;
  if (range !== undefined && start >= opened.size) {
    opened.stream.destroy();
    throw new ClusterError(
      'LCFS_EBLOB_UNKNOWN',
      `range start ${start} is past the end of blob ${digest} (${opened.size} bytes)`,
      416,
    );
  }
  const end = range?.end === undefined ? opened.size - 1 : Math.min(range.end, opened.size - 1);
  const headers: Record<string, string | number> = {
    'content-length': end - start + 1,
    'docker-content-digest': digest,
    'content-type': 'application/octet-stream',
    'accept-ranges': 'bytes',
  };
  if (range !== undefined) headers['content-range'] = `bytes ${start}-${end}/${opened.size}`;
  res.writeHead(range === undefined ? 200 : 206, headers);
  if (req.method === 'HEAD') {
    opened.stream.destroy();
    res.end();
    return;
  }
  let remaining = end - start + 1;
  const counted = async function* (source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
    for await (const chunk of source) {
      const part = chunk.length > remaining ? chunk.subarray(0, remaining) : chunk;
      remaining -= part.length;
      options.metrics.bytesServed.inc({ source: opened.source }, part.length);
      yield part;
      if (remaining === 0) return;
    }
  };
  await pipeline(opened.stream, counted, res);
}

function sendManifest(res: ServerResponse, headOnly: boolean, body: Buffer, digest: string): void {
  res.writeHead(200, {
    'content-type': manifestTypeOf(body),
    'content-length': body.length,
    'docker-content-digest': digest,
  });
  res.end(headOnly ? undefined : body);
}

/**
 * A manifest by tag: resolved by the upstream for the client's identity, so it sees what the
 * upstream would show it. The manifest is cached by digest on the way (peers may then serve
 * it by digest); when the upstream is down, the last digest seen stands if the operator allowed.
 */
async function serveTag(
  options: RegistryMirrorOptions,
  req: IncomingMessage,
  res: ServerResponse,
  target: UpstreamTarget,
  tag: string,
): Promise<void> {
  const { upstream, repo, identity } = target;
  const accept = req.headers.accept ?? '*/*';
  let answer;
  try {
    answer = await upstream.manifest('GET', repo, tag, accept, identity);
  } catch (err) {
    if (!isClusterError(err, 'LCFS_EUPSTREAM_UNREACHABLE') || !options.serveStaleTags) throw err;
    const digest = await options.tags.recall(upstream.name, repo, tag);
    if (digest === undefined) throw err;
    options.logger.info(
      { repo, tag, digest },
      'upstream unreachable; serving the last digest of the tag',
    );
    return serveByDigest(options, req, res, target, digest);
  }
  if (answer.status !== 200) {
    relayFailure(res, req.method === 'HEAD', answer.status, answer.headers, answer.body);
    return;
  }
  const digest = digestOf(answer.body);
  const claimed = answer.headers.get('docker-content-digest');
  if (claimed !== null && claimed !== digest)
    throw mismatch(claimed, digest, `manifest ${repo}:${tag}`);
  await options.tags.remember(upstream.name, repo, tag, digest);
  options.access.served(upstream, 'manifests', repo, digest, identity, answer.body.length);
  await cacheManifest(options.cache, digest, answer.body);
  options.metrics.requestsServed.inc({ source: 'upstream', kind: 'manifest' });
  res.writeHead(200, {
    'content-type': answer.headers.get('content-type') ?? manifestTypeOf(answer.body),
    'content-length': answer.body.length,
    'docker-content-digest': digest,
  });
  res.end(req.method === 'HEAD' ? undefined : answer.body);
}

async function cacheManifest(cache: BlobCache, digest: string, body: Uint8Array): Promise<void> {
  if (cache.stat(digest) !== undefined || cache.partial(digest) !== undefined) return;
  const partial = await cache.beginPartial(digest);
  try {
    partial.expectSize(body.length);
    await partial.append(body);
    await partial.commit();
  } catch (err) {
    await partial.fail(err as Error);
    throw err;
  }
}

/** The upstream's refusal (401 with its challenge, 404, …), passed on as it was. */
function relayFailure(
  res: ServerResponse,
  headOnly: boolean,
  status: number,
  headers: Headers,
  body: Uint8Array,
): void {
  const out: Record<string, string | number> = {
    'content-type': headers.get('content-type') ?? 'application/json',
    'content-length': body.length,
  };
  const challenge = headers.get('www-authenticate');
  if (challenge !== null) out['www-authenticate'] = challenge;
  res.writeHead(status, out);
  res.end(headOnly ? undefined : body);
}
