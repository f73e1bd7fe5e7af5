/**
 * A cluster member that lies: a real libp2p node with the cluster's secret, registered in etcd
 * like an agent, that claims to hold a blob and serves other bytes of the same size for it. It
 * is built from the agent's own libp2p node and protocol names; only what it says is false.
 *
 *   const liar = await LyingPeer.start({ secretFile, etcd, prefix: '/lcfs-test', blob });
 *   liar.served   // how many blob requests it answered
 *   await liar.stop();
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BLOB_PROTOCOL } from '../../../cluster/blob-transfer.js';
import { INVENTORY_PROTOCOL } from '../../../cluster/inventory.js';
import { createP2PNode, type ClusterP2PNode } from '../../../cluster/p2p-node.js';
import { FramedReader, send, sendHeader } from '../../../cluster/p2p-stream.js';
import type { Etcd } from './etcd.js';

export class LyingPeer {
  served = 0;

  private constructor(
    private readonly node: ClusterP2PNode,
    private readonly etcd: Etcd,
    private readonly key: string,
  ) {}

  static async start(options: {
    secretFile: string;
    etcd: Etcd;
    prefix: string;
    dir: string;
    /** The blob it claims, and the size it gives. */
    blob: { digest: string; size: number };
  }): Promise<LyingPeer> {
    const node = await createP2PNode({
      address: '127.0.0.1:0',
      secret: await readFile(options.secretFile),
      keyFile: join(options.dir, 'liar.key'),
    });
    await node.start();
    const peerId = node.peerId.toString();
    const key = `${options.prefix}/members/${peerId}`;
    const liar = new LyingPeer(node, options.etcd, key);
    const { digest, size } = options.blob;
    await node.handle(INVENTORY_PROTOCOL, async (stream) => {
      await sendHeader(stream, { have: [[digest, size]], fetching: [], uploads: 0 });
      await stream.close();
    });
    await node.handle(BLOB_PROTOCOL, async (stream) => {
      const request = await new FramedReader(stream).header<{ offset: number }>();
      liar.served += 1;
      await sendHeader(stream, { status: 'ok', size, complete: true });
      const junk = Buffer.alloc(64 * 1024, 0x5a);
      for (let at = request.offset; at < size; at += junk.length) {
        await send(stream, junk.subarray(0, Math.min(junk.length, size - at)));
      }
      await stream.close();
    });
    const record = {
      peerId,
      multiaddrs: node.getMultiaddrs().map(String),
      mirror: '',
      api: '',
      version: 'liar',
      hostname: 'liar',
    };
    await options.etcd.ctl('put', key, JSON.stringify(record));
    return liar;
  }

  async stop(): Promise<void> {
    await this.etcd.ctl('del', this.key).catch(() => undefined);
    await this.node.stop();
  }
}
