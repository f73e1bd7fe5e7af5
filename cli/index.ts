import AgentCommand from './commands/agent.js';
import SetupContainerdCommand from './commands/setup/containerd.js';
import SetupDockerCommand from './commands/setup/docker.js';

/**
 * Every `lcfs` command, by id. oclif loads this one module (the "explicit" discovery strategy)
 * instead of scanning cli/commands/, which keeps start-up fast and works the same from the
 * TypeScript sources and from dist/.
 */
export const COMMANDS = {
  agent: AgentCommand,
  'setup:containerd': SetupContainerdCommand,
  'setup:docker': SetupDockerCommand,
};
