/**
 * How many requests common operations send to the volume process (VolumeMount.requestStats):
 * on a virtual machine every round trip costs tens of microseconds, so what the kernel may
 * answer from its caches must not reach us, and a regression here is a regression in speed.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { RequestStats } from '../../fs/fuse/mount.js';
import { disposeAll, makeTempRoot, startVolume, type Volume } from './helpers/volume-process.js';
import { q, shOk } from './helpers/shell.js';

/** Requests per operation between two snapshots; forgets are the kernel's housekeeping. */
function sent(before: RequestStats, after: RequestStats): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [op, { count }] of Object.entries(after)) {
    if (op === 'FORGET' || op === 'BATCH_FORGET') continue;
    const n = count - (before[op]?.count ?? 0);
    if (n > 0) out[op] = n;
  }
  return out;
}

describe('FUSE volume: round trips per operation', function () {
  this.timeout(60_000);
  let vol: Volume;
  let layer: string;

  before(async function () {
    this.timeout(60_000);
    vol = await startVolume();
    await vol.call('createLayer', 'rt', null);
    layer = join(vol.mountpoint, 'rt');
  });
  after(async function () {
    this.timeout(60_000);
    await disposeAll();
  });

  /** The requests `action` sends. */
  async function during(action: () => Promise<unknown>): Promise<Record<string, number>> {
    const before = await vol.call('requestStats');
    await action();
    return sent(before, await vol.call('requestStats'));
  }

  it('a warm stat (statx with btime, as Node and coreutils ask) sends nothing, the root included', async () => {
    const d = join(layer, 'warm');
    await mkdir(d);
    await writeFile(join(d, 'f'), 'x');
    await lstat(join(d, 'f'));
    await stat(vol.mountpoint);
    assert.deepEqual(
      await during(async () => {
        await lstat(join(d, 'f'));
        await stat(vol.mountpoint);
        await shOk(`stat -c %s ${q(join(d, 'f'))} && ls -d ${q(d)} >/dev/null`);
      }),
      {},
    );
  });

  it('a chown sends no GETATTR first, and a second write no GETXATTR (killpriv v2)', async () => {
    const f = join(layer, 'kp');
    await writeFile(f, 'x');
    const fh = await open(f, 'r+');
    try {
      await fh.write('a', 0);
      assert.deepEqual(
        await during(async () => {
          await fh.write('b', 1);
          await fh.chown(1, 1);
        }),
        { WRITE: 1, GETXATTR: 1, SETATTR: 1 },
        'the GETXATTR is the chown asking for security.capability',
      );
    } finally {
      await fh.close();
    }
  });

  it('a cold sequential read asks for 1 MiB at a time (read-ahead raised from 128 KiB)', async () => {
    await vol.call('createLayer', 'ra-base', null);
    await writeFile(join(vol.mountpoint, 'ra-base', 'big'), randomBytes(8 << 20));
    // A child layer's nodes are new to the kernel: nothing of the file is in its page cache.
    await vol.call('createLayer', 'ra-child', 'ra-base');
    const requests = await during(() => readFile(join(vol.mountpoint, 'ra-child', 'big')));
    assert.ok((requests.READ ?? 0) <= 10, `READ requests: ${requests.READ}`);
  });

  it('tar -x sends at most 10 requests per small file', async () => {
    const root = await makeTempRoot('lcfs-fuse-rt-');
    try {
      const src = join(root, 'src');
      await mkdir(src);
      for (let i = 0; i < 50; i++) await writeFile(join(src, `f${i}`), `file ${i}\n`);
      await shOk(`tar -C ${q(root)} -cf ${q(join(root, 't.tar'))} src`);
      await mkdir(join(layer, 'untar'));
      const requests = await during(() =>
        shOk(`tar -C ${q(join(layer, 'untar'))} -xf ${q(join(root, 't.tar'))}`),
      );
      const total = Object.values(requests).reduce((a, b) => a + b, 0);
      assert.ok(total <= 50 * 10 + 10, `${total} requests: ${JSON.stringify(requests)}`);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
