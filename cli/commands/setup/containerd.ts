import { Command, Flags, type Interfaces } from '@oclif/core';
import { resolve } from 'node:path';
import { describeKey } from '../../../agent/config.js';
import {
  readConfigFile,
  SetupError,
  writeConfigFile,
  type ConfigFile,
} from '../../setup/config-file.js';
import {
  DEFAULT_CONTAINERD_CONFIG,
  planContainerdConfig,
  planCriRegistryConfigPath,
  pluginBlock,
  PLUGIN_NAME,
  PLUGIN_TYPE,
  type ConfigPlan,
} from '../../setup/containerd-config.js';
import {
  checkRegistryName,
  DEFAULT_CERTS_DIR,
  DEFAULT_HOSTS_FOLDER,
  hostsTomlPath,
  planHostsToml,
  registryServer,
} from '../../setup/hosts-toml.js';
import { DEFAULT_MIRROR_URL, parseMirrorUrl } from '../../setup/mirror-url.js';

/** One file the command edits: what it read, the text it wants, and why. */
interface PlannedFile {
  readonly file: ConfigFile;
  readonly text: string;
  readonly changes: string[];
  /** Set for config.toml: its plugin plan, for the messages. */
  readonly plugin?: ConfigPlan;
}

export default class SetupContainerdCommand extends Command {
  static override summary =
    "Declare the lcfs snapshotter in containerd's config.toml, and its registry mirror.";

  static override description = `Adds the proxy plugin block

  [proxy_plugins.lcfs]
    type = "snapshot"
    address = "<socket>"

to containerd's config, so containerd (and what runs on it: nerdctl, Kubernetes, Docker's containerd image store) can use lcfs as the snapshotter "lcfs". The file is edited as text: comments and formatting stay. Running it again changes nothing. When it changes an existing file it first copies it to <file>.lcfs-backup-<time>; a missing file is created with "version = 2". A file that already declares [proxy_plugins.lcfs] with another address or type is refused unless --force. Config versions 1, 2 and 3 are handled alike.

With --mirror, it also makes the agent's registry mirror the first host containerd asks for every registry: <certs-dir>/_default/hosts.toml, plus <certs-dir>/<registry>/hosts.toml for each --mirror-registry, each with [host."<mirror-url>"] capabilities = ["pull", "resolve"]. Existing hosts.toml files are edited the same way, and a host block for the mirror already there is left as it is. It sets the CRI plugin's registry config_path to <certs-dir> when config.toml has that table, and otherwise prints what to add. --no-snapshotter does only the mirror part.

containerd reads config.toml at start only: restart it afterwards. hosts.toml files are read at each pull.`;

  static override examples = [
    '<%= config.bin %> <%= command.id %>',
    '<%= config.bin %> <%= command.id %> --dry-run',
    '<%= config.bin %> <%= command.id %> --config /etc/containerd/config.toml --socket /run/lcfs/snapshotter.sock',
    '<%= config.bin %> <%= command.id %> --mirror --mirror-registry docker.io --mirror-registry ghcr.io',
    '<%= config.bin %> <%= command.id %> --mirror --no-snapshotter',
  ];

  static override flags = {
    config: Flags.string({
      summary: "containerd's config file",
      default: DEFAULT_CONTAINERD_CONFIG,
      helpValue: 'PATH',
    }),
    socket: Flags.string({
      summary: "the agent's snapshotter socket (its snapshotterSocket setting)",
      default: describeKey('snapshotterSocket').defaultText,
      helpValue: 'PATH',
    }),
    force: Flags.boolean({
      summary: 'replace another address or type already declared for [proxy_plugins.lcfs]',
      default: false,
    }),
    snapshotter: Flags.boolean({
      summary: 'declare the snapshotter; --no-snapshotter sets up only the mirror',
      default: true,
      allowNo: true,
    }),
    mirror: Flags.boolean({
      summary: "make the agent's registry mirror the first host of every registry",
    }),
    'mirror-url': Flags.string({
      summary: `the agent's registry mirror (its mirrorAddress setting; default ${DEFAULT_MIRROR_URL})`,
      helpValue: 'URL',
      dependsOn: ['mirror'],
    }),
    'mirror-registry': Flags.string({
      summary: 'also write <certs-dir>/NAME/hosts.toml for this registry (repeatable)',
      helpValue: 'NAME',
      multiple: true,
      dependsOn: ['mirror'],
    }),
    'certs-dir': Flags.string({
      summary: "containerd's registry hosts folder (the CRI plugin's config_path)",
      default: DEFAULT_CERTS_DIR,
      helpValue: 'PATH',
    }),
    'dry-run': Flags.boolean({
      summary: 'print what would change; write nothing',
      default: false,
    }),
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(SetupContainerdCommand);
    if (!flags.snapshotter && !flags.mirror)
      this.error('--no-snapshotter leaves nothing to do without --mirror', {
        code: 'LCFS_ESETUP_NOTHING',
        exit: 2,
      });
    if (flags.socket.trim() === '' || flags.socket.includes('\n'))
      this.error('--socket must be a path', { code: 'LCFS_ECONTAINERD_SOCKET', exit: 2 });
    const socket = resolve(flags.socket.replace(/^unix:\/\//, ''));
    const dryRun = flags['dry-run'];

    let plan: SetupPlan;
    try {
      plan = await planSetup(flags, socket);
    } catch (err) {
      this.fail(err, flags.config);
    }

    const { config } = plan;
    if (config?.plugin?.action === 'unchanged' && config.changes.length === 0) {
      this.log(
        `${config.file.path} already declares [proxy_plugins.${PLUGIN_NAME}] (type "${PLUGIN_TYPE}", address ${socket}); nothing changed.`,
      );
    }
    let configWritten = false;
    for (const { file, text, changes, plugin } of [...(config ? [config] : []), ...plan.hosts]) {
      if (changes.length === 0) {
        if (!plugin) this.log(`${file.path} already lists the mirror; nothing changed.`);
        continue;
      }
      const version = plugin ? ` (containerd config version ${plugin.version})` : '';
      const verb = dryRun ? 'would change' : file.text === null ? 'created' : 'changed';
      this.log(`${dryRun ? 'dry run: ' : ''}${file.path}${version} ${verb}:`);
      for (const change of changes) this.log(`  - ${change}`);
      if (dryRun) {
        // A new or appended plugin block is shown alone; other edits as the whole new file.
        const blockOnly = plugin?.action === 'create' || plugin?.action === 'append';
        this.log(blockOnly ? '\nthe block:\n' : '\nthe new file:\n');
        this.log((blockOnly ? pluginBlock(socket) : text).replace(/\n$/, '') + '\n');
        continue;
      }
      try {
        const { written, backup } = await writeConfigFile(file, text);
        if (backup) this.log(`  - the previous file is kept as ${backup}`);
        if (plugin) configWritten = written;
      } catch (err) {
        this.fail(err, file.path);
      }
    }
    for (const note of plan.advice) this.log(`\nnote: ${note}`);
    if (dryRun) {
      this.log('\nnothing was written.');
      return;
    }
    if (configWritten) {
      this.log(
        `\nRestart containerd to load it (systemctl restart containerd), with the lcfs agent ` +
          `running.` +
          (flags.snapshotter
            ? ` Then: ctr run --snapshotter ${PLUGIN_NAME} ..., or for Kubernetes set ` +
              `snapshotter = "${PLUGIN_NAME}" in the CRI plugin's containerd section.`
            : ''),
      );
    }
    if (flags.mirror) {
      this.log(
        `\ncontainerd reads hosts.toml at each pull, without a restart. ctr needs --hosts-dir ` +
          `${resolve(flags['certs-dir'])}; nerdctl, and the CRI plugin with config_path, read ` +
          `it themselves.`,
      );
    }
  }

  private fail(err: unknown, file: string): never {
    if (err instanceof SetupError) this.error(err.message, { code: err.code, exit: 1 });
    const e = err as NodeJS.ErrnoException;
    this.error(`cannot update ${file}: ${e.message}`, {
      code: e.code ?? 'LCFS_ECONTAINERD_IO',
      exit: 1,
    });
  }
}

interface SetupPlan {
  /** containerd's config.toml; absent when there is none and nothing to put in it. */
  readonly config?: PlannedFile;
  readonly hosts: PlannedFile[];
  /** What the operator must do by hand. */
  readonly advice: string[];
}

/** Reads and plans every file before any is written: a refused file stops them all. */
async function planSetup(
  flags: Interfaces.InferredFlags<typeof SetupContainerdCommand.flags>,
  socket: string,
): Promise<SetupPlan> {
  const configFile = await readConfigFile(flags.config);
  const path = configFile.path;
  const certsDir = resolve(flags['certs-dir']);
  const advice: string[] = [];
  const changes: string[] = [];
  let text = configFile.text;
  let plugin: ConfigPlan | undefined;
  if (flags.snapshotter) {
    plugin = planContainerdConfig(text, { socket, force: flags.force, file: path });
    text = plugin.text;
    changes.push(...plugin.changes);
  }
  if (flags.mirror && text !== null) {
    const registry = planCriRegistryConfigPath(text, { certsDir, file: path });
    text = registry.text;
    changes.push(...registry.changes);
    advice.push(...registry.advice);
  } else if (flags.mirror) {
    advice.push(
      `there is no ${path}; if Kubernetes (the CRI plugin) pulls through this containerd, ` +
        `set its registry config_path to ${certsDir}.`,
    );
  }
  // The edited text must read back as wanted: a guard against a scanner or editing mistake.
  if (text !== null && flags.snapshotter && planContainerdConfig(text, { socket }).changes.length)
    throw new Error(`internal error: the edited ${path} does not declare the plugin as planned`);
  if (text !== null && flags.mirror && planCriRegistryConfigPath(text, { certsDir }).changes.length)
    throw new Error(`internal error: the edited ${path} does not set config_path as planned`);

  const hosts: PlannedFile[] = [];
  if (flags.mirror) {
    const mirror = parseMirrorUrl(flags['mirror-url'] ?? DEFAULT_MIRROR_URL);
    const folders: Array<[folder: string, server: string | undefined]> = [
      [DEFAULT_HOSTS_FOLDER, undefined],
      ...(flags['mirror-registry'] ?? []).map((name): [string, string] => [
        checkRegistryName(name),
        registryServer(name),
      ]),
    ];
    for (const [folder, server] of folders) {
      const file = await readConfigFile(hostsTomlPath(certsDir, folder));
      const planned = planHostsToml(file.text, { mirror, server, file: file.path });
      if (planHostsToml(planned.text, { mirror }).changes.length > 0)
        throw new Error(`internal error: the edited ${file.path} does not list the mirror`);
      hosts.push({ file, text: planned.text, changes: planned.changes });
    }
  }
  return {
    config: text === null ? undefined : { file: configFile, text, changes, plugin },
    hosts,
    advice,
  };
}
