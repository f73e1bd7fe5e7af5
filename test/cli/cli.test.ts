import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, readFile, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CONFIG_KEYS, envNameOf, flagNameOf } from '../../agent/config.js';
import { DEV_BIN, REPO_ROOT, runToEnd } from './lcfs-process.js';

const pkg = JSON.parse(await readFile(join(REPO_ROOT, 'package.json'), 'utf8')) as {
  version: string;
};
const VERSION_LINE = `lcfs/${pkg.version} ${process.platform}-${process.arch} node-${process.version}`;

async function checkVersionAndHelp(bin: string): Promise<void> {
  const version = await runToEnd(bin, ['--version']);
  assert.equal(version.code, 0, version.stderr);
  assert.equal(version.stdout.trim(), VERSION_LINE);

  const help = await runToEnd(bin, ['--help']);
  assert.equal(help.code, 0, help.stderr);
  assert.equal(help.stderr, '', 'help writes no warnings');
  assert.match(help.stdout, /\$ lcfs \[COMMAND\]/);
  assert.match(help.stdout, /^\s+agent\s+Run the lcfs agent in the foreground\./m);

  const agentHelp = await runToEnd(bin, ['agent', '--help']);
  assert.equal(agentHelp.code, 0, agentHelp.stderr);
  assert.match(agentHelp.stdout, /--config=PATH/);
  for (const key of CONFIG_KEYS) {
    assert.match(agentHelp.stdout, new RegExp(`--${flagNameOf(key)}=`), `flag for ${key}`);
    assert.ok(agentHelp.stdout.replace(/\s+/g, ' ').includes(envNameOf(key)), `env for ${key}`);
  }
}

describe('lcfs CLI', () => {
  it('prints version and help from the sources (bin/dev.js)', async () => {
    await checkVersionAndHelp(DEV_BIN);
  });

  it('rejects an unknown command', async () => {
    const result = await runToEnd(DEV_BIN, ['no-such-command']);
    assert.notEqual(result.code, 0);
    assert.match(result.stderr, /command no-such-command not found/);
  });

  describe('compiled (bin/run.js)', () => {
    let root: string;

    // A copy of the package layout with its own dist/, so the test never touches the work tree.
    before(async () => {
      root = await mkdtemp(join(tmpdir(), 'lcfs-built-'));
      await mkdir(join(root, 'bin'));
      await copyFile(join(REPO_ROOT, 'package.json'), join(root, 'package.json'));
      await copyFile(join(REPO_ROOT, 'bin', 'run.js'), join(root, 'bin', 'run.js'));
      await symlink(join(REPO_ROOT, 'node_modules'), join(root, 'node_modules'));
      const tsc = await runToEnd(join(REPO_ROOT, 'node_modules', '.bin', 'tsc'), [
        '-p',
        join(REPO_ROOT, 'tsconfig.json'),
        '--outDir',
        join(root, 'dist'),
      ]);
      assert.equal(tsc.code, 0, `tsc failed:\n${tsc.stdout}${tsc.stderr}`);
    });

    after(async () => {
      await rm(root, { recursive: true, force: true });
    });

    // The copy holds no TypeScript sources, so this proves bin/run.js runs from dist/ alone.
    it('prints version and help from dist/', async () => {
      await checkVersionAndHelp(join(root, 'bin', 'run.js'));
    });
  });
});
