import { readFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import { ClusterError } from './errors.js';
import { UpstreamRegistry, type Credentials } from './upstream-registry.js';

/**
 * The upstream registries the mirror pulls from, by the name engines use for them. Configured
 * entries map a name onto a URL (`docker.io=https://registry-1.docker.io`, or a local registry
 * in tests); any other name is reached at `https://<name>`. Credentials come from a file in
 * Docker's config.json format, so operators can reuse the one `docker login` wrote.
 */

/** The registry dockerd's `registry-mirrors` stand in for: it asks mirrors for Docker Hub only. */
export const DOCKER_HUB = 'docker.io';

export class Upstreams {
  private readonly byName = new Map<string, UpstreamRegistry>();

  private constructor(
    private readonly credentials: ReadonlyMap<string, Credentials>,
    private readonly logger: Logger,
  ) {}

  /**
   * @param entries `name=URL` items, already validated by the config.
   * @param authFile a Docker config.json with `auths`, or '' for none.
   */
  static async load(
    entries: readonly string[],
    authFile: string,
    logger: Logger,
  ): Promise<Upstreams> {
    const upstreams = new Upstreams(await readAuthFile(authFile), logger);
    for (const entry of entries) {
      const at = entry.indexOf('=');
      upstreams.add(entry.slice(0, at), entry.slice(at + 1));
    }
    return upstreams;
  }

  /**
   * The upstream for a request: `?ns=` names it (containerd, Docker ≥ 28); without it the
   * request comes from dockerd's Docker-Hub-only mirror setting.
   */
  resolve(ns: string | null): UpstreamRegistry {
    const name = ns === null || ns === '' ? DOCKER_HUB : ns;
    return this.byName.get(name) ?? this.add(name, `https://${name}`);
  }

  private add(name: string, url: string): UpstreamRegistry {
    const upstream = new UpstreamRegistry(
      name,
      url.replace(/\/+$/, ''),
      this.credentials.get(name) ?? this.credentials.get(new URL(url).host),
      this.logger.child({ upstream: name }),
    );
    this.byName.set(name, upstream);
    return upstream;
  }
}

/** Docker's `{"auths": {"host": {"auth": base64("user:pass")} | {"username", "password"}}}`. */
async function readAuthFile(path: string): Promise<Map<string, Credentials>> {
  const found = new Map<string, Credentials>();
  if (path === '') return found;
  let parsed: { auths?: Record<string, { auth?: string; username?: string; password?: string }> };
  try {
    parsed = JSON.parse(await readFile(path, 'utf8')) as typeof parsed;
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new ClusterError(
      'LCFS_EREGISTRY_AUTH',
      `cannot read registryAuthFile ${path}: ${reason}`,
    );
  }
  if (typeof parsed !== 'object' || parsed === null) {
    throw new ClusterError(
      'LCFS_EREGISTRY_AUTH',
      `registryAuthFile ${path} must hold a JSON object`,
    );
  }
  for (const [host, entry] of Object.entries(parsed.auths ?? {})) {
    let { username, password } = entry;
    if (entry.auth !== undefined) {
      const pair = Buffer.from(entry.auth, 'base64').toString('utf8');
      const colon = pair.indexOf(':');
      username = pair.slice(0, colon);
      password = pair.slice(colon + 1);
    }
    if (username === undefined || password === undefined) continue;
    // `docker login` writes Docker Hub as https://index.docker.io/v1/.
    const name = host.includes('index.docker.io') ? DOCKER_HUB : host.replace(/^https?:\/\//, '');
    found.set(name.replace(/\/.*$/, ''), { username, password });
  }
  return found;
}
