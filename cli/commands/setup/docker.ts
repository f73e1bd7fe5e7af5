import { Command, Flags } from '@oclif/core';
import { readConfigFile, SetupError, writeConfigFile } from '../../setup/config-file.js';
import {
  DEFAULT_DAEMON_JSON,
  DEFAULT_STORAGE_DRIVER,
  planDaemonJson,
  type DaemonJsonPlan,
} from '../../setup/daemon-json.js';
import { DEFAULT_MIRROR_URL, parseMirrorUrl } from '../../setup/mirror-url.js';

export default class SetupDockerCommand extends Command {
  static override summary =
    "Configure dockerd to use lcfs as its storage driver and, with --mirror, the agent's registry mirror.";

  static override description = `Sets "experimental": true and "storage-driver": "lcfs" in dockerd's daemon.json: dockerd then uses the agent's graph driver plugin at /run/docker/plugins/lcfs.sock. Every other setting is kept. Running it again changes nothing; before it changes an existing file it copies it to <file>.lcfs-backup-<time>. A file that is not a JSON object is refused and left as it was.

With --mirror, it also puts the agent's registry mirror first in "registry-mirrors". dockerd uses mirrors for Docker Hub images only. --no-storage-driver configures only the mirror, for a host that keeps its storage driver but wants pulls from peers.

Graph driver plugins work with Docker 17 to 27 (Docker 27 also needs DOCKERD_DEPRECATED_GRAPHDRIVER_PLUGINS=1, which deploy/docker/lcfs.conf sets); Docker 28 removed them: use "lcfs setup containerd" and Docker's containerd image store there. It does not restart dockerd: it says whether a restart or a reload is needed.`;

  static override examples = [
    '<%= config.bin %> <%= command.id %>',
    '<%= config.bin %> <%= command.id %> --mirror',
    '<%= config.bin %> <%= command.id %> --mirror --no-storage-driver --dry-run',
    '<%= config.bin %> <%= command.id %> --driver lcfs/lcfs:0.1.0',
  ];

  static override flags = {
    'daemon-json': Flags.string({
      summary: "dockerd's settings file",
      default: DEFAULT_DAEMON_JSON,
      helpValue: 'PATH',
    }),
    'storage-driver': Flags.boolean({
      summary: 'make lcfs the storage driver; --no-storage-driver sets up only the mirror',
      default: true,
      allowNo: true,
    }),
    driver: Flags.string({
      summary:
        'the storage driver name: lcfs for the agent on this host, or the managed plugin (lcfs/lcfs:VERSION)',
      default: DEFAULT_STORAGE_DRIVER,
      helpValue: 'NAME',
    }),
    mirror: Flags.boolean({
      summary: "put the agent's registry mirror first in registry-mirrors (Docker Hub only)",
    }),
    'mirror-url': Flags.string({
      summary: `the agent's registry mirror (its mirrorAddress setting; default ${DEFAULT_MIRROR_URL}); no path`,
      helpValue: 'URL',
      dependsOn: ['mirror'],
    }),
    'dry-run': Flags.boolean({
      summary: 'print what would change; write nothing',
      default: false,
    }),
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(SetupDockerCommand);
    if (!flags['storage-driver'] && !flags.mirror)
      this.error('--no-storage-driver leaves nothing to do without --mirror', {
        code: 'LCFS_ESETUP_NOTHING',
        exit: 2,
      });
    const dryRun = flags['dry-run'];
    let plan: DaemonJsonPlan;
    let backup: string | undefined;
    let path = flags['daemon-json'];
    let created = false;
    try {
      const file = await readConfigFile(flags['daemon-json']);
      path = file.path;
      plan = planDaemonJson(file.text, {
        storageDriver: flags['storage-driver'] ? flags.driver : undefined,
        mirror: flags.mirror
          ? parseMirrorUrl(flags['mirror-url'] ?? DEFAULT_MIRROR_URL)
          : undefined,
        file: file.path,
      });
      if (plan.text !== null && !dryRun) backup = (await writeConfigFile(file, plan.text)).backup;
      created = file.text === null;
    } catch (err) {
      if (err instanceof SetupError) this.error(err.message, { code: err.code, exit: 1 });
      const e = err as NodeJS.ErrnoException;
      this.error(`cannot update ${path}: ${e.message}`, {
        code: e.code ?? 'LCFS_EDOCKER_IO',
        exit: 1,
      });
    }

    if (plan.changes.length === 0) {
      this.log(`${path} already has these settings; nothing changed, dockerd needs nothing.`);
      return;
    }
    const verb = dryRun ? 'would change' : created ? 'created' : 'changed';
    this.log(`${dryRun ? 'dry run: ' : ''}${path} ${verb}:`);
    for (const change of plan.changes) this.log(`  - ${change}`);
    if (backup) this.log(`  - the previous file is kept as ${backup}`);
    if (dryRun) {
      this.log(
        `\nthe new file:\n\n${(plan.text ?? '').replace(/\n$/, '')}\n\nnothing was written.`,
      );
      return;
    }
    if (plan.apply === 'restart') {
      this.log(
        `\ndockerd must be restarted to use it (systemctl restart docker), with the lcfs agent ` +
          `running: dockerd waits for the plugin socket at start. If dockerd's command line ` +
          `sets --storage-driver or --experimental, remove them: dockerd refuses a setting ` +
          `given both there and in daemon.json.`,
      );
    } else {
      this.log(
        `\ndockerd reads registry-mirrors again on a reload (systemctl reload docker, or ` +
          `SIGHUP): no restart needed.`,
      );
    }
  }
}
