import type { GossipSub, Message } from '@libp2p/gossipsub';
import type { Libp2p, PeerId, Stream } from '@libp2p/interface';
import type { Logger } from 'pino';
import type { BlobCache, BlobInfo } from './blob-cache.js';
import { isDigest } from './digest.js';
import { FramedReader, sendHeader } from './p2p-stream.js';
import type { PeerHolding } from './peer-selection.js';
import type { PeerInventory } from './pull-router.js';

/**
 * Which blobs each peer holds, complete or being fetched, learnt two ways:
 *
 * - **gossip** (gossipsub topic `lcfs/inventory/1`): every change to the local cache is
 *   announced, batched over a few milliseconds: blobs added, fetches started, blobs dropped;
 * - **anti-entropy** (protocol `/lcfs/inventory/1.0.0`): on each new connection, and every
 *   `SYNC_INTERVAL_MS` with one random peer, the whole inventory is asked for and replaces what
 *   was known, so a joining agent knows everything at once and a lost message is repaired.
 *
 * A peer's entries go when its connection does. Messages are signed by gossipsub, so the
 * sender's identity is the message's `from`, not anything it wrote in the body.
 */

export const INVENTORY_TOPIC = 'lcfs/inventory/1';
export const INVENTORY_PROTOCOL = '/lcfs/inventory/1.0.0';
const BATCH_MS = 5;
const SYNC_INTERVAL_MS = 30_000;
const UPLOADS_REFRESH_MS = 2_000;

/** What goes over the wire, as a gossip message or the answer of a sync. */
interface InventoryUpdate {
  /** Replace everything known of the sender (a sync answer). */
  full?: boolean;
  have?: Array<[string, number]>;
  fetching?: string[];
  dropped?: string[];
  uploads?: number;
}

interface PeerView {
  complete: Map<string, number>;
  fetching: Set<string>;
  uploads: number;
}

export class InventoryGossip implements PeerInventory {
  private readonly peers = new Map<string, PeerView>();
  private pending: InventoryUpdate | undefined;
  private timers: NodeJS.Timeout[] = [];
  private readonly unsubscribe: Array<() => void> = [];
  private lastUploads = 0;

  constructor(
    private readonly node: Libp2p<{ pubsub: GossipSub }>,
    private readonly cache: BlobCache,
    private readonly uploads: () => number,
    private readonly logger: Logger,
  ) {}

  async start(): Promise<void> {
    const pubsub = this.node.services.pubsub;
    pubsub.subscribe(INVENTORY_TOPIC);
    const onMessage = (event: CustomEvent<Message>): void => this.received(event.detail);
    pubsub.addEventListener('message', onMessage);
    this.unsubscribe.push(() => pubsub.removeEventListener('message', onMessage));

    await this.node.handle(INVENTORY_PROTOCOL, (stream) => this.answerSync(stream));
    const onConnect = (event: CustomEvent<PeerId>): void => void this.syncFrom(event.detail);
    const onDisconnect = (event: CustomEvent<PeerId>): void => {
      this.peers.delete(event.detail.toString());
    };
    this.node.addEventListener('peer:connect', onConnect);
    this.node.addEventListener('peer:disconnect', onDisconnect);
    this.unsubscribe.push(
      () => this.node.removeEventListener('peer:connect', onConnect),
      () => this.node.removeEventListener('peer:disconnect', onDisconnect),
    );

    const onAdded = (blob: BlobInfo): void => this.queue({ have: [[blob.digest, blob.size]] });
    const onGone = (blob: { digest: string }): void => this.queue({ dropped: [blob.digest] });
    const onFetching = (blob: { digest: string }): void => this.queue({ fetching: [blob.digest] });
    this.cache.on('added', onAdded);
    this.cache.on('removed', onGone);
    this.cache.on('fetching', onFetching);
    this.cache.on('abandoned', onGone);
    this.unsubscribe.push(() => {
      this.cache.off('added', onAdded);
      this.cache.off('removed', onGone);
      this.cache.off('fetching', onFetching);
      this.cache.off('abandoned', onGone);
    });

    this.timers.push(
      setInterval(() => void this.syncWithRandomPeer(), SYNC_INTERVAL_MS),
      setInterval(() => {
        const uploads = this.uploads();
        if (uploads !== this.lastUploads) this.queue({});
      }, UPLOADS_REFRESH_MS),
    );
  }

  async stop(): Promise<void> {
    for (const timer of this.timers) clearInterval(timer);
    this.timers = [];
    for (const undo of this.unsubscribe.splice(0)) undo();
    this.node.services.pubsub.unsubscribe(INVENTORY_TOPIC);
    await this.node.unhandle(INVENTORY_PROTOCOL);
  }

  holders(digest: string): PeerHolding[] {
    const found: PeerHolding[] = [];
    for (const [peerId, view] of this.peers) {
      if (view.complete.has(digest)) found.push({ peerId, complete: true, uploads: view.uploads });
      else if (view.fetching.has(digest)) {
        found.push({ peerId, complete: false, uploads: view.uploads });
      }
    }
    return found;
  }

  /** Distinct blobs peers hold or are fetching. */
  knownBlobs(): number {
    const digests = new Set<string>();
    for (const view of this.peers.values()) {
      for (const digest of view.complete.keys()) digests.add(digest);
      for (const digest of view.fetching) digests.add(digest);
    }
    return digests.size;
  }

  /** Asks `peer` for its whole inventory, replacing what was known of it. */
  async syncFrom(peer: PeerId): Promise<void> {
    try {
      const stream = await this.node.dialProtocol(peer, INVENTORY_PROTOCOL, {
        signal: AbortSignal.timeout(10_000),
      });
      await stream.close();
      const update = await new FramedReader(stream).header<InventoryUpdate>();
      this.apply(peer.toString(), { ...update, full: true });
    } catch (err) {
      this.logger.debug({ peer: peer.toString(), err }, 'inventory sync failed');
    }
  }

  private async syncWithRandomPeer(): Promise<void> {
    const connected = this.node.getPeers();
    if (connected.length === 0) return;
    await this.syncFrom(connected[Math.floor(Math.random() * connected.length)]);
  }

  private snapshot(): InventoryUpdate {
    return {
      have: this.cache.list().map((blob) => [blob.digest, blob.size]),
      fetching: this.cache.upstreamFetches().map((partial) => partial.digest),
      uploads: this.uploads(),
    };
  }

  private async answerSync(stream: Stream): Promise<void> {
    try {
      await sendHeader(stream, this.snapshot());
      await stream.close();
    } catch (err) {
      stream.abort(err as Error);
    }
  }

  /** Adds to the next gossip message; messages go out every few ms, not per change. */
  private queue(update: InventoryUpdate): void {
    if (this.pending === undefined) {
      this.pending = {};
      setTimeout(() => void this.flush(), BATCH_MS);
    }
    const pending = this.pending;
    if (update.have !== undefined) (pending.have ??= []).push(...update.have);
    if (update.fetching !== undefined) (pending.fetching ??= []).push(...update.fetching);
    if (update.dropped !== undefined) (pending.dropped ??= []).push(...update.dropped);
  }

  private async flush(): Promise<void> {
    const update = this.pending;
    this.pending = undefined;
    if (update === undefined) return;
    this.lastUploads = this.uploads();
    update.uploads = this.lastUploads;
    try {
      await this.node.services.pubsub.publish(INVENTORY_TOPIC, Buffer.from(JSON.stringify(update)));
    } catch (err) {
      // No subscribed peer yet: they will learn it by anti-entropy when they connect.
      this.logger.debug({ err }, 'inventory announcement not sent');
    }
  }

  private received(message: Message): void {
    if (message.topic !== INVENTORY_TOPIC || message.type !== 'signed') return;
    try {
      const update = JSON.parse(Buffer.from(message.data).toString('utf8')) as InventoryUpdate;
      this.apply(message.from.toString(), { ...update, full: false });
    } catch (err) {
      this.logger.warn({ from: message.from.toString(), err }, 'malformed inventory message');
    }
  }

  private apply(peerId: string, update: InventoryUpdate): void {
    if (peerId === this.node.peerId.toString()) return;
    let view = this.peers.get(peerId);
    if (view === undefined || update.full === true) {
      view = { complete: new Map(), fetching: new Set(), uploads: 0 };
      this.peers.set(peerId, view);
    }
    for (const entry of update.have ?? []) {
      if (!Array.isArray(entry) || !isDigest(String(entry[0])) || !Number.isSafeInteger(entry[1]))
        continue;
      view.complete.set(entry[0], entry[1]);
      view.fetching.delete(entry[0]);
    }
    for (const digest of update.fetching ?? []) {
      if (isDigest(String(digest)) && !view.complete.has(digest)) view.fetching.add(digest);
    }
    for (const digest of update.dropped ?? []) {
      view.complete.delete(digest);
      view.fetching.delete(digest);
    }
    if (Number.isSafeInteger(update.uploads)) view.uploads = update.uploads!;
  }
}
