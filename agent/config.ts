import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  addressKey,
  booleanKey,
  enumKey,
  integerKey,
  listKey,
  optionalPathKey,
  pathKey,
  patternKey,
  urlReason,
  type ConfigSource,
  type KeySpec,
} from './config-keys.js';
import { AgentError, type AgentErrorCode } from './errors.js';

/**
 * The agent's one typed configuration. Every key is a row of `configSchema`: its type, its
 * default and its validation live there, and its environment variable (LCFS_DATA_DIR) and flag
 * (--data-dir) are derived from its name. Sources apply in order: defaults, then the JSON file,
 * then the environment, then flags; each later source overrides the earlier ones key by key.
 */

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export const DEFAULT_API_ADDRESS = '127.0.0.1:7350';
export const DEFAULT_MIRROR_ADDRESS = '127.0.0.1:7351';

const DEFAULT_DATA_DIR = '/var/lib/lcfs';

export const configSchema = {
  dataDir: pathKey(
    'Folder for the layer store, the lock file and agent state',
    DEFAULT_DATA_DIR,
    () => DEFAULT_DATA_DIR,
  ),
  mountpoint: pathKey(
    'Where the layer volume is mounted over FUSE: one directory per layer',
    '<dataDir>/mnt',
    ({ dataDir }) => join(typeof dataDir === 'string' ? dataDir : DEFAULT_DATA_DIR, 'mnt'),
  ),
  dockerPluginSocket: pathKey(
    'Unix socket of the Docker graph driver plugin; dockerd finds it by name in /run/docker/plugins',
    '/run/docker/plugins/lcfs.sock',
    () => '/run/docker/plugins/lcfs.sock',
  ),
  snapshotterSocket: pathKey(
    'Unix socket of the containerd snapshotter (proxy plugin "lcfs" in containerd\'s config)',
    '/run/lcfs/snapshotter.sock',
    () => '/run/lcfs/snapshotter.sock',
  ),
  logLevel: enumKey('Lowest level of log line written', LOG_LEVELS, 'info'),
  flushIntervalMs: integerKey(
    'How long, in ms, node operations may wait before the store makes them durable',
    1,
    60_000,
    50,
  ),
  apiAddress: addressKey('Where the REST API and Prometheus /metrics listen', DEFAULT_API_ADDRESS),
  mirrorAddress: addressKey(
    "Where the registry mirror for this host's engines listens",
    DEFAULT_MIRROR_ADDRESS,
  ),
  upstreams: listKey(
    'Upstream registries as registry=URL; a registry not listed is reached at https://<registry>',
    ['docker.io=https://registry-1.docker.io'],
    (entry) => {
      const at = entry.indexOf('=');
      if (at <= 0) return 'must be registry=URL';
      return urlReason(entry.slice(at + 1));
    },
  ),
  registryAuthFile: optionalPathKey(
    'Credentials for upstream registries, in Docker\'s config.json format ({"auths": …})',
  ),
  blobCacheBytes: integerKey(
    "Size bound of the registry mirror's blob cache; least recently used blobs go first",
    1 << 20,
    Number.MAX_SAFE_INTEGER,
    20 * 2 ** 30,
  ),
  serveStaleTags: booleanKey(
    'When the upstream is unreachable, resolve tags from the last value seen',
    false,
  ),
  etcdEndpoints: listKey(
    'etcd endpoints of the cluster (http://host:port); none runs standalone',
    [],
    urlReason,
  ),
  clusterPrefix: patternKey(
    'Key prefix of this cluster in etcd',
    '/lcfs',
    /^\/[A-Za-z0-9._/-]*[^/]$/,
    'must be an absolute key prefix such as /lcfs, with no trailing slash',
  ),
  clusterSecretFile: optionalPathKey(
    "Pre-shared key of the cluster's private libp2p network (swarm.key format)",
  ),
  p2pAddress: addressKey(
    'Where the libp2p node listens for peers (used when the agent is in a cluster)',
    '0.0.0.0:7352',
  ),
  staticPeers: listKey(
    'libp2p multiaddrs of peers to dial without etcd (/ip4/…/tcp/…/p2p/…)',
    [],
    (entry) => (entry.startsWith('/') ? undefined : 'must be a multiaddr'),
  ),
} satisfies Record<string, KeySpec<unknown>>;

export type ConfigKey = keyof typeof configSchema;
type SpecValue<S> = S extends KeySpec<infer T> ? T : never;
export type AgentConfig = { readonly [K in ConfigKey]: SpecValue<(typeof configSchema)[K]> };

/** Keys in schema order, so a fallback can read the keys before it. */
export const CONFIG_KEYS = Object.keys(configSchema) as ConfigKey[];

export function envNameOf(key: ConfigKey): string {
  return `LCFS_${key.replace(/[A-Z]/g, (letter) => `_${letter}`).toUpperCase()}`;
}

export function flagNameOf(key: ConfigKey): string {
  return key.replace(/[A-Z]/g, (letter) => `-${letter.toLowerCase()}`);
}

/** What help text and docs say about a key. */
export function describeKey(key: ConfigKey): {
  description: string;
  defaultText: string;
  env: string;
  flag: string;
} {
  const { description, defaultText } = configSchema[key];
  return { description, defaultText, env: envNameOf(key), flag: flagNameOf(key) };
}

export class ConfigError extends AgentError {
  /** The key at fault, when the error is about one key. */
  readonly key: string | undefined;

  constructor(
    code: Extract<AgentErrorCode, `LCFS_ECONFIG_${string}`>,
    message: string,
    key?: string,
  ) {
    super(code, `config: ${message}`);
    this.name = 'ConfigError';
    this.key = key;
  }
}

export interface ConfigInputs {
  /** Path of a JSON config file, if any. */
  readonly file?: string;
  /** Usually process.env; only LCFS_* names of known keys are read. */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Flag values by key, as the CLI parsed them; undefined means not given. */
  readonly flags?: Readonly<Partial<Record<ConfigKey, string>>>;
}

function describeSource(source: ConfigSource): string {
  switch (source.kind) {
    case 'file':
      return `from file ${source.path}`;
    case 'env':
      return `from env ${source.name}`;
    case 'flag':
      return `from flag --${source.name}`;
  }
}

async function readConfigFile(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new ConfigError('LCFS_ECONFIG_FILE', `cannot read config file ${path}: ${reason}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(
      'LCFS_ECONFIG_FILE',
      `config file ${path} is not valid JSON: ${(err as Error).message}`,
    );
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new ConfigError('LCFS_ECONFIG_FILE', `config file ${path} must hold a JSON object`);
  }
  for (const key of Object.keys(parsed)) {
    if (!Object.hasOwn(configSchema, key)) {
      throw new ConfigError(
        'LCFS_ECONFIG_UNKNOWN_KEY',
        `unknown key "${key}" [from file ${path}]; known keys: ${CONFIG_KEYS.join(',')}`,
        key,
      );
    }
  }
  return parsed as Record<string, unknown>;
}

/**
 * Builds and validates the configuration. Throws a ConfigError naming the key and the source of
 * the first invalid value, or the unknown key found in the file.
 */
export async function loadConfig(inputs: ConfigInputs = {}): Promise<AgentConfig> {
  const fromFile: Record<string, unknown> =
    inputs.file === undefined ? {} : await readConfigFile(inputs.file);
  const resolved: Partial<Record<ConfigKey, unknown>> = {};

  for (const key of CONFIG_KEYS) {
    const candidates: Array<[unknown, ConfigSource]> = [];
    if (inputs.file !== undefined && Object.hasOwn(fromFile, key)) {
      candidates.push([fromFile[key], { kind: 'file', path: inputs.file }]);
    }
    const envName = envNameOf(key);
    const envValue = inputs.env?.[envName];
    if (envValue !== undefined) candidates.push([envValue, { kind: 'env', name: envName }]);
    const flagValue = inputs.flags?.[key];
    if (flagValue !== undefined)
      candidates.push([flagValue, { kind: 'flag', name: flagNameOf(key) }]);

    // Every value given is validated, even one a later source overrides: a broken file
    // should not lie in wait for the day its override is removed.
    const spec: KeySpec<unknown> = configSchema[key];
    if (candidates.length === 0) resolved[key] = spec.fallback(resolved);
    for (const [raw, source] of candidates) {
      const outcome = spec.parse(raw, source);
      if ('invalid' in outcome) {
        throw new ConfigError(
          'LCFS_ECONFIG_INVALID',
          `${key} ${outcome.invalid} (got ${JSON.stringify(raw)}) [${describeSource(source)}]`,
          key,
        );
      }
      resolved[key] = outcome.value;
    }
  }
  return resolved as AgentConfig;
}
