/**
 * The containerd snapshotter, end to end: a real containerd 1.6 (private config, root, state and
 * socket) loads the agent as the proxy plugin `lcfs`, and `ctr` drives it; then the agent's
 * socket is spoken to directly over gRPC, as containerd's proxy does, to check exact status codes.
 *
 * Note on who answers what through ctr: containerd's metadata layer sits between ctr and the
 * agent. It validates labels, refuses to remove a snapshot with children and answers for unknown
 * keys itself; it passes only `containerd.io/snapshot/*` labels (and `containerd.io/snapshot.ref`)
 * down; and it renames every key to `<namespace>/<n>/<key>` in the agent. The gRPC part checks the
 * agent's own answers.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { SeededRandom } from '../fs/helpers/prng.js';
import { buildBusyboxRootfs } from '../fuse/helpers/trees.js';
import { LcfsAgent } from '../helpers/lcfs-agent.js';
import { Containerd } from './helpers/containerd.js';
import { sleep } from '../helpers/cleanup.js';
import { buildImageTar, type ImageTar } from './helpers/image.js';
import {
  grpc,
  grpcCodeOf,
  SnapshotsClient,
  type SnapshotInfo,
  type SnapshotMount,
} from './helpers/snapshots-client.js';

const MOTD = 'served by lcfs\n';
const REF = 'containerd.io/snapshot.ref';

/** A two-layer image: busybox, then a layer that adds /etc/motd and deletes a file. */
async function buildTestImage(dir: string): Promise<ImageTar> {
  const base = join(dir, 'l0');
  await buildBusyboxRootfs(base, new SeededRandom(1));
  await writeFile(join(base, 'etc', 'removed-later'), 'deleted by layer 1\n');
  await mkdir(join(base, 'data'));
  await writeFile(join(base, 'data', 'one.txt'), 'one\n');
  const top = join(dir, 'l1');
  await mkdir(join(top, 'etc'), { recursive: true });
  await writeFile(join(top, 'etc', 'motd'), MOTD);
  await writeFile(join(top, 'etc', '.wh.removed-later'), '');
  return buildImageTar({ dir, tag: 'docker.io/lcfs-test/bb:1', layers: [base, top] });
}

interface CtrInfo {
  Kind: string;
  Name: string;
  Parent?: string;
  Labels?: Record<string, string>;
}

const sha256 = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex');

async function absent(path: string): Promise<boolean> {
  try {
    await stat(path);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT';
  }
}

describe('containerd snapshotter: a real containerd 1.6 with the lcfs proxy plugin', function () {
  this.timeout(300_000);
  let work: string;
  let image: ImageTar;
  let agent: LcfsAgent;
  let ctd: Containerd;
  let client: SnapshotsClient;
  /** The store layer (mount source) of the container's snapshot, once known. */
  let containerLayer = '';

  const snap = (...args: string[]): string[] => ['snapshots', '--snapshotter', 'lcfs', ...args];

  /** `ctr snapshots ls`, by key: parent and kind (columns found from the header). */
  async function ls(): Promise<Map<string, { parent: string; kind: string }>> {
    const [header, ...rows] = (await ctd.ctrOk(snap('ls'))).split('\n').filter(Boolean);
    const parentAt = header.indexOf('PARENT');
    const kindAt = header.indexOf('KIND');
    return new Map(
      rows.map((row) => [
        row.slice(0, parentAt).trim(),
        { parent: row.slice(parentAt, kindAt).trim(), kind: row.slice(kindAt).trim() },
      ]),
    );
  }
  const info = async (key: string): Promise<CtrInfo> =>
    JSON.parse(await ctd.ctrOk(snap('info', key))) as CtrInfo;
  async function usage(key: string): Promise<{ size: number; inodes: number }> {
    const last = (await ctd.ctrOk(snap('usage', '-b', key))).trim().split('\n').at(-1) ?? '';
    const [name, size, inodes] = last.trim().split(/\s+/);
    assert.equal(name, key);
    return { size: Number(size), inodes: Number(inodes) };
  }
  /** `ctr snapshots mounts`: `mount -t TYPE SOURCE TARGET -o OPTIONS`. */
  async function mountOf(
    key: string,
  ): Promise<{ type: string; source: string; options: string[] }> {
    const line = (await ctd.ctrOk(snap('mounts', '/lcfs-test-target', key))).trim();
    const m = /^mount -t (\S+) (\S+) \/lcfs-test-target -o (\S+)$/.exec(line);
    assert.ok(m, `unexpected mounts output: ${line}`);
    return { type: m[1], source: m[2], options: m[3].split(',') };
  }
  /** What containerd and the agent both say about every snapshot. */
  async function everything(): Promise<{ ctr: Record<string, CtrInfo>; agent: SnapshotInfo[] }> {
    const ctr: Record<string, CtrInfo> = {};
    for (const key of [...(await ls()).keys()].sort()) ctr[key] = await info(key);
    const { infos } = await client.list();
    return { ctr, agent: infos.sort((a, b) => a.name.localeCompare(b.name)) };
  }
  /**
   * Waits until the agent holds exactly the snapshots containerd lists: containerd removes
   * snapshots from its backend in its garbage collector, a moment after `ctr snapshots rm`.
   */
  async function settled(): Promise<void> {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const keys = [...(await ls()).keys()].sort();
      const held = (await client.list()).infos
        .map((i) => /^default\/\d+\/(.*)$/.exec(i.name)?.[1] ?? i.name)
        .sort();
      if (JSON.stringify(keys) === JSON.stringify(held)) return;
      if (Date.now() > deadline)
        assert.fail(`containerd lists ${keys.join(', ')}; the agent holds ${held.join(', ')}`);
      await sleep(250);
    }
  }
  /** The agent's record of containerd's snapshot `key` (named `<ns>/<n>/<key>` there). */
  async function backend(key: string): Promise<SnapshotInfo | undefined> {
    const { infos } = await client.list();
    return infos.find((i) => i.name.endsWith(`/${key}`) && i.name.startsWith('default/'));
  }

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lcfs-ctd-work-'));
    image = await buildTestImage(work);
    agent = await LcfsAgent.start();
    ctd = await Containerd.start({
      proxySnapshotters: { lcfs: agent.snapshotterSocket },
      label: 'snap',
    });
    client = new SnapshotsClient(agent.snapshotterSocket);
  });

  after(async () => {
    client?.close();
    await ctd?.dispose();
    await agent?.dispose();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('lists lcfs among its snapshotters', async () => {
    const plugins = await ctd.ctrOk(['plugins', 'ls']);
    assert.match(plugins, /^io\.containerd\.snapshotter\.v1\s+lcfs\s+-\s+ok\s*$/m);
  });

  it('imports an image tar into committed snapshots, one per layer, parent to child', async () => {
    await ctd.ctrOk(['images', 'import', '--snapshotter', 'lcfs', image.path]);
    const [c0, c1] = image.chainIds;
    const snapshots = await ls();
    assert.deepEqual(snapshots.get(c0), { parent: '', kind: 'Committed' });
    assert.deepEqual(snapshots.get(c1), { parent: c0, kind: 'Committed' });

    // In the agent, under containerd's keys, with the same parent chain.
    const b0 = await backend(c0);
    const b1 = await backend(c1);
    assert.ok(b0 && b1, `agent lacks the layers: ${JSON.stringify((await client.list()).infos)}`);
    assert.equal(b0.kind, 'COMMITTED');
    assert.equal(b0.parent, '');
    assert.equal(b1.kind, 'COMMITTED');
    assert.equal(b1.parent, b0.name);

    // A view of the top layer: a read-only bind of a layer directory of the FUSE volume, holding
    // the image's merged tree (layer 1's file there, the file it deleted gone).
    await ctd.ctrOk(snap('view', 'image-view', c1));
    const view = await mountOf('image-view');
    assert.equal(view.type, 'bind');
    assert.deepEqual(view.options.sort(), ['rbind', 'ro']);
    assert.equal(dirname(view.source), agent.mountpoint);
    assert.equal(await readFile(join(view.source, 'etc', 'motd'), 'utf8'), MOTD);
    assert.equal(await readFile(join(view.source, 'data', 'one.txt'), 'utf8'), 'one\n');
    assert.ok((await stat(join(view.source, 'bin', 'busybox'))).isFile());
    assert.ok(await absent(join(view.source, 'etc', 'removed-later')), 'the whiteout applied');
    assert.equal((await info('image-view')).Kind, 'View');
    await ctd.ctrOk(snap('rm', 'image-view'));
  });

  it('runs a container whose writes land in its active snapshot, seen through the mount path', async () => {
    const script = [
      'cat /etc/motd',
      'test ! -e /etc/removed-later && echo whiteout-ok',
      'echo written-by-c1 > /written.txt',
      'mkdir -p /data/new',
      'head -c 100000 /dev/urandom > /data/new/blob',
      'rm /data/one.txt',
      'sha256sum /data/new/blob',
    ].join('; ');
    const out = await ctd.ctrOk([
      'run',
      '--snapshotter',
      'lcfs',
      image.tag,
      'c1',
      'sh',
      '-c',
      script,
    ]);
    assert.ok(out.startsWith(MOTD), out);
    assert.match(out, /^whiteout-ok$/m);
    const sum = /^([0-9a-f]{64})\s+\/data\/new\/blob$/m.exec(out)?.[1];
    assert.ok(sum, out);

    const c1 = await info('c1');
    assert.equal(c1.Kind, 'Active');
    assert.equal(c1.Parent, image.chainIds[1]);
    const m = await mountOf('c1');
    assert.equal(m.type, 'bind');
    assert.deepEqual(m.options.sort(), ['rbind', 'rw']);
    assert.equal(dirname(m.source), agent.mountpoint);
    containerLayer = basename(m.source);
    assert.equal(await readFile(join(m.source, 'written.txt'), 'utf8'), 'written-by-c1\n');
    assert.equal(sha256(await readFile(join(m.source, 'data', 'new', 'blob'))), sum);
    assert.ok(await absent(join(m.source, 'data', 'one.txt')), 'the delete is in the snapshot');
    assert.equal(await readFile(join(m.source, 'etc', 'motd'), 'utf8'), MOTD, 'inherited');

    const u = await usage('c1');
    assert.ok(u.size >= 100_000 && u.size < 1_000_000, `usage size ${u.size}`);
    assert.ok(u.inodes >= 3, `usage inodes ${u.inodes}`);
  });

  it('commits, labels and lists snapshots; a child of a commit sees its files', async () => {
    await ctd.ctrOk(snap('commit', 'c1-layer', 'c1'));
    await ctd.ctrOk(['containers', 'rm', 'c1']);
    const committed = await info('c1-layer');
    assert.equal(committed.Kind, 'Committed');
    assert.equal(committed.Parent, image.chainIds[1]);
    const listed = await ls();
    assert.deepEqual(listed.get('c1-layer'), { parent: image.chainIds[1], kind: 'Committed' });
    assert.ok(!listed.has('c1'), 'the active key is gone after commit');
    const u = await usage('c1-layer');
    assert.ok(u.size >= 100_000, `usage after commit ${u.size}`);

    // Labels: containerd keeps them all; it hands containerd.io/snapshot/* ones to the agent.
    await ctd.ctrOk(snap('label', 'c1-layer', 'team=storage', 'containerd.io/snapshot/origin=c1'));
    const labelled = await info('c1-layer');
    assert.equal(labelled.Labels?.team, 'storage');
    assert.equal(labelled.Labels?.['containerd.io/snapshot/origin'], 'c1');
    const b = await backend('c1-layer');
    assert.equal(b?.kind, 'COMMITTED');
    assert.equal(b?.labels['containerd.io/snapshot/origin'], 'c1');
    assert.equal(b?.parent, (await backend(image.chainIds[1]))?.name);
    await ctd.ctrOk(snap('label', 'c1-layer', 'team='));
    assert.equal((await info('c1-layer')).Labels?.team, undefined, 'an empty value clears it');

    // The commit kept its layer: a child prepared on it reads the container's files.
    await ctd.ctrOk(snap('prepare', 'child1', 'c1-layer'));
    const child = await mountOf('child1');
    assert.notEqual(basename(child.source), containerLayer);
    assert.equal(await readFile(join(child.source, 'written.txt'), 'utf8'), 'written-by-c1\n');
    await writeFile(join(child.source, 'child.txt'), 'from child1\n');
    await ctd.ctrOk(snap('view', 'child-view', 'c1-layer'));
    const view = await mountOf('child-view');
    assert.deepEqual(view.options.sort(), ['rbind', 'ro']);
    assert.ok(await absent(join(view.source, 'child.txt')), "a sibling's write is not seen");
    const after = await ls();
    assert.deepEqual(after.get('child1'), { parent: 'c1-layer', kind: 'Active' });
    assert.deepEqual(after.get('child-view'), { parent: 'c1-layer', kind: 'View' });
    // `ctr snapshots view` sets no containerd.io/gc.root label (prepare and commit do): the
    // next garbage collection (one runs at containerd's start) would take it. Remove it now.
    await ctd.ctrOk(snap('rm', 'child-view'));
  });

  it('keeps every snapshot, kind, label and parent across a containerd restart', async () => {
    await settled();
    const before = await everything();
    await ctd.stop();
    await ctd.start();
    await sleep(1500); // containerd collects garbage 100 ms after start: let it run
    assert.deepEqual(await everything(), before);
    const child = await mountOf('child1');
    assert.equal(await readFile(join(child.source, 'child.txt'), 'utf8'), 'from child1\n');
  });

  it('keeps them across an agent restart too, and containerd reconnects', async () => {
    await settled();
    const before = await everything();
    const layerSource = (await mountOf('child1')).source;
    await agent.restart();
    // containerd's proxy redials with a backoff: the first calls may fail as unavailable.
    const deadline = Date.now() + 30_000;
    for (;;) {
      const r = await ctd.ctr(snap('ls'));
      if (r.code === 0) break;
      if (Date.now() > deadline) assert.fail(`containerd did not reconnect: ${r.stderr}`);
      await sleep(250);
    }
    assert.deepEqual(await everything(), before);
    assert.equal((await mountOf('child1')).source, layerSource);
    assert.equal(await readFile(join(layerSource, 'child.txt'), 'utf8'), 'from child1\n');
    assert.equal(await readFile(join(layerSource, 'written.txt'), 'utf8'), 'written-by-c1\n');
    // And a new container starts on the image.
    const out = await ctd.ctrOk([
      'run',
      '--rm',
      '--snapshotter',
      'lcfs',
      image.tag,
      'c2',
      'cat',
      '/etc/motd',
    ]);
    assert.equal(out, MOTD);
  });

  it('refuses to remove a snapshot that has children: failed precondition', async () => {
    for (const key of ['c1-layer', image.chainIds[0]]) {
      const r = await ctd.ctr(snap('rm', key));
      assert.notEqual(r.code, 0, `rm ${key} succeeded`);
      assert.match(r.stderr, /failed precondition/, r.stderr);
    }
    assert.equal((await ls()).get('c1-layer')?.kind, 'Committed');
  });

  it('answers garbage labels and unknown keys with clear errors', async () => {
    const huge = await ctd.ctr(snap('label', 'child1', `big=${'x'.repeat(5000)}`));
    assert.notEqual(huge.code, 0);
    assert.match(huge.stderr, /greater than maximum size \(4096 bytes\).*invalid argument/);
    const inherited = await ctd.ctr(
      snap('label', 'child1', `containerd.io/snapshot/big=${'x'.repeat(4100)}`),
    );
    assert.match(inherited.stderr, /invalid argument/);
    assert.equal((await info('child1')).Labels?.big, undefined);

    for (const args of [
      ['info', 'nosuch'],
      ['rm', 'nosuch'],
      ['label', 'nosuch', 'a=b'],
      ['usage', 'nosuch'],
      ['mounts', '/lcfs-test-target', 'nosuch'],
      ['commit', 'nosuch-committed', 'nosuch'],
      ['prepare', 'orphan', 'nosuch'],
    ]) {
      const r = await ctd.ctr(snap(...args));
      assert.notEqual(r.code, 0, `${args.join(' ')} succeeded`);
      assert.match(r.stderr, /nosuch.*not found/, `${args.join(' ')}: ${r.stderr}`);
    }
  });

  it('removes snapshots; containerd then removes them from the agent and the volume', async () => {
    const childLayer = basename((await mountOf('child1')).source);
    for (const key of ['child1', 'c1-layer']) await ctd.ctrOk(snap('rm', key));
    const left = await ls();
    for (const key of ['child1', 'c1-layer']) assert.ok(!left.has(key), key);
    // containerd's garbage collector removes them from the backend, asynchronously.
    await settled();
    const names = (await client.list()).infos.map((i) => i.name);
    assert.ok(!names.some((n) => /\/(child1|c1-layer)$/.test(n)), names.join(', '));
    const layers = await readdir(agent.mountpoint);
    assert.ok(!layers.includes(childLayer), `${childLayer} still in the volume`);
    assert.ok(!layers.includes(containerLayer), `${containerLayer} still in the volume`);
    assert.deepEqual(agent.problems(), []);
  });
});

describe('containerd snapshotter: the gRPC API on the agent socket', function () {
  this.timeout(180_000);
  let agent: LcfsAgent;
  let client: SnapshotsClient;
  const { status } = grpc;

  async function expectCode(
    p: Promise<unknown>,
    code: grpc.status,
    detail?: RegExp,
  ): Promise<string> {
    const got = await grpcCodeOf(p);
    assert.equal(
      status[got.code],
      status[code],
      `expected ${status[code]}, got ${status[got.code]}: ${got.details}`,
    );
    if (detail) assert.match(got.details, detail);
    return got.details;
  }
  const names = (infos: SnapshotInfo[]): string[] => infos.map((i) => i.name).sort();
  const listNames = async (...filters: string[]): Promise<string[]> =>
    names((await client.list(filters)).infos);
  const bind = (m: SnapshotMount[]): SnapshotMount => {
    assert.equal(m.length, 1);
    return m[0];
  };

  before(async () => {
    // No containerd here: its garbage collector would remove snapshots it does not know.
    agent = await LcfsAgent.start();
    client = new SnapshotsClient(agent.snapshotterSocket);
    await client.waitReady();
  });

  after(async () => {
    client?.close();
    await agent?.dispose();
  });

  it('Prepare and View answer rw and ro binds of the layer path; Commit freezes in place', async () => {
    const active = bind(await client.prepare('base-active'));
    assert.equal(active.type, 'bind');
    assert.deepEqual(active.options, ['rbind', 'rw']);
    assert.equal(dirname(active.source), agent.mountpoint);
    await writeFile(join(active.source, 'hello.txt'), 'hi\n');
    await client.commit('base', 'base-active', { tier: 'base' });

    const view = bind(await client.view('base-view', 'base', { purpose: 'read' }));
    assert.equal(view.type, 'bind');
    assert.deepEqual(view.options, ['rbind', 'ro']);
    assert.equal(await readFile(join(view.source, 'hello.txt'), 'utf8'), 'hi\n');
    assert.deepEqual(await client.mounts('base-view'), [view]);

    const base = await client.stat('base');
    assert.equal(base.kind, 'COMMITTED');
    assert.equal(base.parent, '');
    assert.deepEqual(base.labels, { tier: 'base' });
    assert.ok((base.created_at?.seconds ?? 0) > 1_600_000_000);
    const v = await client.stat('base-view');
    assert.equal(v.kind, 'VIEW');
    assert.equal(v.parent, 'base');
    assert.deepEqual(v.labels, { purpose: 'read' });
  });

  it('NOT_FOUND: unknown keys, names and parents', async () => {
    const nf = status.NOT_FOUND;
    await expectCode(client.stat('nosuch'), nf, /nosuch/);
    await expectCode(client.mounts('nosuch'), nf, /nosuch/);
    await expectCode(client.remove('nosuch'), nf, /nosuch/);
    await expectCode(client.usage('nosuch'), nf, /nosuch/);
    await expectCode(client.commit('made-from-nothing', 'nosuch'), nf, /nosuch/);
    await expectCode(client.update({ name: 'nosuch', labels: { a: 'b' } }, ['labels.a']), nf);
    await expectCode(client.prepare('orphan', 'nosuch-parent'), nf, /nosuch-parent/);
    await expectCode(client.view('orphan-view', 'nosuch-parent'), nf, /nosuch-parent/);
    await expectCode(client.mounts('base-active'), nf, /base-active/); // committed away
    await expectCode(client.stat('orphan'), nf);
  });

  it('ALREADY_EXISTS: a key prepared twice, a name committed twice', async () => {
    await client.prepare('dup', 'base');
    await expectCode(client.prepare('dup', 'base'), status.ALREADY_EXISTS, /dup/);
    await expectCode(client.view('dup', 'base'), status.ALREADY_EXISTS);
    await client.prepare('second', 'base');
    await expectCode(client.commit('base', 'second'), status.ALREADY_EXISTS, /base/);
    assert.equal((await client.stat('second')).kind, 'ACTIVE', 'left as it was');
    assert.equal((await client.stat('dup')).kind, 'ACTIVE');
  });

  it('FAILED_PRECONDITION: a parent with children, an uncommitted parent, a committed key', async () => {
    const fp = status.FAILED_PRECONDITION;
    await expectCode(client.remove('base'), fp, /children/);
    await expectCode(client.prepare('on-active', 'dup'), fp, /dup/);
    await expectCode(client.view('view-on-view', 'base-view'), fp);
    await expectCode(client.mounts('base'), fp, /committed/);
    await expectCode(client.commit('from-view', 'base-view'), fp, /not active/);
    assert.equal((await client.stat('base')).kind, 'COMMITTED');
    await expectCode(client.stat('on-active'), status.NOT_FOUND);
  });

  it('INVALID_ARGUMENT: a List with a bad filter', async () => {
    // Each answer is awaited for 10 s at most: a List that never answers would otherwise hold a
    // caller without a deadline (containerd's proxy sets none) forever.
    const answers: string[] = [];
    for (const filters of [
      ['nosuchfield==x'],
      ['labels."unterminated==x'],
      ['name~=('],
      ['kind==Committed', 'bad field==1'],
    ]) {
      const got = await grpcCodeOf(client.list(filters, 10_000));
      answers.push(`${JSON.stringify(filters)}: ${status[got.code]} (${got.details.slice(0, 60)})`);
    }
    assert.ok(
      answers.every((a) => a.includes(': INVALID_ARGUMENT (')),
      `List answers:\n${answers.join('\n')}`,
    );
  });

  it('INVALID_ARGUMENT: labels over 4096 bytes, empty keys, non-label updates', async () => {
    const ia = status.INVALID_ARGUMENT;

    const big = { k: 'x'.repeat(4096) }; // key and value: 4097 bytes
    await expectCode(client.prepare('big', 'base', big), ia, /4096/);
    await expectCode(client.view('big-view', 'base', big), ia, /4096/);
    await expectCode(client.commit('big-commit', 'second', big), ia, /4096/);
    await expectCode(client.update({ name: 'second', labels: big }, ['labels.k']), ia, /4096/);
    assert.equal((await client.stat('second')).kind, 'ACTIVE');
    await expectCode(client.stat('big'), status.NOT_FOUND);
    // 4096 bytes exactly is fine, as in containerd.
    await client.prepare('at-limit', 'base', { k: 'x'.repeat(4095) });
    await client.remove('at-limit');

    await expectCode(client.prepare('', 'base'), ia, /key/);
    await expectCode(client.commit('', 'second'), ia, /name/);
    await expectCode(client.prepare('empty-label-key', 'base', { '': 'v' }), ia);
    await expectCode(client.update({ name: 'second', parent: 'x' }, ['parent']), ia, /parent/);
  });

  it('List filters: parent==, labels."a"==, kind==, presence, regexp; several filters are ORed', async () => {
    await client.prepare('f-a', 'base', { a: 'b' });
    await client.prepare('f-b', 'base', { a: 'c', 'dotted.key': 'yes' });
    await client.view('f-v', 'base', { a: 'b' });
    await client.prepare('f-c-active', 'base', { team: 'x' });
    await client.commit('f-c', 'f-c-active', { a: 'b' });
    await client.prepare('f-grandchild', 'f-c');

    const all = await listNames();
    assert.deepEqual(all, [
      'base',
      'base-view',
      'dup',
      'f-a',
      'f-b',
      'f-c',
      'f-grandchild',
      'f-v',
      'second',
    ]);
    assert.deepEqual(await listNames('parent==base'), [
      'base-view',
      'dup',
      'f-a',
      'f-b',
      'f-c',
      'f-v',
      'second',
    ]);
    assert.deepEqual(await listNames('parent==f-c'), ['f-grandchild']);
    assert.deepEqual(await listNames('labels."a"==b'), ['f-a', 'f-c', 'f-v']);
    assert.deepEqual(await listNames('labels.a==b'), ['f-a', 'f-c', 'f-v']);
    assert.deepEqual(await listNames('labels."dotted.key"==yes'), ['f-b']);
    assert.deepEqual(await listNames('kind==Committed'), ['base', 'f-c']);
    assert.deepEqual(await listNames('kind==View'), ['base-view', 'f-v']);
    assert.deepEqual(await listNames('kind==Active,labels.a==b'), ['f-a']);
    assert.deepEqual(await listNames('labels.a'), ['f-a', 'f-b', 'f-c', 'f-v']);
    assert.deepEqual(await listNames('labels.a!=b,parent==base'), [
      'base-view',
      'dup',
      'f-b',
      'second',
    ]);
    assert.deepEqual(await listNames('name~=^f-[ab]$'), ['f-a', 'f-b']);
    assert.deepEqual(await listNames('kind==View', 'labels.a==c'), ['base-view', 'f-b', 'f-v']);
    // The committed snapshot took the active one's labels and the commit's.
    assert.deepEqual((await client.stat('f-c')).labels, { team: 'x', a: 'b' });
  });

  it('List streams a long listing in several messages', async () => {
    const keys = Array.from({ length: 130 }, (_, n) => `many-${String(n).padStart(3, '0')}`);
    for (const key of keys) await client.view(key, 'base');
    const { infos, messages } = await client.list(['name~=^many-']);
    assert.deepEqual(names(infos), keys);
    assert.ok(messages >= 2, `one message for ${infos.length} snapshots`);
    for (const key of keys) await client.remove(key);
    assert.deepEqual(await listNames('name~=^many-'), []);
  });

  it('Update applies field masks: labels.<key>, labels, or everything without one', async () => {
    await client.prepare('u', 'base', { a: '1', b: '2' });
    const created = await client.stat('u');
    let got = await client.update({ name: 'u', labels: { a: '10', c: '3' } }, ['labels.a']);
    assert.deepEqual(got.labels, { a: '10', b: '2' });
    got = await client.update({ name: 'u', labels: {} }, ['labels.b']);
    assert.deepEqual(got.labels, { a: '10' }, 'a masked key with no value is removed');
    got = await client.update({ name: 'u', labels: { z: '1' } }, ['labels']);
    assert.deepEqual(got.labels, { z: '1' });
    got = await client.update({ name: 'u', labels: { y: '2' } });
    assert.deepEqual(got.labels, { y: '2' });
    const now = await client.stat('u');
    assert.deepEqual(now.labels, { y: '2' });
    assert.equal(now.kind, 'ACTIVE');
    assert.equal(now.parent, 'base');
    assert.deepEqual(now.created_at, created.created_at);
    assert.ok((now.updated_at?.seconds ?? 0) >= (created.updated_at?.seconds ?? 0));
    // Labels of a committed snapshot change too.
    got = await client.update({ name: 'base', labels: { tier: 'gold' } }, ['labels.tier']);
    assert.deepEqual(got.labels, { tier: 'gold' });
  });

  it('Usage counts what a snapshot adds over its parent', async () => {
    const m = bind(await client.prepare('us', 'base'));
    const rng = new SeededRandom(7);
    await writeFile(join(m.source, 'a.bin'), rng.bytes(100_000));
    await mkdir(join(m.source, 'dir'));
    await writeFile(join(m.source, 'dir', 'b.bin'), rng.bytes(200_000));
    const u = await client.usage('us');
    assert.ok(u.size >= 300_000 && u.size < 400_000, `size ${u.size}`);
    assert.ok(u.inodes >= 3, `inodes ${u.inodes}`);
    const empty = await client.usage('dup');
    assert.equal(empty.size, 0);
  });

  it('Prepare labelled containerd.io/snapshot.ref with a committed snapshot answers ALREADY_EXISTS', async () => {
    await expectCode(
      client.prepare('extract-1', '', { [REF]: 'base' }),
      status.ALREADY_EXISTS,
      /base/,
    );
    await expectCode(client.stat('extract-1'), status.NOT_FOUND, /extract-1/);
    // A target that is not there (or not committed) is an ordinary Prepare.
    await client.prepare('extract-2', '', { [REF]: 'not-there' });
    await client.prepare('extract-3', 'base', { [REF]: 'dup' });
    assert.equal((await client.stat('extract-2')).kind, 'ACTIVE');
    await client.remove('extract-2');
    await client.remove('extract-3');
  });

  // containerd 1.6's metadata store, on a Prepare with a target (the pull unpacker's, and CRI's),
  // sends the agent the key `<ns>/<n>/extract-<id> <chainID>` with label snapshot.ref=<chainID>.
  // On ALREADY_EXISTS it looks the target up with exactly this filter; layers it committed are
  // named `<ns>/<n>/<chainID>` and carry the label.
  const chain = `sha256:${'ab'.repeat(32)}`;

  it('List answers containerd\'s target lookup: labels."containerd.io/snapshot.ref"==<chain>,parent==""', async () => {
    await client.prepare(`ns1/10/extract-111 ${chain}`, '', { [REF]: chain });
    await client.commit(`ns1/11/${chain}`, `ns1/10/extract-111 ${chain}`, { [REF]: chain });
    const { infos } = await client.list([
      `labels."containerd.io/snapshot.ref"==${chain},parent==""`,
    ]);
    assert.deepEqual(names(infos), [`ns1/11/${chain}`]);
    assert.equal(infos[0].kind, 'COMMITTED');
  });

  it('answers ALREADY_EXISTS for a chain another namespace committed (containerd remote-snapshot flow)', async () => {
    // The same layer, pulled in a second namespace: the agent holds it, so containerd should
    // be told it exists and skip the download and unpack.
    const r = await grpcCodeOf(
      client.prepare(`ns2/3/extract-222 ${chain}`, '', { [REF]: chain }),
    ).catch((err: Error) => ({ code: -1, details: `the Prepare succeeded (${err.message})` }));
    await client.remove(`ns2/3/extract-222 ${chain}`).catch(() => undefined);
    assert.equal(
      r.code,
      status.ALREADY_EXISTS,
      `Prepare with ${REF}=${chain}, which ns1/11/${chain} holds committed, answered ` +
        `${r.code === -1 ? 'OK' : status[r.code]}: ${r.details}. The agent looks the target up ` +
        `by snapshot name, but behind containerd names are always "<ns>/<n>/<key>", so the ` +
        `remote-snapshot shortcut never fires.`,
    );
  });

  it('Cleanup answers OK', async () => {
    await client.cleanup();
  });

  it('keeps snapshots, kinds, labels, parents and times across an agent restart', async () => {
    const before = (await client.list()).infos.sort((a, b) => a.name.localeCompare(b.name));
    const viewSource = bind(await client.mounts('base-view')).source;
    client.close();
    await agent.restart();
    client = new SnapshotsClient(agent.snapshotterSocket);
    await client.waitReady();
    const after = (await client.list()).infos.sort((a, b) => a.name.localeCompare(b.name));
    assert.deepEqual(after, before);
    assert.equal(bind(await client.mounts('base-view')).source, viewSource);
    assert.equal(await readFile(join(viewSource, 'hello.txt'), 'utf8'), 'hi\n');
    await expectCode(client.remove('base'), status.FAILED_PRECONDITION);
    assert.deepEqual(agent.problems(), []);
  });
});
