import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { ClusterError } from './errors.js';

/**
 * A client for the pull side of one upstream registry (OCI distribution API): manifests, blobs
 * with `Range`, and the registries' two auth schemes (Basic, and Bearer tokens from the realm a
 * 401 names).
 *
 * Every request is made on behalf of an identity: the engine's own `Authorization` header when
 * it sent one, otherwise the host's configured credentials, otherwise anonymous. The same
 * identity decides what the mirror may serve (see AccessCheck), so configured credentials
 * never let a client read what the upstream would refuse it.
 */

export interface Credentials {
  readonly username: string;
  readonly password: string;
}

/** Who a request is made for: a client's Authorization header, or the host's credentials. */
export type Identity =
  | { readonly kind: 'client'; readonly authorization: string }
  | { readonly kind: 'host'; readonly credentials: Credentials }
  | { readonly kind: 'anonymous' };

export function identityKey(identity: Identity): string {
  const text =
    identity.kind === 'client'
      ? identity.authorization
      : identity.kind === 'host'
        ? `${identity.credentials.username}:${identity.credentials.password}`
        : '';
  return `${identity.kind}:${createHash('sha256').update(text).digest('hex').slice(0, 16)}`;
}

/** The two kinds of content addressed by digest, named as in their URL paths. */
export type ContentKind = 'blobs' | 'manifests';

/** Every manifest type the mirror relays, for Accept headers of requests by digest. */
export const MANIFEST_TYPES = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
] as const;

export interface UpstreamBlob {
  /** Total size of the blob. */
  readonly size: number;
  /** The bytes from the offset asked for. */
  readonly body: AsyncIterable<Uint8Array>;
}

export interface UpstreamResponse {
  readonly status: number;
  readonly headers: Headers;
  readonly body: Uint8Array;
}

interface Challenge {
  readonly scheme: string;
  readonly params: Readonly<Record<string, string>>;
}

/** Parses `Bearer realm="…",service="…",scope="…"` (or `Basic realm="…"`). */
export function parseChallenge(header: string): Challenge | undefined {
  const match = /^\s*(\w+)\s*(.*)$/.exec(header);
  if (match === null) return undefined;
  const params: Record<string, string> = {};
  for (const part of match[2].matchAll(/(\w+)\s*=\s*(?:"([^"]*)"|([^,\s]*))/g)) {
    params[part[1].toLowerCase()] = part[2] ?? part[3];
  }
  return { scheme: match[1].toLowerCase(), params };
}

const HEADERS_TIMEOUT_MS = 30_000;
const TOKEN_LIFETIME_MS = 50_000;

export class UpstreamRegistry {
  /** Bearer tokens by identity and scope. */
  private readonly tokens = new Map<string, { token: string; expires: number }>();
  /** Set once the upstream asked for Basic auth: send it up front from then on. */
  private basicOnly = false;

  constructor(
    /** The registry's name as engines know it (docker.io, ghcr.io, 127.0.0.1:5000). */
    readonly name: string,
    /** Where it is reached, with no trailing slash. */
    readonly url: string,
    readonly credentials: Credentials | undefined,
    private readonly logger: Logger,
  ) {}

  /** The identity a request runs as: the client's own header, or the host's credentials. */
  identityFor(authorization: string | undefined): Identity {
    if (authorization !== undefined && authorization !== '') {
      return { kind: 'client', authorization };
    }
    if (this.credentials !== undefined) return { kind: 'host', credentials: this.credentials };
    return { kind: 'anonymous' };
  }

  /** HEAD or GET of a manifest, by tag or digest; the response is returned whatever its status. */
  async manifest(
    method: 'GET' | 'HEAD',
    repo: string,
    reference: string,
    accept: string,
    identity: Identity,
  ): Promise<UpstreamResponse> {
    const res = await this.request(method, `/v2/${repo}/manifests/${reference}`, identity, {
      accept,
    });
    const body = method === 'GET' ? new Uint8Array(await res.arrayBuffer()) : new Uint8Array();
    return { status: res.status, headers: res.headers, body };
  }

  /** HEAD of content by digest: what the upstream would answer this identity (access checks). */
  async head(
    kind: ContentKind,
    repo: string,
    digest: string,
    identity: Identity,
  ): Promise<Response> {
    const headers: Record<string, string> =
      kind === 'manifests' ? { accept: MANIFEST_TYPES.join(', ') } : {};
    const res = await this.request('HEAD', `/v2/${repo}/${kind}/${digest}`, identity, headers);
    await res.body?.cancel();
    return res;
  }

  /**
   * GET of a blob, or of a manifest by digest, from `offset`; throws LCFS_EUPSTREAM (with the
   * status) or LCFS_EBLOB_UNKNOWN unless the upstream serves it.
   */
  async content(
    kind: ContentKind,
    repo: string,
    digest: string,
    offset: number,
    identity: Identity,
    signal?: AbortSignal,
  ): Promise<UpstreamBlob> {
    const headers: Record<string, string> = offset > 0 ? { range: `bytes=${offset}-` } : {};
    if (kind === 'manifests') headers.accept = MANIFEST_TYPES.join(', ');
    const res = await this.request(
      'GET',
      `/v2/${repo}/${kind}/${digest}`,
      identity,
      headers,
      signal,
    );
    if (res.body === null || (res.status !== 200 && res.status !== 206)) {
      await res.body?.cancel();
      throw new ClusterError(
        res.status === 404 ? 'LCFS_EBLOB_UNKNOWN' : 'LCFS_EUPSTREAM',
        `upstream ${this.name} answered ${res.status} for blob ${digest} of ${repo}`,
        res.status,
      );
    }
    const length = Number(res.headers.get('content-length') ?? NaN);
    const range = /\/(\d+)\s*$/.exec(res.headers.get('content-range') ?? '');
    const size = res.status === 206 && range !== null ? Number(range[1]) : length;
    if (!Number.isSafeInteger(size)) {
      await res.body.cancel();
      throw new ClusterError('LCFS_EUPSTREAM', `upstream ${this.name} gave no size for ${digest}`);
    }
    // An upstream that ignores Range sends the whole blob: skip what we already have.
    const skip = res.status === 200 ? offset : 0;
    return { size, body: skipBytes(res.body, skip) };
  }

  private async request(
    method: string,
    path: string,
    identity: Identity,
    headers: Record<string, string> = {},
    signal?: AbortSignal,
  ): Promise<Response> {
    const send = async (authorization: string | undefined): Promise<Response> => {
      try {
        return await fetch(`${this.url}${path}`, {
          method,
          headers: authorization === undefined ? headers : { ...headers, authorization },
          signal:
            signal === undefined
              ? AbortSignal.timeout(HEADERS_TIMEOUT_MS)
              : AbortSignal.any([signal, AbortSignal.timeout(HEADERS_TIMEOUT_MS)]),
        });
      } catch (err) {
        throw new ClusterError(
          'LCFS_EUPSTREAM_UNREACHABLE',
          `upstream ${this.name} (${this.url}) is unreachable: ${(err as Error).cause instanceof Error ? ((err as Error).cause as Error).message : (err as Error).message}`,
        );
      }
    };
    const first = await send(this.cachedAuthorization(identity, path));
    if (first.status !== 401 || identity.kind === 'client') return first;
    const challenge = parseChallenge(first.headers.get('www-authenticate') ?? '');
    if (challenge === undefined) return first;
    const authorization = await this.authorize(challenge, identity);
    if (authorization === undefined) return first;
    await first.body?.cancel();
    return send(authorization);
  }

  /** A token already fetched for this identity and the scope of `path`. */
  private cachedAuthorization(identity: Identity, path: string): string | undefined {
    if (identity.kind === 'client') return identity.authorization;
    const repo = /^\/v2\/(.+)\/(?:manifests|blobs)\//.exec(path)?.[1];
    const cached = this.tokens.get(`${identityKey(identity)} repository:${repo}:pull`);
    if (cached !== undefined && cached.expires > Date.now()) return `Bearer ${cached.token}`;
    if (identity.kind === 'host' && this.basicOnly) return basic(identity.credentials);
    return undefined;
  }

  /** Answers a 401 challenge for the host's credentials or anonymously. */
  private async authorize(challenge: Challenge, identity: Identity): Promise<string | undefined> {
    const credentials = identity.kind === 'host' ? identity.credentials : undefined;
    if (challenge.scheme === 'basic') {
      this.basicOnly = true;
      return credentials === undefined ? undefined : basic(credentials);
    }
    if (challenge.scheme !== 'bearer' || challenge.params.realm === undefined) return undefined;
    const realm = new URL(challenge.params.realm);
    if (challenge.params.service !== undefined) {
      realm.searchParams.set('service', challenge.params.service);
    }
    if (challenge.params.scope !== undefined)
      realm.searchParams.set('scope', challenge.params.scope);
    let res: Response;
    try {
      res = await fetch(realm, {
        headers: credentials === undefined ? {} : { authorization: basic(credentials) },
        signal: AbortSignal.timeout(HEADERS_TIMEOUT_MS),
      });
    } catch (err) {
      this.logger.warn({ realm: realm.origin, err }, 'token realm unreachable');
      return undefined;
    }
    if (!res.ok) {
      await res.body?.cancel();
      return undefined;
    }
    const body = (await res.json()) as { token?: string; access_token?: string };
    const token = body.token ?? body.access_token;
    if (typeof token !== 'string') return undefined;
    const scope = challenge.params.scope ?? '';
    this.tokens.set(`${identityKey(identity)} ${scope}`, {
      token,
      expires: Date.now() + TOKEN_LIFETIME_MS,
    });
    return `Bearer ${token}`;
  }
}

function basic(credentials: Credentials): string {
  const pair = `${credentials.username}:${credentials.password}`;
  return `Basic ${Buffer.from(pair).toString('base64')}`;
}

async function* skipBytes(
  body: ReadableStream<Uint8Array>,
  skip: number,
): AsyncGenerator<Uint8Array> {
  let remaining = skip;
  for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
    if (remaining >= chunk.length) {
      remaining -= chunk.length;
      continue;
    }
    yield remaining > 0 ? chunk.subarray(remaining) : chunk;
    remaining = 0;
  }
}
