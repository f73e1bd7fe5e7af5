/**
 * The registry mirror's blob cache on real files in a temp dir: a blob enters only through a
 * PartialBlob whose bytes match the digest; tail readers follow a fetch but never get the last
 * byte before the digest matched; reads verify (from any offset) and evict a blob corrupted on
 * disk; LRU eviction keeps the bound and spares blobs being read; a reopened cache finds its
 * blobs and drops unfinished fetches.
 */
import assert from 'node:assert/strict';
import { mkdtemp, open, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pino } from 'pino';
import { BlobCache, type BlobInfo, type PartialBlob } from '../../cluster/blob-cache.js';
import { digestOf, hexOf } from '../../cluster/digest.js';
import { sleep } from '../helpers/cleanup.js';
import { SeededRandom } from '../fs/helpers/prng.js';

const KiB = 1024;
const logger = pino({ level: 'silent' });

/** Bytes that a stream delivered, and how it ended. */
async function drain(stream: Readable): Promise<{ bytes: Buffer; error: unknown }> {
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of stream) chunks.push(chunk as Buffer);
    return { bytes: Buffer.concat(chunks), error: undefined };
  } catch (error) {
    return { bytes: Buffer.concat(chunks), error };
  }
}

/** Whether `promise` is still pending after `ms`. */
async function pendingAfter(promise: Promise<unknown>, ms: number): Promise<boolean> {
  const timeout = Symbol('pending');
  return (await Promise.race([promise, sleep(ms).then(() => timeout)])) === timeout;
}

/** The next chunk a stream gives; fails if it ended instead. */
async function nextChunk(reader: AsyncIterator<unknown>): Promise<Buffer> {
  const next = await reader.next();
  assert.equal(next.done, false, 'the stream ended');
  return next.value as Buffer;
}

async function put(cache: BlobCache, bytes: Buffer): Promise<string> {
  const digest = digestOf(bytes);
  const partial = await cache.beginPartial(digest);
  partial.expectSize(bytes.length);
  await partial.append(bytes);
  await partial.commit();
  return digest;
}

async function flipByte(path: string, at: number): Promise<void> {
  const file = await open(path, 'r+');
  try {
    const one = Buffer.alloc(1);
    await file.read(one, 0, 1, at);
    one[0] ^= 0xff;
    await file.write(one, 0, 1, at);
  } finally {
    await file.close();
  }
}

describe('cluster: BlobCache and PartialBlob', function () {
  const random = new SeededRandom('blob-cache');
  let dir: string;
  let cache: BlobCache;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lcfs-blob-cache-'));
    cache = await BlobCache.open({ dir, maxBytes: 64 << 20, logger });
  });

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  describe('a blob enters only through a commit that matches its digest', () => {
    it('commits matching bytes: stat, list, usedBytes, the file and an "added" event', async () => {
      const bytes = random.bytes(300 * KiB);
      const added: BlobInfo[] = [];
      cache.on('added', (info) => added.push(info));
      const digest = await put(cache, bytes);
      assert.deepEqual(cache.stat(digest), { digest, size: bytes.length });
      assert.deepEqual(cache.list(), [{ digest, size: bytes.length }]);
      assert.equal(cache.usedBytes, bytes.length);
      assert.equal(cache.partial(digest), undefined);
      assert.deepEqual(added, [{ digest, size: bytes.length }]);
      assert.deepEqual((await drain(cache.read(digest))).bytes, bytes);
      await assert.rejects(cache.beginPartial(digest), /already cached/);
    });

    it('refuses bytes of another digest with LCFS_EDIGEST_MISMATCH and caches nothing', async () => {
      const wanted = random.bytes(100 * KiB);
      const digest = digestOf(wanted);
      const wrong = Buffer.from(wanted);
      wrong[wrong.length >> 1] ^= 1;
      const added: BlobInfo[] = [];
      cache.on('added', (info) => added.push(info));
      const partial = await cache.beginPartial(digest);
      await partial.append(wrong);
      await assert.rejects(partial.commit(), { code: 'LCFS_EDIGEST_MISMATCH' });
      assert.equal(cache.stat(digest), undefined);
      assert.equal(cache.usedBytes, 0);
      assert.deepEqual(await readdir(join(dir, 'sha256')), []);
      assert.deepEqual(added, []);
      assert.throws(() => cache.read(digest), { code: 'LCFS_EBLOB_UNKNOWN' });

      await partial.fail(new Error('gave up'));
      assert.equal(cache.partial(digest), undefined);
      assert.deepEqual(await readdir(cache.partialDir), []);
    });

    it('refuses more bytes than the size a source gave, and a source that disagrees', async () => {
      const bytes = random.bytes(10 * KiB);
      const partial = await cache.beginPartial(digestOf(bytes));
      partial.expectSize(bytes.length - 1);
      await assert.rejects(partial.append(bytes), { code: 'LCFS_EPEER' });
      assert.throws(() => partial.expectSize(bytes.length), { code: 'LCFS_EPEER' });
      assert.equal(partial.bytesWritten, 0);
      await partial.fail(new Error('gave up'));
    });
  });

  describe('tail readers follow a fetch', () => {
    it('get the bytes as they arrive from any offset, the last byte only after the commit', async () => {
      const bytes = random.bytes(200 * KiB);
      const digest = digestOf(bytes);
      const partial = await cache.beginPartial(digest);
      const fromStart = partial.tail();
      const fromMiddle = drain(partial.tail(150 * KiB));
      const reader = fromStart[Symbol.asyncIterator]();

      await partial.append(bytes.subarray(0, 100 * KiB));
      // All that arrived but the last byte so far.
      const got = [await nextChunk(reader)];
      assert.deepEqual(got[0], bytes.subarray(0, 100 * KiB - 1));

      await partial.append(bytes.subarray(100 * KiB));
      let next = nextChunk(reader);
      while (Buffer.concat(got).length < bytes.length - 1) {
        got.push(await next);
        next = nextChunk(reader);
      }
      assert.deepEqual(Buffer.concat(got), bytes.subarray(0, -1));
      assert.ok(await pendingAfter(next, 100), 'the last byte left before the commit');

      await partial.commit();
      assert.deepEqual(await next, bytes.subarray(-1));
      assert.equal((await reader.next()).done, true);
      const middle = await fromMiddle;
      assert.equal(middle.error, undefined);
      assert.deepEqual(middle.bytes, bytes.subarray(150 * KiB));
      // A reader that starts after the commit reads the cached file.
      assert.deepEqual((await drain(partial.tail(7))).bytes, bytes.subarray(7));
    });

    it('fail when the fetch fails: the fetch is forgotten and its file removed', async () => {
      const bytes = random.bytes(50 * KiB);
      const digest = digestOf(bytes);
      const partial = await cache.beginPartial(digest);
      const abandoned: PartialBlob[] = [];
      cache.on('abandoned', (p) => abandoned.push(p));
      const tail = drain(partial.tail());
      const sized = assert.rejects(partial.sized(), /upstream went away/);
      await partial.append(bytes.subarray(0, 20 * KiB));
      await partial.fail(new Error('upstream went away'));

      const { bytes: got, error } = await tail;
      assert.match(String(error), /upstream went away/);
      assert.ok(got.length < 20 * KiB);
      await sized;
      assert.deepEqual(abandoned, [partial]);
      assert.equal(cache.partial(digest), undefined);
      assert.equal(cache.stat(digest), undefined);
      assert.deepEqual(await readdir(cache.partialDir), []);
    });

    it('fail when the fetch restarts; readers after the restart get the new bytes', async () => {
      const bytes = random.bytes(50 * KiB);
      const digest = digestOf(bytes);
      const partial = await cache.beginPartial(digest);
      const before = partial.tail()[Symbol.asyncIterator]();
      const junk = Buffer.alloc(bytes.length, 0x5a);
      await partial.append(junk);
      assert.deepEqual(await nextChunk(before), junk.subarray(0, -1));
      await assert.rejects(partial.commit(), { code: 'LCFS_EDIGEST_MISMATCH' });
      await partial.restart();
      await assert.rejects(before.next(), { code: 'LCFS_EPEER', message: /restarted/ });

      const after = drain(partial.tail());
      await partial.append(bytes);
      await partial.commit();
      assert.deepEqual(await after, { bytes, error: undefined });
      assert.deepEqual((await drain(cache.read(digest))).bytes, bytes);
    });
  });

  describe('reads verify the cached bytes', () => {
    it('fail before the last chunk of a blob corrupted on disk, and evict it', async () => {
      const bytes = random.bytes(1 << 20);
      const digest = await put(cache, bytes);
      await flipByte(cache.pathOf(digest), 300 * KiB);
      const removed = new Promise<BlobInfo>((resolve) => cache.once('removed', resolve));

      const { bytes: got, error } = await drain(cache.read(digest));
      assert.equal((error as { code?: string }).code, 'LCFS_EDIGEST_MISMATCH');
      assert.ok(got.length < bytes.length, `all ${got.length} bytes of a corrupt blob left`);
      assert.deepEqual(await removed, { digest, size: bytes.length });
      assert.equal(cache.stat(digest), undefined);
      assert.equal(cache.usedBytes, 0);
      assert.deepEqual(await readdir(join(dir, 'sha256')), []);
    });

    it('from an offset, hash the bytes before it too', async () => {
      const bytes = random.bytes(256 * KiB);
      const digest = await put(cache, bytes);
      const offset = 200 * KiB;
      assert.deepEqual(await drain(cache.read(digest, offset)), {
        bytes: bytes.subarray(offset),
        error: undefined,
      });
      assert.deepEqual(await drain(cache.read(digest, bytes.length)), {
        bytes: Buffer.alloc(0),
        error: undefined,
      });

      await flipByte(cache.pathOf(digest), 10);
      const { bytes: got, error } = await drain(cache.read(digest, offset));
      assert.equal((error as { code?: string }).code, 'LCFS_EDIGEST_MISMATCH');
      assert.ok(got.length < bytes.length - offset);
      await sleep(50);
      assert.equal(cache.stat(digest), undefined);
    });
  });

  describe('LRU eviction', () => {
    const SIZE = 256 * KiB;

    it('keeps usedBytes within maxBytes, evicting the least recently read first', async () => {
      const bounded = await BlobCache.open({ dir: join(dir, 'lru'), maxBytes: 3 * SIZE, logger });
      const removed: string[] = [];
      bounded.on('removed', ({ digest }) => removed.push(digest));
      const [a, b, c] = [random.bytes(SIZE), random.bytes(SIZE), random.bytes(SIZE)];
      const da = await put(bounded, a);
      await sleep(5);
      const db = await put(bounded, b);
      await sleep(5);
      const dc = await put(bounded, c);
      await sleep(5);
      assert.equal(bounded.usedBytes, 3 * SIZE);
      assert.deepEqual((await drain(bounded.read(da))).bytes, a);
      await sleep(5);

      const dd = await put(bounded, random.bytes(SIZE));
      assert.deepEqual(removed, [db]);
      assert.equal(bounded.usedBytes, 3 * SIZE);
      assert.deepEqual(new Set(bounded.list().map((i) => i.digest)), new Set([da, dc, dd]));

      // Two blobs' worth more: the two least recently used go (c, then a).
      await sleep(5);
      const de = await put(bounded, random.bytes(2 * SIZE));
      assert.deepEqual(removed, [db, dc, da]);
      assert.deepEqual(new Set(bounded.list().map((i) => i.digest)), new Set([dd, de]));
      assert.ok(bounded.usedBytes <= bounded.maxBytes);
    });

    it('never evicts a blob being read', async () => {
      const bounded = await BlobCache.open({ dir: join(dir, 'lru'), maxBytes: 2 * SIZE, logger });
      const removed: string[] = [];
      bounded.on('removed', ({ digest }) => removed.push(digest));
      const a = random.bytes(SIZE);
      const da = await put(bounded, a);
      await sleep(5);
      const db = await put(bounded, random.bytes(SIZE));

      // `a` is the least recently used, but a reader holds it.
      const reader = bounded.read(da)[Symbol.asyncIterator]();
      const got = [await nextChunk(reader)];
      await sleep(5);
      const dc = await put(bounded, random.bytes(SIZE));
      assert.deepEqual(removed, [db]);
      assert.deepEqual(new Set(bounded.list().map((i) => i.digest)), new Set([da, dc]));

      for (let next = await reader.next(); next.done !== true; next = await reader.next()) {
        got.push(next.value as Buffer);
      }
      assert.deepEqual(Buffer.concat(got), a);
    });
  });

  it('reopened, finds its blobs, clears partial/, and evicts by last read to a smaller bound', async () => {
    const blobs = [random.bytes(100 * KiB), random.bytes(100 * KiB), random.bytes(100 * KiB)];
    const digests: string[] = [];
    for (const bytes of blobs) {
      digests.push(await put(cache, bytes));
      await sleep(5);
    }
    // What a fetch cut by a crash leaves behind.
    const unfinished = digestOf(random.bytes(10));
    await writeFile(join(cache.partialDir, hexOf(unfinished)), 'half');
    await writeFile(join(dir, 'sha256', 'not-a-digest'), 'stray');
    // Read the oldest: on disk its mtime is now the newest.
    await drain(cache.read(digests[0]));
    await sleep(50);

    const reopened = await BlobCache.open({ dir, maxBytes: 64 << 20, logger });
    assert.deepEqual(
      reopened.list().sort((x, y) => x.digest.localeCompare(y.digest)),
      cache.list().sort((x, y) => x.digest.localeCompare(y.digest)),
    );
    assert.equal(reopened.usedBytes, 300 * KiB);
    assert.deepEqual(await readdir(reopened.partialDir), []);
    assert.equal(reopened.partial(unfinished), undefined);
    assert.deepEqual((await drain(reopened.read(digests[1]))).bytes, blobs[1]);

    await sleep(50);
    const small = await BlobCache.open({ dir, maxBytes: 150 * KiB, logger });
    assert.deepEqual(
      small.list().map((i) => i.digest),
      [digests[1]],
    );
  });
});
