/**
 * A private Docker registry (Debian's docker-registry, distribution 2.8) on a loopback port, with
 * its storage in a temp dir; images go in with skopeo.
 *
 *   const reg = await Registry.start();
 *   const ref = await reg.push(imageTar, 'bench/img:1');   // 127.0.0.1:PORT/bench/img:1
 *   await reg.dispose();
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../../fuse/helpers/shell.js';
import { describeRun } from './containerd.js';
import { alive, onProcessExit, sleep } from '../../helpers/cleanup.js';

export const REGISTRY_BIN = '/usr/bin/docker-registry';

/** A port free on 127.0.0.1 a moment ago. */
async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  server.close();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

export class Registry {
  readonly host: string;
  private readonly child: ChildProcess;
  private readonly exited: Promise<unknown>;
  private readonly unregisterExit: () => void;

  private constructor(
    readonly dir: string,
    port: number,
    child: ChildProcess,
  ) {
    this.host = `127.0.0.1:${port}`;
    this.child = child;
    this.exited = once(child, 'exit');
    const pid = child.pid;
    this.unregisterExit = onProcessExit(() => {
      if (pid !== undefined && alive(pid)) process.kill(pid, 'SIGKILL');
    });
  }

  static async start(): Promise<Registry> {
    const dir = await mkdtemp(join(tmpdir(), 'lcfs-registry-'));
    const port = await freePort();
    const config = join(dir, 'config.yml');
    await writeFile(
      config,
      `version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: ${dir}/data\n` +
        `http:\n  addr: 127.0.0.1:${port}\n`,
    );
    const log = openSync(join(dir, 'registry.log'), 'a');
    const child = spawn(REGISTRY_BIN, ['serve', config], { stdio: ['ignore', log, log] });
    closeSync(log);
    const reg = new Registry(dir, port, child);
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        const res = await fetch(`http://${reg.host}/v2/`);
        if (res.ok) return reg;
      } catch {
        // not listening yet
      }
      if (child.exitCode !== null || Date.now() > deadline) {
        const text = await readFile(join(dir, 'registry.log'), 'utf8').catch(() => '');
        await reg.dispose();
        throw new Error(`docker-registry did not start on ${reg.host}:\n${text}`);
      }
      await sleep(100);
    }
  }

  /** Pushes a docker-archive with skopeo (which compresses layers with gzip); returns the ref. */
  async push(archive: string, name: string): Promise<string> {
    const ref = `${this.host}/${name}`;
    const argv = [
      'skopeo',
      'copy',
      '--quiet',
      '--dest-tls-verify=false',
      `docker-archive:${archive}`,
      `docker://${ref}`,
    ];
    const r = await run(argv, { timeoutMs: 600_000 });
    if (r.code !== 0) throw new Error(`skopeo failed:\n${describeRun(argv, r)}`);
    return ref;
  }

  async dispose(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      await this.exited;
    }
    this.unregisterExit();
    await rm(this.dir, { recursive: true, force: true });
  }
}
