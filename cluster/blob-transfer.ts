import type { Libp2p, Stream } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { BlobCache } from './blob-cache.js';
import { isDigest } from './digest.js';
import { ClusterError } from './errors.js';
import { FramedReader, send, sendHeader } from './p2p-stream.js';
import type { PeerBlobClient, SourceStream } from './pull-router.js';

/**
 * Blob transfer between agents, protocol `/lcfs/blob/1.0.0`:
 *
 *   → {"digest": "sha256:…", "offset": N}\n
 *   ← {"status": "ok", "size": S, "complete": true|false}\n  then bytes N… until the end
 *   ← {"status": "missing"}\n
 *
 * A complete blob is read from the cache, verified as it goes; a blob still being fetched is
 * streamed as it arrives (`PartialBlob.tail`). Either way the sender aborts the stream, rather
 * than ending it, when something goes wrong, so the receiver never takes a cut body for a whole
 * one. The receiver checks the digest itself before it caches anything.
 */

export const BLOB_PROTOCOL = '/lcfs/blob/1.0.0';

interface BlobRequest {
  digest: string;
  offset: number;
}

type BlobResponse =
  | { status: 'ok'; size: number; complete: boolean }
  | { status: 'missing' | 'bad-request'; message?: string };

export class BlobTransfer implements PeerBlobClient {
  private active = 0;

  constructor(
    private readonly node: Libp2p,
    private readonly cache: BlobCache,
    private readonly logger: Logger,
  ) {}

  /** Uploads running now: advertised to peers as this agent's load. */
  get uploads(): number {
    return this.active;
  }

  async start(): Promise<void> {
    await this.node.handle(BLOB_PROTOCOL, (stream) => this.serve(stream), {
      maxInboundStreams: 256,
    });
  }

  async stop(): Promise<void> {
    await this.node.unhandle(BLOB_PROTOCOL);
  }

  async fetch(
    peerId: string,
    digest: string,
    offset: number,
    signal: AbortSignal,
  ): Promise<SourceStream> {
    const stream = await this.node.dialProtocol(peerIdFromString(peerId), BLOB_PROTOCOL, {
      signal,
    });
    const onAbort = (): void => stream.abort(new Error('transfer cancelled'));
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      await sendHeader(stream, { digest, offset } satisfies BlobRequest);
      await stream.close();
      const reader = new FramedReader(stream);
      const response = await reader.header<BlobResponse>();
      if (response.status !== 'ok') {
        throw new ClusterError(
          'LCFS_EPEER',
          `peer ${peerId} answered ${response.status} for ${digest}`,
        );
      }
      if (!Number.isSafeInteger(response.size) || response.size < offset) {
        throw new ClusterError('LCFS_EPEER', `peer ${peerId} gave a bad size for ${digest}`);
      }
      return { size: response.size, body: reader.body() };
    } catch (err) {
      signal.removeEventListener('abort', onAbort);
      stream.abort(err as Error);
      throw err;
    }
  }

  private async serve(stream: Stream): Promise<void> {
    this.active += 1;
    try {
      const request = await new FramedReader(stream).header<BlobRequest>();
      if (
        typeof request.digest !== 'string' ||
        !isDigest(request.digest) ||
        !Number.isSafeInteger(request.offset) ||
        request.offset < 0
      ) {
        await sendHeader(stream, { status: 'bad-request', message: 'digest or offset invalid' });
        await stream.close();
        return;
      }
      const { digest, offset } = request;
      let body: Readable;
      let response: BlobResponse;
      const cached = this.cache.stat(digest);
      const partial = this.cache.partial(digest);
      if (cached !== undefined && offset <= cached.size) {
        body = this.cache.read(digest, offset);
        response = { status: 'ok', size: cached.size, complete: true };
      } else if (partial !== undefined) {
        const size = await partial.sized();
        body = partial.tail(offset);
        response = { status: 'ok', size, complete: false };
      } else {
        await sendHeader(stream, { status: 'missing' });
        await stream.close();
        return;
      }
      await sendHeader(stream, response);
      for await (const chunk of body) await send(stream, chunk as Buffer);
      await stream.close();
    } catch (err) {
      this.logger.debug({ err }, 'blob upload to a peer failed');
      stream.abort(err instanceof Error ? err : new Error(String(err)));
    } finally {
      this.active -= 1;
    }
  }
}
