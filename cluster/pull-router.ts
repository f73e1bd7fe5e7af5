import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { BlobCache, PartialBlob } from './blob-cache.js';
import { ClusterError, isClusterError } from './errors.js';
import type { MirrorMetrics } from './metrics.js';
import { choosePeer, PeerHealth, type PeerHolding } from './peer-selection.js';
import type { ContentKind, Identity, UpstreamRegistry } from './upstream-registry.js';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Where each blob comes from. For a blob the engine asks for, in order:
 *
 * 1. the local cache;
 * 2. a peer that holds it (see peer-selection.ts for which one);
 * 3. a peer that is fetching it from upstream now, streaming as its bytes arrive;
 * 4. the upstream registry, by the one agent in the cluster that wins the blob's flight
 *    (docs/cluster.md); the others stream from that agent, as in 3.
 *
 * One fetch per blob runs on a host; every request for it follows that fetch (`PartialBlob.tail`).
 * A source that fails or stalls is left, and the fetch resumes elsewhere at the same offset.
 * When the whole blob does not match its digest, the peers that sent it are avoided and the
 * fetch starts over; the engine's transfer fails, so it retries.
 */

export type BlobSourceKind = 'local' | 'peer' | 'upstream';

export interface SourceStream {
  /** Total size of the blob. */
  readonly size: number;
  readonly body: AsyncIterable<Uint8Array>;
}

/** What the agent knows of its peers' blobs; the inventory gossip implements it. */
export interface PeerInventory {
  holders(digest: string): PeerHolding[];
}

/** Streams a blob from a peer, from an offset; the blob transfer protocol implements it. */
export interface PeerBlobClient {
  fetch(peerId: string, digest: string, offset: number, signal: AbortSignal): Promise<SourceStream>;
}

export type FlightClaim =
  | { readonly won: true; release(): Promise<void> }
  | { readonly won: false; readonly holder: string };

/** The cluster-wide single flight of upstream fetches; etcd implements it. */
export interface FetchFlights {
  claim(digest: string): Promise<FlightClaim>;
}

/** Where, and as whom, the upstream copy of a blob is fetched. */
export interface UpstreamTarget {
  readonly kind: ContentKind;
  readonly upstream: UpstreamRegistry;
  readonly repo: string;
  readonly identity: Identity;
}

export interface OpenedBlob {
  readonly size: number;
  readonly stream: Readable;
  readonly source: BlobSourceKind;
}

export interface PullRouterOptions {
  readonly cache: BlobCache;
  readonly metrics: MirrorMetrics;
  readonly logger: Logger;
  /** Absent when the agent runs standalone. */
  readonly cluster?: {
    readonly inventory: PeerInventory;
    readonly peers: PeerBlobClient;
    readonly flights: FetchFlights;
  };
}

/** A source sending nothing for this long is left for another. */
const STALL_MS = 20_000;
/** A fetch gives up after this many failed sources, or this long without a usable one. */
const MAX_FAILURES = 12;
const MAX_WAIT_MS = 60_000;
const RETRY_PAUSE_MS = 200;

interface Source {
  readonly kind: 'peer' | 'upstream';
  readonly peerId?: string;
  open(offset: number, signal: AbortSignal): Promise<SourceStream>;
  /** Called once the source is done with, whatever happened. */
  finish(): void | Promise<void>;
}

export class PullRouter {
  readonly health = new PeerHealth();
  /** The kind of source each running fetch is reading from, for the metrics' labels. */
  private readonly runningFrom = new Map<string, BlobSourceKind>();

  constructor(private readonly options: PullRouterOptions) {}

  /**
   * The blob from `offset`: from the cache, or following the host's fetch of it (started here
   * when there is none). Resolves once the size is known.
   */
  async open(digest: string, target: UpstreamTarget, offset: number): Promise<OpenedBlob> {
    const { cache } = this.options;
    const cached = cache.stat(digest);
    if (cached !== undefined) {
      if (offset > cached.size) throw rangeError(digest, offset, cached.size);
      return { size: cached.size, stream: cache.read(digest, offset), source: 'local' };
    }
    const partial = cache.partial(digest) ?? (await this.startFetch(digest, target));
    const size = await partial.sized();
    if (offset > size) throw rangeError(digest, offset, size);
    return {
      size,
      stream: partial.tail(offset),
      source: this.runningFrom.get(digest) ?? 'local',
    };
  }

  private async startFetch(digest: string, target: UpstreamTarget): Promise<PartialBlob> {
    const partial = await this.options.cache.beginPartial(digest);
    this.fetch(partial, target).catch(async (err: unknown) => {
      this.options.logger.warn({ digest, err }, 'blob fetch failed');
      await partial.fail(err as Error);
    });
    return partial;
  }

  private async fetch(partial: PartialBlob, target: UpstreamTarget): Promise<void> {
    const { digest } = partial;
    let failures = 0;
    let waitingSince: number | undefined;
    // Peers whose bytes went into the current attempt: blamed if the whole does not match.
    const contributors = new Set<string>();
    let upstreamContributed = false;
    try {
      for (;;) {
        if (failures >= MAX_FAILURES) {
          throw new ClusterError(
            'LCFS_EUPSTREAM',
            `gave up on blob ${digest} after ${failures} failed sources`,
          );
        }
        const source = await this.chooseSource(digest, target);
        if (source === undefined) {
          // No usable source for now: the peer with the blob, or with its flight, failed us a
          // moment ago. Its avoidance, or its lease if it died, ends within seconds.
          waitingSince ??= Date.now();
          if (Date.now() - waitingSince > MAX_WAIT_MS) {
            throw new ClusterError('LCFS_EUPSTREAM', `no usable source for blob ${digest}`);
          }
          await sleep(RETRY_PAUSE_MS);
          continue;
        }
        waitingSince = undefined;
        this.runningFrom.set(digest, source.kind);
        if (source.kind === 'upstream') partial.readingFromUpstream();
        try {
          const done = await this.copy(partial, source);
          if (source.peerId !== undefined) contributors.add(source.peerId);
          else upstreamContributed = true;
          if (!done) {
            failures += 1;
            continue;
          }
          // Committed (and so announced) before the flight is released: an agent that
          // claims the blob next finds it held, rather than fetching it upstream again.
          await partial.commit();
          this.options.logger.debug({ digest, from: source.kind }, 'blob cached');
          return;
        } catch (err) {
          if (!isClusterError(err, 'LCFS_EDIGEST_MISMATCH')) throw err;
          this.options.logger.error(
            { digest, peers: [...contributors], upstream: upstreamContributed },
            'fetched bytes do not match the digest; starting over without those peers',
          );
          for (const peerId of contributors) {
            this.health.failed(peerId, true);
            this.options.metrics.peerFailures.inc({ reason: 'corrupt' });
          }
          if (contributors.size === 0) throw err;
          contributors.clear();
          upstreamContributed = false;
          await partial.restart();
          failures += 1;
        } finally {
          await source.finish();
        }
      }
    } finally {
      this.runningFrom.delete(digest);
    }
  }

  /** Copies from one source into the fetch; true when the blob is complete. */
  private async copy(partial: PartialBlob, source: Source): Promise<boolean> {
    const abort = new AbortController();
    let stall = setTimeout(() => abort.abort(new Error('source stalled')), STALL_MS);
    try {
      const { size, body } = await source.open(partial.bytesWritten, abort.signal);
      partial.expectSize(size);
      for await (const chunk of body) {
        clearTimeout(stall);
        stall = setTimeout(() => abort.abort(new Error('source stalled')), STALL_MS);
        await partial.append(chunk);
      }
      if (partial.bytesWritten !== size) {
        throw new ClusterError(
          'LCFS_EPEER',
          `${source.kind} ended blob ${partial.digest} at ${partial.bytesWritten} of ${size} bytes`,
        );
      }
      return true;
    } catch (err) {
      this.options.logger.warn(
        {
          digest: partial.digest,
          source: source.kind,
          peer: source.peerId,
          at: partial.bytesWritten,
          err,
        },
        'blob source failed; resuming from another',
      );
      if (source.peerId !== undefined) {
        this.health.failed(source.peerId, false);
        this.options.metrics.peerFailures.inc({ reason: 'transfer' });
      } else if (isClusterError(err) && err.status !== undefined && err.status < 500) {
        // The upstream's own answer (404, 401, 403): asking again will not change it.
        throw err;
      }
      return false;
    } finally {
      clearTimeout(stall);
      abort.abort();
    }
  }

  /** The next source by the order in this file's comment; undefined means wait and ask again. */
  private async chooseSource(digest: string, target: UpstreamTarget): Promise<Source | undefined> {
    const cluster = this.options.cluster;
    if (cluster === undefined) return this.upstreamSource(digest, target);
    const holdings = cluster.inventory.holders(digest);
    const holder = choosePeer(holdings, this.health);
    if (holder !== undefined) return this.peerSource(holder.peerId, digest);
    // A connected peer has the whole blob but broke a transfer a moment ago: wait for it rather
    // than fetch the blob upstream again. (A peer that goes away leaves the inventory.)
    const complete = holdings.filter((holding) => holding.complete);
    if (complete.some((holding) => !this.health.avoidedForCorruption(holding.peerId))) {
      return undefined;
    }
    let claim: FlightClaim;
    try {
      claim = await cluster.flights.claim(digest);
    } catch (err) {
      // Without etcd there is no cluster-wide single flight; the pull must still work.
      this.options.logger.warn({ digest, err }, 'cannot claim the upstream fetch; fetching anyway');
      return this.upstreamSource(digest, target);
    }
    if (claim.won) return this.upstreamSource(digest, target, () => claim.release());
    if (this.health.avoided(claim.holder)) return undefined;
    return this.peerSource(claim.holder, digest);
  }

  private peerSource(peerId: string, digest: string): Source {
    const peers = this.options.cluster!.peers;
    const end = this.health.begin(peerId);
    return {
      kind: 'peer',
      peerId,
      open: (offset, signal) => peers.fetch(peerId, digest, offset, signal),
      finish: end,
    };
  }

  private upstreamSource(
    digest: string,
    target: UpstreamTarget,
    release?: () => Promise<void>,
  ): Source {
    return {
      kind: 'upstream',
      open: async (offset, signal) => {
        this.options.metrics.upstreamFetches.inc();
        return target.upstream.content(
          target.kind,
          target.repo,
          digest,
          offset,
          target.identity,
          signal,
        );
      },
      finish: release ?? (() => undefined),
    };
  }
}

function rangeError(digest: string, offset: number, size: number): ClusterError {
  return new ClusterError(
    'LCFS_EBLOB_UNKNOWN',
    `range start ${offset} is past the end of blob ${digest} (${size} bytes)`,
    416,
  );
}
