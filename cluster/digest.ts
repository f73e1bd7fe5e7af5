import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { ClusterError } from './errors.js';

/**
 * Content digests. The mirror only deals in `sha256:<64 hex>`: every blob and manifest it
 * caches, advertises or serves is named and checked by one.
 */

const DIGEST_PATTERN = /^sha256:[a-f0-9]{64}$/;

export function isDigest(value: string): boolean {
  return DIGEST_PATTERN.test(value);
}

/** The digest, checked; throws LCFS_EDIGEST_INVALID for anything else (a path, sha512, …). */
export function parseDigest(value: string): string {
  if (!isDigest(value)) {
    throw new ClusterError('LCFS_EDIGEST_INVALID', `unsupported or malformed digest "${value}"`);
  }
  return value;
}

export function hexOf(digest: string): string {
  return digest.slice('sha256:'.length);
}

export function digestOf(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

export function mismatch(expected: string, actual: string, what: string): ClusterError {
  return new ClusterError(
    'LCFS_EDIGEST_MISMATCH',
    `${what} does not match its digest: expected ${expected}, got ${actual}`,
  );
}

/**
 * A pass-through that hashes what flows and holds the last chunk back until the end: when the
 * hash does not match, the stream fails before the final bytes leave, so a reader never sees
 * a complete wrong blob. `hash` may already hold the bytes before the stream's first one (a
 * read that starts at an offset).
 */
export class VerifyingStream extends Transform {
  private held: Buffer | undefined;

  constructor(
    private readonly expected: string,
    private readonly hash: Hash = createHash('sha256'),
    private readonly what = `blob ${expected}`,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.hash.update(chunk);
    if (this.held !== undefined) this.push(this.held);
    this.held = chunk;
    done();
  }

  override _flush(done: TransformCallback): void {
    const actual = `sha256:${this.hash.digest('hex')}`;
    if (actual !== this.expected) return done(mismatch(this.expected, actual, this.what));
    if (this.held !== undefined) this.push(this.held);
    done();
  }
}
