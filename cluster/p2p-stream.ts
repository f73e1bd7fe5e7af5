import type { Stream } from '@libp2p/interface';
import { ClusterError } from './errors.js';

/**
 * Framing for lcfs's own libp2p protocols: a request or response header is one line of JSON,
 * and a body, when there is one, is the raw bytes that follow until the sender closes.
 */

const MAX_HEADER_BYTES = 64 * 1024;

function bytesOf(chunk: Uint8Array | { subarray(): Uint8Array }): Uint8Array {
  return chunk instanceof Uint8Array ? chunk : chunk.subarray();
}

/** Sends bytes with backpressure: waits for the stream to drain when its buffer is full. */
export async function send(stream: Stream, bytes: Uint8Array): Promise<void> {
  if (!stream.send(bytes)) await stream.onDrain();
}

export async function sendHeader(stream: Stream, header: object): Promise<void> {
  await send(stream, Buffer.from(`${JSON.stringify(header)}\n`));
}

/** Reads a stream as a header line, then a body of the bytes that follow. */
export class FramedReader {
  private readonly chunks: AsyncIterator<Uint8Array | { subarray(): Uint8Array }>;
  private pending: Uint8Array = new Uint8Array();

  constructor(stream: Stream) {
    this.chunks = stream[Symbol.asyncIterator]();
  }

  /** The header line, parsed; throws LCFS_EPEER on a closed stream or a malformed header. */
  async header<T>(): Promise<T> {
    for (;;) {
      const end = this.pending.indexOf(0x0a);
      if (end > MAX_HEADER_BYTES || (end < 0 && this.pending.length > MAX_HEADER_BYTES)) {
        throw new ClusterError('LCFS_EPEER', 'peer sent a header longer than 64 KiB');
      }
      if (end >= 0) {
        const line = Buffer.from(this.pending.subarray(0, end)).toString('utf8');
        this.pending = this.pending.subarray(end + 1);
        try {
          return JSON.parse(line) as T;
        } catch {
          throw new ClusterError('LCFS_EPEER', 'peer sent a malformed header');
        }
      }
      const next = await this.chunks.next();
      if (next.done === true) throw new ClusterError('LCFS_EPEER', 'peer closed before a header');
      this.pending = Buffer.concat([this.pending, bytesOf(next.value)]);
    }
  }

  /** The bytes after the header, until the sender closes. */
  async *body(): AsyncGenerator<Uint8Array> {
    if (this.pending.length > 0) yield this.pending;
    this.pending = new Uint8Array();
    for (;;) {
      const next = await this.chunks.next();
      if (next.done === true) return;
      yield bytesOf(next.value);
    }
  }
}
