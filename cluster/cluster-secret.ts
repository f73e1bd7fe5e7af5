import { createHash, randomBytes } from 'node:crypto';
import { ClusterError } from './errors.js';

/**
 * The cluster secret: 32 random bytes shared by every agent, in libp2p's swarm.key text format
 * so that the usual tools can make and read it:
 *
 *   /key/swarm/psk/1.0.0/
 *   /base16/
 *   <64 hex digits>
 *
 * It keys the Noise handshake of every connection between agents (see p2p-node.ts).
 */

const HEADER = ['/key/swarm/psk/1.0.0/', '/base16/'];

/** A new secret, as the file's text. */
export function generateClusterSecret(): string {
  return `${HEADER.join('\n')}\n${randomBytes(32).toString('hex')}\n`;
}

/** The 32 key bytes from the file's contents; throws LCFS_ECLUSTER_SECRET on anything else. */
export function parseClusterSecret(contents: Uint8Array): Uint8Array {
  const lines = Buffer.from(contents).toString('utf8').trim().split(/\r?\n/);
  const [codec, encoding, key] = lines;
  if (
    lines.length !== 3 ||
    codec !== HEADER[0] ||
    encoding !== HEADER[1] ||
    !/^[0-9a-f]{64}$/i.test(key)
  ) {
    throw new ClusterError(
      'LCFS_ECLUSTER_SECRET',
      'cluster secret must be a swarm.key: "/key/swarm/psk/1.0.0/", "/base16/", then 64 hex digits',
    );
  }
  return Buffer.from(key, 'hex');
}

/**
 * The Noise prologue both sides of a connection must share. It is never sent: it is mixed into
 * the handshake hash, so a side with another secret fails the handshake's first authenticated
 * message and learns nothing of the other's identity.
 */
export function handshakePrologue(secret: Uint8Array): Uint8Array {
  return createHash('sha256').update('lcfs cluster handshake v1\0').update(secret).digest();
}
