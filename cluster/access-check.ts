import type { Logger } from 'pino';
import { ClusterError, isClusterError } from './errors.js';
import {
  identityKey,
  type ContentKind,
  type Identity,
  type UpstreamRegistry,
} from './upstream-registry.js';

/**
 * Private images stay private: before the mirror serves a blob from its cache or a peer, it
 * asks the upstream whether this identity may read that blob in that repository (a HEAD of the
 * blob with the identity's credentials). Peers hold blobs pulled by other hosts with other
 * credentials; without this check, any engine could read any private layer the cluster holds.
 *
 * Answers are kept for `ttlMs`. When the upstream cannot be reached (or answers 5xx), the last answer for the
 * same question stands, however old, so cached pulls keep working while the registry is down;
 * a question never asked before is refused.
 */

export type AccessDecision =
  | {
      readonly allowed: true;
      /** The size the upstream gave, when it gave one. */
      readonly size: number | undefined;
    }
  | {
      readonly allowed: false;
      /** The HTTP status the client gets: 401 (with the upstream's challenge), 403, 404, 503. */
      readonly status: number;
      readonly challenge?: string;
      readonly reason: string;
    };

const DEFAULT_TTL_MS = 60_000;

/** Names one question: may this identity read this content in this repository? */
function questionKey(
  upstream: UpstreamRegistry,
  kind: ContentKind,
  repo: string,
  digest: string,
  identity: Identity,
): string {
  return `${upstream.name}/${repo}/${kind}/${digest} ${identityKey(identity)}`;
}
const MAX_ANSWERS = 100_000;

export class AccessCheck {
  private readonly answers = new Map<string, { decision: AccessDecision; at: number }>();

  constructor(
    private readonly logger: Logger,
    private readonly ttlMs = DEFAULT_TTL_MS,
  ) {}

  async check(
    upstream: UpstreamRegistry,
    kind: ContentKind,
    repo: string,
    digest: string,
    identity: Identity,
  ): Promise<AccessDecision> {
    const key = questionKey(upstream, kind, repo, digest, identity);
    const known = this.answers.get(key);
    if (known !== undefined && Date.now() - known.at < this.ttlMs) return known.decision;
    let decision: AccessDecision;
    try {
      const res = await upstream.head(kind, repo, digest, identity);
      if (res.status >= 500) {
        throw new ClusterError(
          'LCFS_EUPSTREAM_UNREACHABLE',
          `upstream ${upstream.name} answered ${res.status}`,
        );
      }
      const length = Number(res.headers.get('content-length') ?? NaN);
      decision = res.ok
        ? { allowed: true, size: Number.isSafeInteger(length) ? length : undefined }
        : {
            allowed: false,
            status:
              res.status === 401 || res.status === 403 || res.status === 404 ? res.status : 403,
            challenge: res.headers.get('www-authenticate') ?? undefined,
            reason: `upstream ${upstream.name} answered ${res.status} for ${repo}@${digest}`,
          };
    } catch (err) {
      if (!isClusterError(err, 'LCFS_EUPSTREAM_UNREACHABLE')) throw err;
      if (known !== undefined) {
        this.logger.debug({ repo, digest }, 'upstream unreachable; using the last access answer');
        return known.decision;
      }
      return {
        allowed: false,
        status: 503,
        reason: `cannot check access to ${repo}@${digest}: ${err.message}`,
      };
    }
    this.store(key, decision);
    return decision;
  }

  /**
   * Records that the upstream served this identity the content itself (a manifest it resolved
   * from a tag), which answers the question without a HEAD.
   */
  served(
    upstream: UpstreamRegistry,
    kind: ContentKind,
    repo: string,
    digest: string,
    identity: Identity,
    size: number,
  ): void {
    this.store(questionKey(upstream, kind, repo, digest, identity), {
      allowed: true,
      size,
    });
  }

  private store(key: string, decision: AccessDecision): void {
    // Re-inserted so the map stays in age order, and the oldest answers go past the bound.
    this.answers.delete(key);
    this.answers.set(key, { decision, at: Date.now() });
    if (this.answers.size > MAX_ANSWERS) {
      this.answers.delete(this.answers.keys().next().value!);
    }
  }
}
