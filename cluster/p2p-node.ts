import './promise-polyfill.js';
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys';
import { gossipsub, type GossipSub } from '@libp2p/gossipsub';
import { identify } from '@libp2p/identify';
import type { Libp2p, PrivateKey } from '@libp2p/interface';
import { preSharedKey } from '@libp2p/pnet';
import { tcp } from '@libp2p/tcp';
import { createLibp2p } from 'libp2p';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { ClusterError } from './errors.js';

/**
 * The agent's libp2p node: TCP, noise, yamux and gossipsub, inside a private network. Every
 * connection is first encrypted with the cluster's pre-shared key (the swarm.key format of
 * libp2p's pnet), so a host without the secret can neither join the gossip nor fetch a blob:
 * its handshake fails before any protocol runs.
 *
 * The node's identity (its peer id) is kept in `keyFile`, so it survives restarts.
 */

export type ClusterP2PNode = Libp2p<{
  pubsub: GossipSub;
  identify: ReturnType<ReturnType<typeof identify>>;
}>;

export interface P2PNodeOptions {
  /** host:port to listen on. */
  readonly address: string;
  /** The contents of the cluster's swarm.key. */
  readonly secret: Uint8Array;
  readonly keyFile: string;
}

export async function createP2PNode(options: P2PNodeOptions): Promise<ClusterP2PNode> {
  const at = options.address.lastIndexOf(':');
  const listen = `/ip4/${options.address.slice(0, at)}/tcp/${options.address.slice(at + 1)}`;
  let protector;
  try {
    protector = preSharedKey({ psk: options.secret });
  } catch (err) {
    throw new ClusterError(
      'LCFS_ECLUSTER_SECRET',
      `cluster secret is not a valid swarm key: ${(err as Error).message}`,
    );
  }
  const node = await createLibp2p({
    privateKey: await loadOrCreateKey(options.keyFile),
    addresses: { listen: [listen] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionProtector: protector,
    services: {
      identify: identify(),
      pubsub: gossipsub({ allowPublishToZeroTopicPeers: true }),
    },
  });
  return node;
}

async function loadOrCreateKey(path: string): Promise<PrivateKey> {
  try {
    return privateKeyFromProtobuf(await readFile(path));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const key = await generateKeyPair('Ed25519');
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, privateKeyToProtobuf(key), { mode: 0o600 });
  return key;
}
