/**
 * The framing of lcfs's libp2p protocols over two real libp2p nodes (createP2PNode, a shared
 * swarm key): a JSON header line, then the body bytes until the sender closes, whether they
 * arrive with the header or after it; a malformed header, a header longer than 64 KiB, and a
 * stream closed before its header each fail with LCFS_EPEER.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateClusterSecret } from '../../cluster/cluster-secret.js';
import { createP2PNode, type ClusterP2PNode } from '../../cluster/p2p-node.js';
import { FramedReader, send, sendHeader } from '../../cluster/p2p-stream.js';
import { SeededRandom } from '../fs/helpers/prng.js';
import { sleep } from '../helpers/cleanup.js';

const PROTOCOL = '/lcfs-test/framing/1.0.0';
const KiB = 1024;

/** What the serving node sends back for each request: writes, and pauses (ms) between them. */
const body = new SeededRandom('framing').bytes(300 * KiB);
const answers: Record<string, Array<Uint8Array | number>> = {
  'header then body': [
    Buffer.from('{"status":"ok","size":307200}\n'),
    body.subarray(0, 100 * KiB),
    body.subarray(100 * KiB),
  ],
  'header and body in one write': [Buffer.concat([Buffer.from('{"status":"ok"}\n'), body])],
  'header split over writes': [Buffer.from('{"stat'), Buffer.from('us":"ok"}\nbody')],
  'no body': [Buffer.from('{"status":"missing"}\n')],
  malformed: [Buffer.from('{"status": ok}\nrest')],
  'too long': [Buffer.alloc(100 * KiB, 0x20)],
  // 60 KiB, read by the client while it waits; then 10 KiB more and the newline, in one frame.
  'too long with its newline': [
    Buffer.from(`{"pad":"${'x'.repeat(60 * KiB)}`),
    200,
    Buffer.from(`${'x'.repeat(10 * KiB)}"}\n`),
  ],
  closed: [],
};

describe('cluster: FramedReader over real libp2p streams', function () {
  this.timeout(60_000);
  let dir: string;
  let client: ClusterP2PNode;
  let server: ClusterP2PNode;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lcfs-p2p-stream-'));
    const secret = Buffer.from(generateClusterSecret());
    [client, server] = await Promise.all(
      ['client', 'server'].map(async (name) => {
        const node = await createP2PNode({
          address: '127.0.0.1:0',
          secret,
          keyFile: join(dir, `${name}.key`),
        });
        await node.start();
        return node;
      }),
    );
    await server.handle(PROTOCOL, async (stream) => {
      const { scenario } = await new FramedReader(stream).header<{ scenario: string }>();
      for (const step of answers[scenario]) {
        if (typeof step === 'number') await sleep(step);
        else await send(stream, step);
      }
      await stream.close();
    });
  });

  after(async () => {
    await Promise.all([client?.stop(), server?.stop()]);
    await rm(dir, { recursive: true, force: true });
  });

  /** Asks the server for `scenario`; returns a reader of its answer. */
  async function ask(scenario: string): Promise<FramedReader> {
    const stream = await client.dialProtocol(server.getMultiaddrs(), PROTOCOL);
    await sendHeader(stream, { scenario });
    await stream.close();
    return new FramedReader(stream);
  }

  async function bodyOf(reader: FramedReader): Promise<Buffer> {
    const chunks: Uint8Array[] = [];
    for await (const chunk of reader.body()) chunks.push(chunk);
    return Buffer.concat(chunks);
  }

  it('reads the header, then the body until the sender closes', async () => {
    const reader = await ask('header then body');
    assert.deepEqual(await reader.header(), { status: 'ok', size: body.length });
    assert.deepEqual(await bodyOf(reader), body);
  });

  it('keeps body bytes that arrived with the header', async () => {
    const reader = await ask('header and body in one write');
    assert.deepEqual(await reader.header(), { status: 'ok' });
    assert.deepEqual(await bodyOf(reader), body);
  });

  it('joins a header split over writes; a body may be empty', async () => {
    const split = await ask('header split over writes');
    assert.deepEqual(await split.header(), { status: 'ok' });
    assert.equal((await bodyOf(split)).toString(), 'body');
    const empty = await ask('no body');
    assert.deepEqual(await empty.header(), { status: 'missing' });
    assert.equal((await bodyOf(empty)).length, 0);
  });

  it('fails with LCFS_EPEER on a malformed header, a header over 64 KiB, or none', async () => {
    await assert.rejects((await ask('malformed')).header(), {
      code: 'LCFS_EPEER',
      message: /malformed header/,
    });
    await assert.rejects((await ask('too long')).header(), {
      code: 'LCFS_EPEER',
      message: /longer than 64 KiB/,
    });
    await assert.rejects((await ask('closed')).header(), {
      code: 'LCFS_EPEER',
      message: /closed before a header/,
    });
  });

  it('refuses a header over 64 KiB even when its newline comes in the chunk that passes the bound', async () => {
    await assert.rejects((await ask('too long with its newline')).header(), {
      code: 'LCFS_EPEER',
      message: /longer than 64 KiB/,
    });
  });
});
