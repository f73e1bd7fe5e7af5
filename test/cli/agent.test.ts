import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentProcess, cleanEnv, DEV_BIN, runToEnd } from './lcfs-process.js';

const PINO_INFO = 30;
const PINO_WARN = 40;
const PINO_FATAL = 60;

describe('lcfs agent (real process)', () => {
  let dataDir: string;
  const agents: AgentProcess[] = [];

  /** Starts `lcfs agent`; its sockets go in the test's folder, not /run. */
  function startAgent(args: string[], env?: NodeJS.ProcessEnv): AgentProcess {
    const socket = [
      '--docker-plugin-socket',
      join(dataDir, 'docker-plugin.sock'),
      '--snapshotter-socket',
      join(dataDir, 'snapshotter.sock'),
    ];
    const agent = new AgentProcess([...args, ...socket], env);
    agents.push(agent);
    return agent;
  }

  beforeEach(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'lcfs-agent-'));
  });

  afterEach(async () => {
    await Promise.all(agents.splice(0).map((agent) => agent.kill()));
    await rm(dataDir, { recursive: true, force: true });
  });

  it('starts, logs JSON, and stops cleanly with exit 0 on SIGTERM', async () => {
    const agent = startAgent(['--data-dir', dataDir]);
    const started = await agent.waitForLog('agent started');
    assert.equal(started.level, PINO_INFO);
    assert.equal(started.component, 'agent');
    assert.equal(started.name, 'lcfs');
    assert.equal(started.pid, agent.pid);
    assert.equal(started.dataDir, dataDir);
    assert.equal(started.mountpoint, join(dataDir, 'mnt'));
    assert.equal(typeof started.layers, 'number');
    assert.ok((await stat(join(dataDir, 'store'))).isDirectory(), 'store folder created');
    assert.equal(await readFile(join(dataDir, 'lcfs.lock'), 'utf8'), `${agent.pid}\n`);

    agent.child.kill('SIGTERM');
    const { code, signal } = await agent.exited;
    assert.equal(signal, null);
    assert.equal(code, 0, `stderr: ${agent.stderr}`);
    const messages = agent.logs.map((line) => line.msg);
    assert.ok(messages.includes('shutdown requested'));
    assert.equal(messages.at(-1), 'agent stopped');
    assert.deepEqual(agent.nonJsonLines, []);
    await assert.rejects(stat(join(dataDir, 'lcfs.lock')), { code: 'ENOENT' });
  });

  it('stops cleanly on SIGINT too', async () => {
    const agent = startAgent(['--data-dir', dataDir]);
    await agent.waitForLog('agent started');
    agent.child.kill('SIGINT');
    assert.deepEqual(await agent.exited, { code: 0, signal: null });
    assert.equal(agent.logs.at(-1)?.msg, 'agent stopped');
  });

  it('refuses a second agent on the same data directory', async () => {
    const first = startAgent(['--data-dir', dataDir]);
    await first.waitForLog('agent started');

    const second = startAgent(['--data-dir', dataDir]);
    const { code } = await second.exited;
    assert.equal(code, 1);
    const fatal = second.logs.find((line) => line.msg === 'agent failed to start');
    assert.ok(fatal, `no fatal log; logs: ${JSON.stringify(second.logs)}`);
    assert.equal(fatal.level, PINO_FATAL);
    const err = fatal.err as { code?: string; message?: string };
    assert.equal(err.code, 'LCFS_EDATADIR_LOCKED');
    assert.match(err.message ?? '', new RegExp(`pid ${first.pid}\\b`));
    assert.ok(!second.logs.some((line) => line.msg === 'agent started'));

    // The refused agent left the first one's lock alone.
    assert.equal(await readFile(join(dataDir, 'lcfs.lock'), 'utf8'), `${first.pid}\n`);
    first.child.kill('SIGTERM');
    assert.equal((await first.exited).code, 0);
  });

  it('exits 1 with a fatal log when the data directory cannot be made', async function () {
    // /proc refuses new entries with ENOENT, which made Node's recursive mkdir spin forever.
    this.timeout(30_000);
    const agent = startAgent(['--data-dir', '/proc/lcfs-no-such-dir/data']);
    assert.equal((await agent.exited).code, 1);
    const fatal = agent.logs.find((line) => line.msg === 'agent failed to start');
    assert.equal((fatal?.err as { code?: string } | undefined)?.code, 'ENOENT');
  });

  it('takes over the lock of an agent that died', async () => {
    const dead = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], {
      encoding: 'utf8',
    });
    const deadPid = Number(dead.stdout.trim());
    await writeFile(join(dataDir, 'lcfs.lock'), `${deadPid}\n`);

    const agent = startAgent(['--data-dir', dataDir]);
    await agent.waitForLog('agent started');
    const warning = agent.logs.find((line) => line.stalePid === deadPid);
    assert.equal(warning?.level, PINO_WARN);
    agent.child.kill('SIGTERM');
    assert.equal((await agent.exited).code, 0);
  });

  it('takes settings from the file, then env, then flags', async () => {
    const configFile = join(dataDir, 'config.json');
    await writeFile(
      configFile,
      JSON.stringify({
        dataDir: join(dataDir, 'from-file'),
        mountpoint: '/mnt/from-file',
        logLevel: 'warn',
      }),
    );
    const agent = startAgent(
      ['--config', configFile, '--data-dir', join(dataDir, 'from-flag')],
      cleanEnv({ LCFS_DATA_DIR: join(dataDir, 'from-env'), LCFS_LOG_LEVEL: 'info' }),
    );
    // An info line shows at all only because env's logLevel overrode the file's "warn".
    const started = await agent.waitForLog('agent started');
    assert.equal(started.dataDir, join(dataDir, 'from-flag'));
    assert.equal(started.mountpoint, '/mnt/from-file');
    agent.child.kill('SIGTERM');
    assert.equal((await agent.exited).code, 0);
  });

  it('exits 2 naming the key when a setting is invalid, before touching the data dir', async () => {
    const result = await runToEnd(
      DEV_BIN,
      ['agent', '--data-dir', join(dataDir, 'never')],
      cleanEnv({ LCFS_LOG_LEVEL: 'loud' }),
    );
    assert.equal(result.code, 2);
    assert.match(
      result.stderr,
      /config: logLevel must be one of trace,debug,info,warn,error,fatal \(got "loud"\) \[from env LCFS_LOG_LEVEL\]/,
    );
    await assert.rejects(stat(join(dataDir, 'never')), { code: 'ENOENT' });
  });

  it('exits 2 on an unknown key in the config file', async () => {
    const configFile = join(dataDir, 'config.json');
    await writeFile(configFile, JSON.stringify({ dataDir, flushIntervalMS: 5 }));
    const result = await runToEnd(DEV_BIN, ['agent', '--config', configFile]);
    assert.equal(result.code, 2);
    assert.match(result.stderr, /config: unknown key "flushIntervalMS" \[from file /);
  });
});
