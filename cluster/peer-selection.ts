/**
 * Which peer to fetch a blob from. The heuristic, and why:
 *
 * 1. **Complete copies first.** A peer with the whole verified blob serves at disk speed and
 *    never stalls; a peer still fetching can only go as fast as its own source.
 * 2. **Least loaded next.** Load is the transfers this agent already runs from that peer plus
 *    the uploads the peer last advertised. A herd of agents spreads over every peer that has
 *    the blob instead of piling onto the first one to finish, and the first holder's uplink
 *    does not become the cluster's bottleneck.
 * 3. **Random among equals**, so agents that see the same inventory at the same moment still
 *    choose differently.
 *
 * Peers that failed recently are skipped: for a few seconds after a broken transfer, for much
 * longer after sending bytes that did not match their digest.
 */

export interface PeerHolding {
  readonly peerId: string;
  /** The peer has the whole verified blob (otherwise it is fetching it now). */
  readonly complete: boolean;
  /** Uploads the peer advertised it was serving. */
  readonly uploads: number;
}

export const AVOID_AFTER_FAILURE_MS = 3_000;
export const AVOID_AFTER_CORRUPTION_MS = 5 * 60_000;

export class PeerHealth {
  private readonly avoidUntil = new Map<string, number>();
  private readonly corrupt = new Set<string>();
  private readonly active = new Map<string, number>();

  /** The peer broke a transfer (reset, stall, refusal): skip it for a while. */
  failed(peerId: string, corrupt: boolean): void {
    const period = corrupt ? AVOID_AFTER_CORRUPTION_MS : AVOID_AFTER_FAILURE_MS;
    this.avoidUntil.set(peerId, Date.now() + period);
    if (corrupt) this.corrupt.add(peerId);
    else this.corrupt.delete(peerId);
  }

  /** The peer is avoided because it sent bytes that did not match. */
  avoidedForCorruption(peerId: string): boolean {
    return this.avoided(peerId) && this.corrupt.has(peerId);
  }

  avoided(peerId: string): boolean {
    const until = this.avoidUntil.get(peerId);
    if (until === undefined) return false;
    if (until > Date.now()) return true;
    this.avoidUntil.delete(peerId);
    this.corrupt.delete(peerId);
    return false;
  }

  /** Counts a transfer from `peerId` until the returned function is called. */
  begin(peerId: string): () => void {
    this.active.set(peerId, (this.active.get(peerId) ?? 0) + 1);
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      const left = (this.active.get(peerId) ?? 1) - 1;
      if (left === 0) this.active.delete(peerId);
      else this.active.set(peerId, left);
    };
  }

  activeFrom(peerId: string): number {
    return this.active.get(peerId) ?? 0;
  }
}

/** The best holder by the heuristic above, or undefined when none is usable. */
export function choosePeer(
  holdings: readonly PeerHolding[],
  health: PeerHealth,
  random: () => number = Math.random,
): PeerHolding | undefined {
  const usable = holdings.filter((holding) => !health.avoided(holding.peerId));
  const ranked = usable.map((holding) => ({
    holding,
    rank: [holding.complete ? 0 : 1, health.activeFrom(holding.peerId) + holding.uploads],
  }));
  let best: typeof ranked = [];
  for (const entry of ranked) {
    const top = best[0];
    const order =
      top === undefined ? -1 : entry.rank[0] - top.rank[0] || entry.rank[1] - top.rank[1];
    if (order < 0) best = [entry];
    else if (order === 0) best.push(entry);
  }
  if (best.length === 0) return undefined;
  return best[Math.floor(random() * best.length)].holding;
}
