import { join } from 'node:path';
import { ContainerdConfigError, scanOrRefuse } from './containerd-config.js';
import { sameMirrorUrl } from './mirror-url.js';
import {
  appendBlock,
  applyEdits,
  insertBlockBefore,
  startOfHeaderBlock,
  tomlKey,
  tomlString,
} from './toml-edit.js';

/**
 * containerd's registry host files: `<certsDir>/<registry>/hosts.toml` lists the hosts that
 * serve a registry, tried in the order they appear, then the registry's `server` itself;
 * `<certsDir>/_default/hosts.toml` covers every registry without a folder of its own. A mirror
 * host gets `?ns=<registry>` on each request, so one mirror serves every registry.
 */

export const DEFAULT_CERTS_DIR = '/etc/containerd/certs.d';
/** The folder containerd falls back to for a registry that has none. */
export const DEFAULT_HOSTS_FOLDER = '_default';

export function hostsTomlPath(certsDir: string, folder: string): string {
  return join(certsDir, folder, 'hosts.toml');
}

/** Where a registry's API is served: docker.io's is registry-1.docker.io. */
export function registryServer(registry: string): string {
  return registry === 'docker.io' ? 'https://registry-1.docker.io' : `https://${registry}`;
}

/** A registry name as containerd names its folder: a host, with an optional port. */
export function checkRegistryName(registry: string): string {
  if (!/^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:\d{1,5})?$/.test(registry))
    throw new ContainerdConfigError(
      'LCFS_ECONTAINERD_UNSUPPORTED',
      `--mirror-registry ${registry} is not a registry host name (such as docker.io or ghcr.io)`,
    );
  return registry;
}

function mirrorBlock(mirror: string): string {
  return (
    `# The lcfs agent's registry mirror, added by \`lcfs setup containerd --mirror\`: pulls ask\n` +
    `# it first; it serves from its cache and its peers, and fetches the rest upstream.\n` +
    `[host.${tomlKey(mirror)}]\n` +
    `  capabilities = ["pull", "resolve"]\n`
  );
}

export interface HostsPlan {
  /** The new text (the old one when unchanged). */
  text: string;
  changes: string[];
}

/**
 * What `lcfs setup containerd --mirror` does to one hosts.toml (`null`: there is no file): a
 * new file gets `server` (when `server` is given) and the mirror's host block. In an existing
 * file the mirror's block goes before the other hosts, so that it is tried first, and a block
 * for the mirror already there is left as it is.
 */
export function planHostsToml(
  existing: string | null,
  opts: { mirror: string; server?: string; file?: string },
): HostsPlan {
  const file = opts.file ?? 'hosts.toml';
  const block = mirrorBlock(opts.mirror);
  if (existing === null) {
    const server =
      opts.server === undefined
        ? `# Registry hosts for every registry without a folder of its own, created by\n` +
          `# \`lcfs setup containerd --mirror\`.\n`
        : `# Registry hosts, created by \`lcfs setup containerd --mirror\`.\n` +
          `server = ${tomlString(opts.server)}\n`;
    return {
      text: `${server}\n${block}`,
      changes: [`created with the mirror ${opts.mirror} as its first host`],
    };
  }
  const scan = scanOrRefuse(existing, file);
  const hostHeaders = scan.headers.filter((h) => h.path.length === 2 && h.path[0] === 'host');
  const known = [...hostHeaders, ...scan.assignments].find(
    (entry) => entry.path[0] === 'host' && sameMirrorUrl(entry.path[1] ?? '', opts.mirror),
  );
  if (known) return { text: existing, changes: [] };

  const hostValue = scan.assignments.find(
    (a) => a.path.length === 1 && a.path[0] === 'host' && !a.nested,
  );
  if (hostValue) {
    throw new ContainerdConfigError(
      'LCFS_ECONTAINERD_UNSUPPORTED',
      `${file} line ${hostValue.line} defines host as an inline value, which cannot take a ` +
        `[host.${tomlKey(opts.mirror)}] table: add the mirror with capabilities ` +
        `["pull", "resolve"] to it by hand, first. The file was not changed`,
    );
  }
  const [first] = hostHeaders;
  if (!first) {
    return {
      text: appendBlock(existing, block),
      changes: [`added the mirror ${opts.mirror} as a host`],
    };
  }
  return {
    text: applyEdits(existing, [
      insertBlockBefore(existing, startOfHeaderBlock(existing, first.line), block),
    ]),
    changes: [`added the mirror ${opts.mirror} before the other hosts (line ${first.line})`],
  };
}
