import { multiaddr } from '@multiformats/multiaddr';
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { BlobCache } from './blob-cache.js';
import { BlobTransfer } from './blob-transfer.js';
import { ClusterError } from './errors.js';
import { EtcdFetchFlights } from './fetch-flights.js';
import { InventoryGossip } from './inventory.js';
import { EtcdMembership } from './membership.js';
import { createP2PNode, type ClusterP2PNode } from './p2p-node.js';
import type { FetchFlights } from './pull-router.js';

/**
 * The agent's place in the cluster: its libp2p node, its membership (etcd, or a static list of
 * peers), the inventory gossip, blob transfer and the single flight of upstream fetches. The
 * agent composes this with the registry mirror; this file composes the cluster's own parts.
 */

export interface ClusterNodeOptions {
  readonly dataDir: string;
  readonly p2pAddress: string;
  readonly secretFile: string;
  readonly etcdEndpoints: readonly string[];
  readonly prefix: string;
  readonly staticPeers: readonly string[];
  readonly cache: BlobCache;
  readonly mirrorAddress: string;
  readonly apiAddress: string;
  readonly version: string;
  readonly logger: Logger;
}

export interface ClusterNode {
  readonly peerId: string;
  readonly multiaddrs: readonly string[];
  readonly inventory: InventoryGossip;
  readonly transfer: BlobTransfer;
  readonly flights: FetchFlights;
  /** Peers with a libp2p connection now. */
  connectedPeers(): number;
  /** Whether etcd answers; false without etcd. */
  etcdConnected(): boolean;
  stop(): Promise<void>;
}

const REDIAL_MS = 2_000;

/**
 * Without etcd there is nothing to hold a flight in: every agent that finds no peer with the
 * blob fetches it upstream itself. Static-peer clusters share finished and running fetches,
 * but not the decision of who starts one.
 */
const EVERY_AGENT_FETCHES: FetchFlights = {
  claim: () => Promise.resolve({ won: true, release: () => Promise.resolve() }),
};

export async function startClusterNode(options: ClusterNodeOptions): Promise<ClusterNode> {
  const { logger } = options;
  if (options.secretFile === '') {
    throw new ClusterError(
      'LCFS_ECLUSTER_SECRET',
      'a cluster needs clusterSecretFile (a libp2p swarm.key shared by every agent)',
    );
  }
  let secret: Uint8Array;
  try {
    secret = await readFile(options.secretFile);
  } catch (err) {
    throw new ClusterError(
      'LCFS_ECLUSTER_SECRET',
      `cannot read clusterSecretFile ${options.secretFile}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
    );
  }
  const node: ClusterP2PNode = await createP2PNode({
    address: options.p2pAddress,
    secret,
    keyFile: join(options.dataDir, 'cluster', 'peer.key'),
  });
  await node.start();
  const peerId = node.peerId.toString();
  const multiaddrs = node.getMultiaddrs().map(String);
  const transfer = new BlobTransfer(node, options.cache, logger.child({ part: 'transfer' }));
  await transfer.start();
  const inventory = new InventoryGossip(
    node,
    options.cache,
    () => transfer.uploads,
    logger.child({ part: 'inventory' }),
  );
  await inventory.start();

  let membership: EtcdMembership | undefined;
  let flights = EVERY_AGENT_FETCHES;
  if (options.etcdEndpoints.length > 0) {
    membership = await EtcdMembership.join({
      endpoints: options.etcdEndpoints,
      prefix: options.prefix,
      self: {
        peerId,
        multiaddrs,
        mirror: options.mirrorAddress,
        api: options.apiAddress,
        version: options.version,
        hostname: hostname(),
      },
      logger: logger.child({ part: 'membership' }),
    });
    membership.on('join', (member) => {
      logger.info({ peer: member.peerId, host: member.hostname }, 'peer joined');
      void dialAll();
    });
    membership.on('leave', (peer) => logger.info({ peer }, 'peer left'));
    flights = new EtcdFetchFlights(
      membership,
      options.prefix,
      peerId,
      logger.child({ part: 'flights' }),
    );
  }

  // Peers to keep connected: etcd's members and the static list. libp2p does not redial a
  // dropped connection by itself, so this does, every few seconds.
  const dialing = new Set<string>();
  const dialAll = async (): Promise<void> => {
    const targets = [
      ...options.staticPeers,
      ...(membership?.members().flatMap((member) => member.multiaddrs.slice(0, 1)) ?? []),
    ];
    await Promise.all(
      targets.map(async (address) => {
        const target = multiaddr(address);
        const remote = target.getComponents().find((part) => part.name === 'p2p')?.value;
        if (remote === peerId || dialing.has(address)) return;
        if (remote !== undefined && node.getPeers().some((peer) => peer.toString() === remote))
          return;
        dialing.add(address);
        try {
          await node.dial(target, { signal: AbortSignal.timeout(5_000) });
        } catch (err) {
          logger.debug({ address, err: (err as Error).message }, 'dialing peer failed');
        } finally {
          dialing.delete(address);
        }
      }),
    );
  };
  const redial = setInterval(() => void dialAll(), REDIAL_MS);
  // Not awaited: a peer that never answers must not hold up the agent's start.
  void dialAll();
  logger.info(
    { peerId, multiaddrs, etcd: options.etcdEndpoints.length > 0 },
    'cluster node started',
  );

  return {
    peerId,
    multiaddrs,
    inventory,
    transfer,
    flights,
    connectedPeers: () => node.getPeers().length,
    etcdConnected: () => membership?.connected ?? false,
    stop: async () => {
      clearInterval(redial);
      await membership?.leave();
      await inventory.stop();
      await transfer.stop();
      await node.stop();
    },
  };
}
