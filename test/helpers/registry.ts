/**
 * A private Docker registry (Debian's docker-registry, distribution 2.8) on a loopback port, with
 * its storage in a temp dir; images go in with skopeo.
 *
 *   const reg = await Registry.start();                  // or start({ auth: true })
 *   const ref = await reg.push(imageTar, 'bench/img:1'); // 127.0.0.1:PORT/bench/img:1
 *   await reg.blobGets();       // Map digest → { gets, bytes } the registry served, from its log
 *   await reg.stop();           // upstream down; the port and the stored images are kept
 *   await reg.restart();
 *   await reg.dispose();        // in `after`: stop, remove the temp dir
 *
 * With `auth: true` every request needs HTTP basic auth (an htpasswd file, bcrypt) with
 * `reg.credentials`; anonymous ones get 401 and `WWW-Authenticate: Basic realm="lcfs-test"`.
 *
 * The registry writes one access log line per request on stdout, whatever its log level, in the
 * Apache combined format (status, then body bytes written), e.g.
 *
 *   127.0.0.1 - - [29/Nov/2026:08:39:41 +0000] "GET /v2/t/img/blobs/sha256:… HTTP/1.1" 206 10 "" "curl/7.88.1"
 *
 * The line is written when the registry's handler returns, before Go flushes the response's last
 * buffered bytes, so a client that has read a whole response finds it in the log.
 */
import bcrypt from 'bcryptjs';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execOk } from '../docker/helpers/exec.js';
import { onProcessExit } from './cleanup.js';
import { Daemon, freePorts } from './daemon.js';

export const REGISTRY_BIN = '/usr/bin/docker-registry';

/** The realm in the registry's basic-auth challenge. */
export const REGISTRY_REALM = 'lcfs-test';

export interface RegistryOptions {
  /** Require HTTP basic auth (htpasswd) for every request; default anonymous access. */
  auth?: boolean;
}

export interface Credentials {
  username: string;
  password: string;
}

/** The value of an `Authorization` header for these credentials. */
export function basicAuthorization({ username, password }: Credentials): string {
  return `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
}

/** One request as the registry's access log tells it. */
export interface AccessLogEntry {
  method: string;
  /** Path and query, as requested. */
  uri: string;
  status: number;
  /** Body bytes written in the response. */
  bytes: number;
}

/** What was served for one blob: GETs answered 200 or 206, and the body bytes they sent. */
export interface BlobGetCount {
  gets: number;
  bytes: number;
}

/** The digest in a blob path `/v2/<name>/blobs/<digest>` (query ignored), else undefined. */
export function blobDigestOf(uri: string): string | undefined {
  return /^\/v2\/.+\/blobs\/(sha256:[0-9a-f]{64})(?:\?.*)?$/.exec(uri)?.[1];
}

/** Tallies the served (200 or 206) GETs of blobs among `requests`, per digest. */
export function countBlobGets(requests: readonly AccessLogEntry[]): Map<string, BlobGetCount> {
  const counts = new Map<string, BlobGetCount>();
  for (const r of requests) {
    const digest = blobDigestOf(r.uri);
    if (r.method !== 'GET' || digest === undefined || (r.status !== 200 && r.status !== 206))
      continue;
    const count = counts.get(digest) ?? { gets: 0, bytes: 0 };
    count.gets += 1;
    count.bytes += r.bytes;
    counts.set(digest, count);
  }
  return counts;
}

const ACCESS_LINE = /^\S+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-)/;

export class Registry {
  readonly host: string;
  readonly url: string;
  private readonly daemon: Daemon;
  private readonly accessLogPath: string;
  private readonly unregisterExit: () => void;

  private constructor(
    readonly dir: string,
    port: number,
    /** Set when the registry requires auth. */
    readonly credentials: Credentials | undefined,
  ) {
    this.host = `127.0.0.1:${port}`;
    this.url = `http://${this.host}`;
    this.accessLogPath = join(dir, 'access.log');
    this.daemon = new Daemon({
      name: `docker-registry on ${this.host}`,
      argv: [REGISTRY_BIN, 'serve', join(dir, 'config.yml')],
      stdoutPath: this.accessLogPath,
      stderrPath: join(dir, 'registry.log'),
      ready: async () => {
        const res = await fetch(`${this.url}/v2/`);
        await res.arrayBuffer();
        return res.status === 200 || (credentials !== undefined && res.status === 401);
      },
    });
    this.unregisterExit = onProcessExit(() => rmSync(dir, { recursive: true, force: true }));
  }

  static async start(opts: RegistryOptions = {}): Promise<Registry> {
    const dir = await mkdtemp(join(tmpdir(), 'lcfs-registry-'));
    const [port] = await freePorts(1);
    const credentials = opts.auth
      ? { username: 'lcfs', password: randomBytes(12).toString('hex') }
      : undefined;
    const config: Record<string, unknown> = {
      version: '0.1',
      log: { level: 'warn', accesslog: { disabled: false } },
      storage: { filesystem: { rootdirectory: join(dir, 'data') } },
      // A fixed secret, so that upload state survives restart().
      http: { addr: `127.0.0.1:${port}`, secret: randomBytes(16).toString('hex') },
    };
    if (credentials !== undefined) {
      // bcrypt cost 4, the least Go's bcrypt takes: the registry checks the hash on every
      // request, and at the usual cost 10 that adds about 65 ms to each one.
      const hash = await bcrypt.hash(credentials.password, 4);
      await writeFile(join(dir, 'htpasswd'), `${credentials.username}:${hash}\n`);
      config.auth = { htpasswd: { realm: REGISTRY_REALM, path: join(dir, 'htpasswd') } };
    }
    // YAML is a superset of JSON.
    await writeFile(join(dir, 'config.yml'), JSON.stringify(config, null, 2));
    const reg = new Registry(dir, port, credentials);
    try {
      await reg.daemon.start();
    } catch (err) {
      await reg.dispose();
      throw err;
    }
    return reg;
  }

  get running(): boolean {
    return this.daemon.running;
  }

  /** Stops the registry (SIGTERM, or SIGKILL for a crash); its port and storage stay reserved. */
  async stop(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
    await this.daemon.stop(signal);
  }

  /** Starts it again on the same port and storage (stopping it first if it runs). */
  async restart(): Promise<void> {
    await this.daemon.stop();
    await this.daemon.start();
  }

  /** Pushes a docker-archive with skopeo (which compresses layers with gzip); returns the ref. */
  async push(archive: string, name: string): Promise<string> {
    const ref = `${this.host}/${name}`;
    await this.skopeoCopy(`docker-archive:${archive}`, ref);
    return ref;
  }

  /**
   * Pushes the image tagged `tag` in an OCI image layout as is: skopeo must not recompress
   * layers nor rewrite the manifest (`--preserve-digests` makes it fail rather than do so).
   * Returns the ref and the manifest digest the push produced.
   */
  async pushOciLayout(
    layoutDir: string,
    tag: string,
    name: string,
  ): Promise<{ ref: string; digest: string }> {
    const ref = `${this.host}/${name}`;
    const digestFile = join(tmpdir(), `lcfs-skopeo-${randomBytes(8).toString('hex')}.digest`);
    try {
      await this.skopeoCopy(`oci:${layoutDir}:${tag}`, ref, [
        '--preserve-digests',
        `--digestfile=${digestFile}`,
      ]);
      return { ref, digest: (await readFile(digestFile, 'utf8')).trim() };
    } finally {
      await rm(digestFile, { force: true });
    }
  }

  private async skopeoCopy(source: string, ref: string, flags: string[] = []): Promise<void> {
    const creds = this.credentials;
    const argv = ['skopeo', 'copy', '--quiet', '--dest-tls-verify=false', ...flags];
    if (creds !== undefined) argv.push(`--dest-creds=${creds.username}:${creds.password}`);
    await execOk([...argv, source, `docker://${ref}`], { timeoutMs: 600_000 });
  }

  /** Every request the registry answered since it was first started (restarts included). */
  async accessLog(): Promise<AccessLogEntry[]> {
    const text = await readFile(this.accessLogPath, 'utf8').catch(() => '');
    const entries: AccessLogEntry[] = [];
    for (const line of text.split('\n')) {
      const m = ACCESS_LINE.exec(line);
      if (m === null) continue;
      entries.push({
        method: m[1],
        uri: m[2],
        status: Number(m[3]),
        bytes: m[4] === '-' ? 0 : Number(m[4]),
      });
    }
    return entries;
  }

  /** The blob GETs the registry served (200 or 206), per digest; skopeo's pushes make none. */
  async blobGets(): Promise<Map<string, BlobGetCount>> {
    return countBlobGets(await this.accessLog());
  }

  async logTail(lines = 30): Promise<string> {
    return this.daemon.logTail(lines);
  }

  async dispose(): Promise<void> {
    await this.daemon.stop();
    this.unregisterExit();
    await rm(this.dir, { recursive: true, force: true });
  }
}
