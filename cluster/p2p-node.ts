import './promise-polyfill.js';
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys';
import { gossipsub, type GossipSub } from '@libp2p/gossipsub';
import { identify } from '@libp2p/identify';
import type { Libp2p, PrivateKey } from '@libp2p/interface';
import { tcp } from '@libp2p/tcp';
import { createLibp2p } from 'libp2p';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { handshakePrologue, parseClusterSecret } from './cluster-secret.js';

/**
 * The agent's libp2p node: TCP, noise, yamux and gossipsub, closed to hosts without the cluster
 * secret. The secret keys the Noise handshake (as its prologue): a host without it fails the
 * handshake before any protocol runs, so it can neither read the gossip nor fetch a blob.
 *
 * Why not libp2p's private network (@libp2p/pnet), which the design first named: it wraps every
 * connection in a second cipher (XSalsa20 in WebAssembly) on top of Noise's, which costs CPU on
 * every byte, and it decrypts whatever backlog TCP hands it in one call, which exceeds the
 * WebAssembly memory limit under load (64 MiB) and crashes the agent. docs/cluster.md has more.
 *
 * The connection monitor's pings must not close a connection that is busy moving blobs: a ping
 * stuck behind megabytes of data is slow, not dead. A dead peer's TCP connection closes anyway.
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
  const prologue = handshakePrologue(parseClusterSecret(options.secret));
  const node = await createLibp2p({
    privateKey: await loadOrCreateKey(options.keyFile),
    addresses: { listen: [listen] },
    transports: [tcp()],
    connectionEncrypters: [noise({ prologueBytes: prologue })],
    streamMuxers: [yamux()],
    connectionMonitor: { abortConnectionOnPingFailure: false },
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
