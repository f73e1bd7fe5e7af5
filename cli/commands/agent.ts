import { Command, Flags } from '@oclif/core';
import { ConfigError, loadConfig, type AgentConfig } from '../../agent/config.js';
import { configFlagValues, configFlags } from '../config-flags.js';

export default class AgentCommand extends Command {
  static override summary = 'Run the lcfs agent in the foreground.';

  static override description = `Opens the layer store under <dataDir>/store, logs JSON lines to stdout, and runs until SIGTERM or SIGINT, then stops cleanly and exits 0. A second signal during shutdown forces an exit.

Configuration comes from the JSON file given with --config, then LCFS_* environment variables, then flags; a later source overrides an earlier one key by key.`;

  static override examples = [
    '<%= config.bin %> <%= command.id %> --config /etc/lcfs/config.json',
    '<%= config.bin %> <%= command.id %> --data-dir /tmp/lcfs --log-level debug',
  ];

  static override flags = {
    config: Flags.string({ summary: 'JSON configuration file', helpValue: 'PATH' }),
    ...configFlags,
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(AgentCommand);
    let config: AgentConfig;
    try {
      config = await loadConfig({
        file: flags.config,
        env: process.env,
        flags: configFlagValues(flags),
      });
    } catch (err) {
      if (err instanceof ConfigError) this.error(err.message, { code: err.code, exit: 2 });
      throw err;
    }
    // Loaded here, not at the top: help and flag parsing should not load the store engine.
    const { runAgentInForeground } = await import('../../agent/foreground.js');
    await runAgentInForeground(config);
  }
}
