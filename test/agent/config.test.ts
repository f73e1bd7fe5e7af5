import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CONFIG_KEYS,
  ConfigError,
  envNameOf,
  flagNameOf,
  loadConfig,
  type AgentConfig,
} from '../../agent/config.js';

/** The defaults of the keys no test below sets. */
const MIRROR_AND_CLUSTER_DEFAULTS = {
  apiAddress: '127.0.0.1:7350',
  mirrorAddress: '127.0.0.1:7351',
  upstreams: ['docker.io=https://registry-1.docker.io'],
  registryAuthFile: '',
  blobCacheBytes: 20 * 2 ** 30,
  serveStaleTags: false,
  etcdEndpoints: [],
  clusterPrefix: '/lcfs',
  clusterSecretFile: '',
  p2pAddress: '0.0.0.0:7352',
  staticPeers: [],
};

describe('agent config', () => {
  let dir: string;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lcfs-config-'));
  });

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function writeConfigFile(content: unknown): Promise<string> {
    const path = join(dir, 'config.json');
    await writeFile(path, typeof content === 'string' ? content : JSON.stringify(content));
    return path;
  }

  async function expectConfigError(
    promise: Promise<AgentConfig>,
    code: string,
    message: string | RegExp,
  ): Promise<ConfigError> {
    const err: unknown = await promise.then(
      () => assert.fail('expected a ConfigError'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    assert.equal(err.code, code);
    if (typeof message === 'string') assert.equal(err.message, message);
    else assert.match(err.message, message);
    return err;
  }

  it('uses the documented defaults when nothing is set', async () => {
    assert.deepEqual(await loadConfig({ env: {} }), {
      dataDir: '/var/lib/lcfs',
      mountpoint: '/var/lib/lcfs/mnt',
      dockerPluginSocket: '/run/docker/plugins/lcfs.sock',
      snapshotterSocket: '/run/lcfs/snapshotter.sock',
      logLevel: 'info',
      flushIntervalMs: 50,
      ...MIRROR_AND_CLUSTER_DEFAULTS,
    });
  });

  it('derives env names and flag names from the key', () => {
    assert.deepEqual(CONFIG_KEYS.map(envNameOf), [
      'LCFS_DATA_DIR',
      'LCFS_MOUNTPOINT',
      'LCFS_DOCKER_PLUGIN_SOCKET',
      'LCFS_SNAPSHOTTER_SOCKET',
      'LCFS_LOG_LEVEL',
      'LCFS_FLUSH_INTERVAL_MS',
      'LCFS_API_ADDRESS',
      'LCFS_MIRROR_ADDRESS',
      'LCFS_UPSTREAMS',
      'LCFS_REGISTRY_AUTH_FILE',
      'LCFS_BLOB_CACHE_BYTES',
      'LCFS_SERVE_STALE_TAGS',
      'LCFS_ETCD_ENDPOINTS',
      'LCFS_CLUSTER_PREFIX',
      'LCFS_CLUSTER_SECRET_FILE',
      'LCFS_P2P_ADDRESS',
      'LCFS_STATIC_PEERS',
    ]);
    assert.deepEqual(CONFIG_KEYS.map(flagNameOf), [
      'data-dir',
      'mountpoint',
      'docker-plugin-socket',
      'snapshotter-socket',
      'log-level',
      'flush-interval-ms',
      'api-address',
      'mirror-address',
      'upstreams',
      'registry-auth-file',
      'blob-cache-bytes',
      'serve-stale-tags',
      'etcd-endpoints',
      'cluster-prefix',
      'cluster-secret-file',
      'p2p-address',
      'static-peers',
    ]);
  });

  it('applies file, then env, then flags, key by key', async () => {
    const file = await writeConfigFile({
      dataDir: '/from/file',
      mountpoint: '/mnt/from-file',
      logLevel: 'warn',
      flushIntervalMs: 10,
    });
    const config = await loadConfig({
      file,
      env: { LCFS_LOG_LEVEL: 'debug', LCFS_FLUSH_INTERVAL_MS: '20', LCFS_DATA_DIR: '/from/env' },
      flags: { flushIntervalMs: '30' },
    });
    assert.deepEqual(config, {
      dataDir: '/from/env',
      mountpoint: '/mnt/from-file',
      dockerPluginSocket: '/run/docker/plugins/lcfs.sock',
      snapshotterSocket: '/run/lcfs/snapshotter.sock',
      logLevel: 'debug',
      flushIntervalMs: 30,
      ...MIRROR_AND_CLUSTER_DEFAULTS,
    });
  });

  it('derives the default mountpoint from the chosen dataDir', async () => {
    const config = await loadConfig({ env: { LCFS_DATA_DIR: '/srv/lcfs' } });
    assert.equal(config.mountpoint, '/srv/lcfs/mnt');
  });

  it('resolves relative paths against the config file folder, or the working dir', async () => {
    const file = await writeConfigFile({ dataDir: 'data' });
    assert.equal((await loadConfig({ file })).dataDir, join(dir, 'data'));
    const fromFlag = await loadConfig({ file, flags: { dataDir: 'rel' } });
    assert.equal(fromFlag.dataDir, join(process.cwd(), 'rel'));
  });

  it('ignores environment variables that are not config keys', async () => {
    const config = await loadConfig({ env: { LCFS_SOMETHING_ELSE: 'x', PATH: '/bin' } });
    assert.equal(config.logLevel, 'info');
  });

  it('names the key, the value and the env variable of an invalid env value', async () => {
    const err = await expectConfigError(
      loadConfig({ env: { LCFS_LOG_LEVEL: 'loud' } }),
      'LCFS_ECONFIG_INVALID',
      'config: logLevel must be one of trace,debug,info,warn,error,fatal (got "loud") [from env LCFS_LOG_LEVEL]',
    );
    assert.equal(err.key, 'logLevel');
  });

  it('names the flag of an invalid flag value', async () => {
    await expectConfigError(
      loadConfig({ flags: { flushIntervalMs: '2.5' } }),
      'LCFS_ECONFIG_INVALID',
      'config: flushIntervalMs must be an integer from 1 to 60000 (got "2.5") [from flag --flush-interval-ms]',
    );
  });

  it('names the file of an invalid file value', async () => {
    const file = await writeConfigFile({ flushIntervalMs: -1 });
    await expectConfigError(
      loadConfig({ file }),
      'LCFS_ECONFIG_INVALID',
      `config: flushIntervalMs must be an integer from 1 to 60000 (got -1) [from file ${file}]`,
    );
  });

  it('rejects an invalid file value even when env overrides it', async () => {
    const file = await writeConfigFile({ dataDir: 42 });
    await expectConfigError(
      loadConfig({ file, env: { LCFS_DATA_DIR: '/ok' } }),
      'LCFS_ECONFIG_INVALID',
      /^config: dataDir must be a non-empty path \(got 42\) \[from file /,
    );
  });

  it('rejects empty paths', async () => {
    await expectConfigError(
      loadConfig({ env: { LCFS_MOUNTPOINT: '' } }),
      'LCFS_ECONFIG_INVALID',
      'config: mountpoint must be a non-empty path (got "") [from env LCFS_MOUNTPOINT]',
    );
  });

  it('reads lists as JSON arrays in the file and comma-separated in env and flags', async () => {
    const file = await writeConfigFile({
      etcdEndpoints: ['http://10.0.0.1:2379', 'http://10.0.0.2:2379'],
    });
    const config = await loadConfig({
      file,
      env: { LCFS_UPSTREAMS: 'docker.io=http://127.0.0.1:5000, ghcr.io=https://ghcr.io' },
      flags: { serveStaleTags: 'true', mirrorAddress: '' },
    });
    assert.deepEqual(config.etcdEndpoints, ['http://10.0.0.1:2379', 'http://10.0.0.2:2379']);
    assert.deepEqual(config.upstreams, [
      'docker.io=http://127.0.0.1:5000',
      'ghcr.io=https://ghcr.io',
    ]);
    assert.equal(config.serveStaleTags, true);
    assert.equal(config.mirrorAddress, '', 'an empty address turns the mirror off');
  });

  it('names the bad item of a list, and rejects bad addresses and booleans', async () => {
    await expectConfigError(
      loadConfig({ env: { LCFS_UPSTREAMS: 'docker.io=ftp://x' } }),
      'LCFS_ECONFIG_INVALID',
      'config: upstreams has an invalid item "docker.io=ftp://x": not http(s) (got "docker.io=ftp://x") [from env LCFS_UPSTREAMS]',
    );
    await expectConfigError(
      loadConfig({ flags: { mirrorAddress: '7351' } }),
      'LCFS_ECONFIG_INVALID',
      /^config: mirrorAddress must be host:port, or empty to turn it off/,
    );
    await expectConfigError(
      loadConfig({ env: { LCFS_SERVE_STALE_TAGS: 'yes' } }),
      'LCFS_ECONFIG_INVALID',
      /^config: serveStaleTags must be true or false/,
    );
    await expectConfigError(
      loadConfig({ env: { LCFS_CLUSTER_PREFIX: 'lcfs/' } }),
      'LCFS_ECONFIG_INVALID',
      /^config: clusterPrefix must be an absolute key prefix/,
    );
  });

  it('rejects an unknown key in the file and names it', async () => {
    const file = await writeConfigFile({ dataDir: '/x', logLvl: 'debug' });
    const err = await expectConfigError(
      loadConfig({ file }),
      'LCFS_ECONFIG_UNKNOWN_KEY',
      /^config: unknown key "logLvl" \[from file .*config\.json\]; known keys: dataDir,mountpoint,dockerPluginSocket,snapshotterSocket,logLevel,flushIntervalMs,apiAddress,[a-zA-Z0-9,]+$/,
    );
    assert.equal(err.key, 'logLvl');
  });

  it('does not mistake inherited object properties for keys', async () => {
    const file = await writeConfigFile('{"constructor": 1}');
    await expectConfigError(loadConfig({ file }), 'LCFS_ECONFIG_UNKNOWN_KEY', /"constructor"/);
  });

  it('reports a missing file, malformed JSON and a non-object file', async () => {
    await expectConfigError(
      loadConfig({ file: join(dir, 'absent.json') }),
      'LCFS_ECONFIG_FILE',
      /cannot read config file .*absent\.json: ENOENT/,
    );
    await expectConfigError(
      loadConfig({ file: await writeConfigFile('{"dataDir": ') }),
      'LCFS_ECONFIG_FILE',
      /config\.json is not valid JSON/,
    );
    await expectConfigError(
      loadConfig({ file: await writeConfigFile([1, 2]) }),
      'LCFS_ECONFIG_FILE',
      /must hold a JSON object/,
    );
  });
});
