/**
 * What a write, truncate or chown takes away (setuid, setgid, file capabilities), through the
 * mount and on the native disk side by side: the volume handles it itself
 * (FUSE_HANDLE_KILLPRIV_V2), and must end where ext4 ends, for root and for other users.
 */
import assert from 'node:assert/strict';
import { chmod, chown, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { disposeAll, makeTempRoot, startVolume, type Volume } from './helpers/volume-process.js';
import { PYTHON, q, shOk, USER } from './helpers/shell.js';

interface Case {
  name: string;
  mode: number;
  /** The file's group; root's when absent. */
  gid?: number;
  /** Runs in the file's directory with the file as $f. */
  action: string;
  asUser: boolean;
}

const CASES: Case[] = [
  { name: 'user write, setuid+setgid g+x', mode: 0o6777, action: 'echo x >> "$f"', asUser: true },
  { name: 'user write, setgid no g+x', mode: 0o2767, action: 'echo x >> "$f"', asUser: true },
  { name: 'user write, setgid g+x', mode: 0o2777, action: 'echo x >> "$f"', asUser: true },
  {
    name: 'user write, own group, setgid no g+x',
    mode: 0o2766,
    gid: USER.gid,
    action: 'echo x >> "$f"',
    asUser: true,
  },
  { name: 'root write', mode: 0o6777, action: 'echo x >> "$f"', asUser: false },
  { name: 'user truncate', mode: 0o6777, action: 'truncate -s 1 "$f"', asUser: true },
  {
    name: 'user truncate, setgid no g+x',
    mode: 0o2767,
    action: 'truncate -s 0 "$f"',
    asUser: true,
  },
  { name: 'root truncate', mode: 0o6777, action: 'truncate -s 0 "$f"', asUser: false },
  { name: 'user open O_TRUNC', mode: 0o6777, action: ': > "$f"', asUser: true },
  { name: 'root chown', mode: 0o6777, action: 'chown 0:0 "$f"', asUser: false },
  { name: 'root chown, setgid no g+x', mode: 0o2767, action: 'chown 0:0 "$f"', asUser: false },
];

describe('FUSE volume: write, truncate and chown drop privileges as on ext4', function () {
  this.timeout(60_000);
  let vol: Volume;
  let native: string;
  let layer: string;

  before(async function () {
    this.timeout(60_000);
    vol = await startVolume();
    await vol.call('createLayer', 'priv', null);
    layer = join(vol.mountpoint, 'priv');
    native = join(await makeTempRoot('lcfs-fuse-priv-'), 'native');
    await mkdir(native);
  });
  after(async function () {
    this.timeout(60_000);
    await disposeAll();
    await rm(join(native, '..'), { recursive: true, force: true });
  });

  /** Runs the case in `dir`; returns the mode as `stat -c %a` (asks for the mode alone, so a
   * stale mode in the kernel's cache shows) and as a full stat. */
  async function play(dir: string, c: Case, i: number): Promise<string> {
    const f = join(dir, `f${i}`);
    await writeFile(f, 'data');
    await chown(f, 0, c.gid ?? 0);
    await chmod(f, c.mode);
    await shOk(`f=${q(f)}; ${c.action}`, c.asUser ? USER : {});
    return shOk(
      `stat -c %a ${q(f)}; ${PYTHON} -c 'import os,sys; print(oct(os.stat(sys.argv[1]).st_mode & 0o7777)[2:])' ${q(f)}`,
    );
  }

  CASES.forEach((c, i) => {
    it(`${c.name} (${c.mode.toString(8)})`, async () => {
      const want = await play(native, c, i);
      assert.equal(await play(layer, c, i), want);
    });
  });

  for (const action of ['echo x >> "$f"', 'truncate -s 0 "$f"', ': > "$f"', 'chown 7:7 "$f"']) {
    it(`${action.split(' ')[0]} removes security.capability, as on ext4`, async () => {
      const got: string[] = [];
      for (const dir of [native, layer]) {
        const f = join(dir, `cap-${got.length}-${action.length}`);
        await writeFile(f, 'data');
        await chmod(f, 0o755);
        await shOk(`setcap cap_net_raw+ep ${q(f)}`);
        assert.match(await shOk(`getcap ${q(f)}`), /cap_net_raw/);
        await shOk(`f=${q(f)}; ${action}`);
        got.push(await shOk(`getcap ${q(f)}`));
      }
      assert.deepEqual(got, ['', '']);
    });
  }

  it('a write that clears setuid is seen at once by an exec permission check', async () => {
    const f = join(layer, 'runs');
    await shOk(`cp /usr/bin/id ${q(f)} && chmod 4777 ${q(f)}`);
    assert.equal((await shOk(`${q(f)} -u`, USER)).trim(), '0', 'setuid root before the write');
    // Rewrites its first byte in place: a write, and nothing else.
    await shOk(`dd if=${q(f)} of=${q(f)} bs=1 count=1 conv=notrunc status=none`, USER);
    assert.equal((await shOk(`${q(f)} -u`, USER)).trim(), String(USER.uid), 'no longer setuid');
  });
});
