import { SetupError } from './config-file.js';
import { appendBlock, applyEdits, keysAfterHeader, tomlKey, tomlString } from './toml-edit.js';
import type { TextEdit } from './toml-edit.js';
import {
  pathStartsWith,
  samePath,
  scanToml,
  TomlScanError,
  type TomlAssignment,
  type TomlScan,
} from './toml-scan.js';

/**
 * The edits `lcfs setup containerd` makes to containerd's config.toml, planned on its text:
 * declaring the agent's snapshotter as the proxy plugin `[proxy_plugins.lcfs]`, and pointing the
 * CRI plugin's registry `config_path` at the hosts.toml folder. `[proxy_plugins.NAME]` is the same
 * table in containerd config versions 1, 2 and 3; the CRI registry table is not.
 */

export const PLUGIN_NAME = 'lcfs';
export const PLUGIN_TYPE = 'snapshot';
const PLUGIN_PATH = ['proxy_plugins', PLUGIN_NAME];
export const DEFAULT_CONTAINERD_CONFIG = '/etc/containerd/config.toml';

export class ContainerdConfigError extends SetupError {
  constructor(
    override readonly code:
      'LCFS_ECONTAINERD_CONFLICT' | 'LCFS_ECONTAINERD_PARSE' | 'LCFS_ECONTAINERD_UNSUPPORTED',
    message: string,
  ) {
    super(code, message);
    this.name = 'ContainerdConfigError';
  }
}

/** Scans a file, refusing one that is not TOML. */
export function scanOrRefuse(text: string, file: string): TomlScan {
  try {
    return scanToml(text);
  } catch (err) {
    if (!(err instanceof TomlScanError)) throw err;
    throw new ContainerdConfigError(
      'LCFS_ECONTAINERD_PARSE',
      `${file} is not valid TOML (${err.message}); it was not changed`,
    );
  }
}

export interface ConfigPlan {
  /** `unchanged`: the file already declares the plugin as wanted. */
  action: 'create' | 'append' | 'update' | 'unchanged';
  /** The new text (the old one when unchanged). */
  text: string;
  /** What changed, one line each, for the operator. */
  changes: string[];
  /** containerd config version the file declares: 1 when it has no `version` key. */
  version: number | string;
}

/** The block `lcfs setup containerd` appends. */
export function pluginBlock(socket: string): string {
  return (
    `# The lcfs agent's containerd snapshotter, added by \`lcfs setup containerd\`.\n` +
    `[proxy_plugins.${PLUGIN_NAME}]\n` +
    `  type = ${tomlString(PLUGIN_TYPE)}\n` +
    `  address = ${tomlString(socket)}\n`
  );
}

/** containerd dials `unix:///path` and `/path` alike. */
function sameAddress(a: string, b: string): boolean {
  const strip = (s: string): string => (s.startsWith('unix://') ? s.slice('unix://'.length) : s);
  return strip(a) === strip(b);
}

/** The file's `version` key: 1 when absent, as containerd reads it. */
function configVersion(scan: TomlScan): number | string {
  const v = scan.assignments.find((a) => samePath(a.path, ['version']));
  if (!v) return 1;
  return v.kind === 'other' && /^\d+$/.test(v.raw) ? Number(v.raw) : v.raw;
}

export interface PlanOptions {
  socket: string;
  /** Replace a different address or type of an existing `[proxy_plugins.lcfs]`. */
  force?: boolean;
  /** For messages. */
  file?: string;
}

/**
 * What `lcfs setup containerd` does to a config file's text (`null`: there is no file). Throws
 * ContainerdConfigError when the file cannot be read or declares the plugin otherwise (unless
 * `force`).
 */
export function planContainerdConfig(existing: string | null, opts: PlanOptions): ConfigPlan {
  const { socket } = opts;
  const file = opts.file ?? 'the config';
  const name = `[${PLUGIN_PATH.join('.')}]`;
  if (existing === null) {
    return {
      action: 'create',
      text:
        `# containerd configuration, created by \`lcfs setup containerd\`.\n` +
        `version = 2\n\n` +
        pluginBlock(socket),
      changes: [`created the file (containerd config version 2) with ${name} at ${socket}`],
      version: 2,
    };
  }

  const scan = scanOrRefuse(existing, file);
  const version = configVersion(scan);

  const inPlugin = scan.assignments.filter((a) => pathStartsWith(a.path, PLUGIN_PATH));
  const pluginHeaders = scan.headers.filter((h) => pathStartsWith(h.path, PLUGIN_PATH));
  const header = pluginHeaders.find((h) => samePath(h.path, PLUGIN_PATH) && !h.array);
  const arrayHeader = pluginHeaders.find((h) => h.array && h.path.length <= PLUGIN_PATH.length + 1);
  if (arrayHeader) {
    throw new ContainerdConfigError(
      'LCFS_ECONTAINERD_UNSUPPORTED',
      `${file} line ${arrayHeader.line}: [[${arrayHeader.path.join('.')}]] is an array of ` +
        `tables, which containerd does not read as a proxy plugin; it was not changed`,
    );
  }
  const proxyValue = scan.assignments.find(
    (a) => samePath(a.path, ['proxy_plugins']) && a.kind !== 'inline-table',
  );
  if (proxyValue) {
    throw new ContainerdConfigError(
      'LCFS_ECONTAINERD_UNSUPPORTED',
      `${file} line ${proxyValue.line}: proxy_plugins is not a table; it was not changed`,
    );
  }
  // proxy_plugins = { ... } cannot take a [proxy_plugins.lcfs] table after it.
  const proxyInline = scan.assignments.find(
    (a) => samePath(a.path, ['proxy_plugins']) && a.kind === 'inline-table' && !a.nested,
  );

  const append = (): ConfigPlan => {
    if (proxyInline) {
      throw new ContainerdConfigError(
        'LCFS_ECONTAINERD_UNSUPPORTED',
        `${file} line ${proxyInline.line} defines proxy_plugins as an inline table, which ` +
          `cannot take ${name}; add ${PLUGIN_NAME} = { type = "${PLUGIN_TYPE}", address = ` +
          `${tomlString(socket)} } to it by hand. The file was not changed`,
      );
    }
    return {
      action: 'append',
      text: appendBlock(existing, pluginBlock(socket)),
      changes: [`added ${name} (type "${PLUGIN_TYPE}", address ${socket})`],
      version,
    };
  };
  if (inPlugin.length === 0 && pluginHeaders.length === 0) return append();

  const single = (key: string): TomlAssignment | undefined => {
    const found = inPlugin.filter((a) => samePath(a.path, [...PLUGIN_PATH, key]));
    if (found.length > 1) {
      throw new ContainerdConfigError(
        'LCFS_ECONTAINERD_PARSE',
        `${file} sets ${PLUGIN_PATH.join('.')}.${key} twice (lines ` +
          `${found.map((a) => a.line).join(', ')}); it was not changed`,
      );
    }
    return found[0];
  };
  const address = single('address');
  const type = single('type');

  const addressConflict =
    address !== undefined && !(address.value !== undefined && sameAddress(address.value, socket));
  const typeConflict = type !== undefined && type.value !== PLUGIN_TYPE;
  const conflicts: string[] = [];
  if (address && addressConflict) conflicts.push(`address ${address.raw} (line ${address.line})`);
  if (type && typeConflict) conflicts.push(`type ${type.raw} (line ${type.line})`);
  if (conflicts.length > 0 && !opts.force) {
    throw new ContainerdConfigError(
      'LCFS_ECONTAINERD_CONFLICT',
      `${file} already declares ${name} with ${conflicts.join(' and ')}, where lcfs needs ` +
        `type "${PLUGIN_TYPE}" and address ${socket}. Another snapshotter may be using the ` +
        `name "${PLUGIN_NAME}": check, then rerun with --force to replace the value. ` +
        `The file was not changed`,
    );
  }

  const edits: TextEdit[] = [];
  const changes: string[] = [];
  if (address && addressConflict) {
    edits.push([address.start, address.end, tomlString(socket)]);
    changes.push(`replaced address ${address.raw} with ${socket} (line ${address.line}, --force)`);
  }
  if (type && typeConflict) {
    edits.push([type.start, type.end, tomlString(PLUGIN_TYPE)]);
    changes.push(`replaced type ${type.raw} with "${PLUGIN_TYPE}" (line ${type.line}, --force)`);
  }
  const missing = [
    ...(type ? [] : [`type = ${tomlString(PLUGIN_TYPE)}`]),
    ...(address ? [] : [`address = ${tomlString(socket)}`]),
  ];
  if (missing.length > 0) {
    if (header) {
      edits.push(keysAfterHeader(existing, header, missing));
      changes.push(`added ${missing.join(', ')} to ${name} (line ${header.line})`);
    } else if (inPlugin.length === 0) {
      // Only sub-tables such as [proxy_plugins.lcfs.exports]: the table itself may follow.
      return append();
    } else {
      throw new ContainerdConfigError(
        'LCFS_ECONTAINERD_UNSUPPORTED',
        `${file} line ${inPlugin[0].line} declares ${PLUGIN_PATH.join('.')} without ` +
          `${missing.join(' and ')}, in a form this command does not edit (an inline table or ` +
          `dotted keys); add them by hand. The file was not changed`,
      );
    }
  }
  if (edits.length === 0) return { action: 'unchanged', text: existing, changes: [], version };
  return { action: 'update', text: applyEdits(existing, edits), changes, version };
}

// ---------------------------------------------------------------------------------------------
// The CRI plugin's registry config_path

/** Where each config version keeps the CRI plugin's registry settings. */
const CRI_REGISTRY_TABLES: Readonly<Record<string, readonly string[]>> = {
  '1': ['plugins', 'cri', 'registry'],
  '2': ['plugins', 'io.containerd.grpc.v1.cri', 'registry'],
  '3': ['plugins', 'io.containerd.cri.v1.images', 'registry'],
};

export interface RegistryPlan {
  /** The new text (the old one when unchanged). */
  text: string;
  changes: string[];
  /** What the operator must do by hand, where the command would have to guess. */
  advice: string[];
}

/**
 * Points the CRI plugin (Kubernetes) at the hosts.toml folder: `config_path = certsDir` in the
 * CRI registry table, added only to a `[...registry]` table the file already has. Any other
 * case (no such table, another config_path, the older `registry.mirrors` that containerd refuses
 * next to config_path) is left to the operator, with the lines to add.
 */
export function planCriRegistryConfigPath(
  existing: string,
  opts: { certsDir: string; file?: string },
): RegistryPlan {
  const file = opts.file ?? 'the config';
  const scan = scanOrRefuse(existing, file);
  const version = configVersion(scan);
  const table = CRI_REGISTRY_TABLES[String(version)];
  const unchanged = (advice: string[] = []): RegistryPlan => ({
    text: existing,
    changes: [],
    advice,
  });
  if (!table) {
    return unchanged([
      `${file} declares containerd config version ${version}, which this command does not ` +
        `know: point the CRI plugin's registry config_path at ${opts.certsDir} by hand.`,
    ]);
  }
  const name = `[${table.map(tomlKey).join('.')}]`;
  const snippet = `${name}\n  config_path = ${tomlString(opts.certsDir)}`;
  const header = scan.headers.find((h) => samePath(h.path, table) && !h.array);
  const inTable = [...scan.assignments, ...scan.headers].filter((a) =>
    pathStartsWith(a.path, table),
  );
  if (inTable.length === 0) {
    return unchanged([
      `${file} has no ${name} table. If Kubernetes (the CRI plugin) pulls through this ` +
        `containerd, add:\n\n${snippet}\n`,
    ]);
  }
  const configPaths = scan.assignments.filter((a) => samePath(a.path, [...table, 'config_path']));
  if (configPaths.length > 1) {
    throw new ContainerdConfigError(
      'LCFS_ECONTAINERD_PARSE',
      `${file} sets ${table.join('.')}.config_path twice (lines ` +
        `${configPaths.map((a) => a.line).join(', ')}); it was not changed`,
    );
  }
  const [configPath] = configPaths;
  if (configPath) {
    // containerd 2 takes a list of folders separated by ":".
    const folders = (configPath.value ?? '').split(':').map((f) => f.replace(/\/+$/, ''));
    if (folders.includes(opts.certsDir.replace(/\/+$/, ''))) return unchanged();
    return unchanged([
      `${file} line ${configPath.line} sets config_path = ${configPath.raw}, so the CRI plugin ` +
        `does not read ${opts.certsDir}. Rerun with --certs-dir set to that folder, or change ` +
        `config_path.`,
    ]);
  }
  const mirrors = [...scan.assignments, ...scan.headers].find((a) =>
    pathStartsWith(a.path, [...table, 'mirrors']),
  );
  if (mirrors) {
    return unchanged([
      `${file} line ${mirrors.line} configures ${table.join('.')}.mirrors, which containerd ` +
        `refuses next to config_path: move those mirrors to hosts.toml files under ` +
        `${opts.certsDir}, then add config_path = ${tomlString(opts.certsDir)} to ${name}.`,
    ]);
  }
  if (!header) {
    return unchanged([
      `${file} line ${inTable[0].line} declares ${name} in a form this command does not edit ` +
        `(an inline table or dotted keys): add config_path = ${tomlString(opts.certsDir)} to ` +
        `it by hand.`,
    ]);
  }
  return {
    text: applyEdits(existing, [
      keysAfterHeader(existing, header, [`config_path = ${tomlString(opts.certsDir)}`]),
    ]),
    changes: [`set config_path = ${tomlString(opts.certsDir)} in ${name} (line ${header.line})`],
    advice: [],
  };
}
