import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadConfig } from '../../agent/config.js';
import { REPO_ROOT } from './lcfs-process.js';

/**
 * The managed plugin cannot be built offline (it needs a base image), so its config.json is
 * checked here against what dockerd's plugin manager reads (moby plugin/v2 and
 * daemon/graphdriver/plugin.go), and the agent config it ships against the agent's own loader.
 */

const PLUGIN_DIR = join(REPO_ROOT, 'deploy', 'docker-plugin');

interface PluginConfig {
  description: string;
  documentation: string;
  entrypoint: string[];
  interface: { types: string[]; socket: string };
  network: { type: string };
  propagatedMount: string;
  linux: { capabilities: string[]; allowAllDevices?: boolean; devices: Array<{ path: string }> };
  mounts: Array<{ source?: string; destination: string; type: string; options: string[] }>;
  env: Array<{ name: string; value?: string; settable?: string[] }>;
}

const within = (path: string, folder: string): boolean =>
  path === folder || path.startsWith(folder + '/');

describe('the Docker managed plugin package (deploy/docker-plugin)', () => {
  let plugin: PluginConfig;

  before(async () => {
    plugin = JSON.parse(await readFile(join(PLUGIN_DIR, 'config.json'), 'utf8')) as PluginConfig;
  });

  it('declares the fields dockerd needs for a graph driver plugin', () => {
    assert.equal(typeof plugin.description, 'string');
    assert.equal(typeof plugin.documentation, 'string');
    // dockerd matches prefix "docker" and capability "graphdriver" for a GraphDriver plugin.
    assert.deepEqual(plugin.interface.types, ['docker.graphdriver/1.0']);
    // The socket is a name in /run/docker/plugins inside the plugin, never a path.
    assert.match(plugin.interface.socket, /^[^/]+\.sock$/);
    assert.equal(plugin.network.type, 'host', 'the registry mirror listens on the host');
    assert.ok(plugin.entrypoint.length > 0 && plugin.entrypoint[0].startsWith('/'));
    assert.deepEqual(plugin.entrypoint.slice(1, 2), ['agent']);
    assert.ok(plugin.linux.capabilities.includes('CAP_SYS_ADMIN'), 'mounting FUSE');
    assert.ok(plugin.linux.capabilities.every((cap) => /^CAP_[A-Z_]+$/.test(cap)));
    assert.deepEqual(
      plugin.linux.devices.map((d) => d.path),
      ['/dev/fuse'],
    );
    assert.ok(plugin.propagatedMount.startsWith('/'));
    // dockerd refuses to start a plugin with a mount that has no source.
    for (const mount of plugin.mounts) assert.ok(mount.source, JSON.stringify(mount));
    for (const env of plugin.env) assert.match(env.name, /^LCFS_[A-Z_]+$/);
  });

  it('ships an agent config whose socket, store and volume fit the plugin', async () => {
    const configPath = plugin.entrypoint[plugin.entrypoint.indexOf('--config') + 1];
    assert.equal(configPath, '/etc/lcfs/config.json');
    const dockerfile = await readFile(join(PLUGIN_DIR, 'Dockerfile'), 'utf8');
    assert.match(
      dockerfile,
      /^COPY deploy\/docker-plugin\/agent-config\.json \/etc\/lcfs\/config\.json$/m,
    );
    assert.match(dockerfile, new RegExp(`/usr/local/bin/lcfs`));
    const config = await loadConfig({
      file: join(PLUGIN_DIR, 'agent-config.json'),
      env: { LCFS_LOG_LEVEL: plugin.env.find((e) => e.name === 'LCFS_LOG_LEVEL')?.value },
    });
    assert.equal(config.dockerPluginSocket, `/run/docker/plugins/${plugin.interface.socket}`);
    // dockerd maps Get's Dir onto the host only under the propagated mount.
    assert.ok(within(config.mountpoint, plugin.propagatedMount), config.mountpoint);
    assert.ok(within(config.dataDir, plugin.propagatedMount), config.dataDir);
  });
});
