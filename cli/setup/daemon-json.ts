import { SetupError } from './config-file.js';
import { sameMirrorUrl } from './mirror-url.js';

/**
 * The edits `lcfs setup docker` makes to dockerd's daemon.json, planned on its text. dockerd
 * reads JSON without comments, so the file is parsed and written back whole: every key is kept,
 * in its order, with the file's indentation.
 */

export const DEFAULT_DAEMON_JSON = '/etc/docker/daemon.json';
/** The graph driver plugin's name: dockerd finds its socket at /run/docker/plugins/lcfs.sock. */
export const DEFAULT_STORAGE_DRIVER = 'lcfs';

export interface DaemonJsonOptions {
  /** Set `storage-driver` to this name and `experimental` to true; undefined leaves both. */
  storageDriver?: string;
  /** Add this URL to `registry-mirrors`; undefined leaves them. */
  mirror?: string;
  /** For messages. */
  file?: string;
}

export interface DaemonJsonPlan {
  /** The new text (the old one, or null for no file, when unchanged). */
  text: string | null;
  changes: string[];
  /**
   * What dockerd needs to apply the change: a restart for the storage driver and experimental
   * mode, a reload (SIGHUP) when only registry-mirrors changed.
   */
  apply: 'restart' | 'reload' | 'nothing';
}

type JsonObject = Record<string, unknown>;

/** The file's indentation, so that a rewrite keeps its look: two spaces when it has none. */
function indentOf(text: string): string | number {
  const match = /^\{\s*?\n([ \t]+)"/.exec(text.trimStart());
  return match ? match[1] : 2;
}

function parseObject(existing: string | null, file: string): JsonObject {
  if (existing === null || existing.trim() === '') return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(existing);
  } catch (err) {
    throw new SetupError(
      'LCFS_EDOCKER_CONFIG',
      `${file} is not valid JSON (${(err as Error).message}); it was not changed`,
    );
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new SetupError(
      'LCFS_EDOCKER_CONFIG',
      `${file} holds ${Array.isArray(parsed) ? 'an array' : `a ${typeof parsed}`}, not a JSON ` +
        `object of dockerd settings; it was not changed`,
    );
  }
  return parsed as JsonObject;
}

/**
 * What `lcfs setup docker` does to a daemon.json's text (`null`: there is no file). Throws
 * SetupError for a file that is not a JSON object, or whose `registry-mirrors` is not a list.
 */
export function planDaemonJson(existing: string | null, opts: DaemonJsonOptions): DaemonJsonPlan {
  const file = opts.file ?? 'daemon.json';
  const settings = parseObject(existing, file);
  const changes: string[] = [];
  let restart = false;

  if (opts.storageDriver !== undefined) {
    if (settings.experimental !== true) {
      changes.push(
        `set "experimental": true (was ${JSON.stringify(settings.experimental) ?? 'unset'}): ` +
          `graph driver plugins need it`,
      );
      settings.experimental = true;
      restart = true;
    }
    const previous = settings['storage-driver'];
    if (previous !== opts.storageDriver) {
      changes.push(
        previous === undefined
          ? `set "storage-driver": ${JSON.stringify(opts.storageDriver)}`
          : `changed "storage-driver" from ${JSON.stringify(previous)} to ` +
              `${JSON.stringify(opts.storageDriver)}: images and containers of the previous ` +
              `driver stay on disk, hidden until you switch back`,
      );
      settings['storage-driver'] = opts.storageDriver;
      restart = true;
    }
  }

  let reload = false;
  if (opts.mirror !== undefined) {
    const mirrors = settings['registry-mirrors'] ?? [];
    if (!Array.isArray(mirrors) || !mirrors.every((m) => typeof m === 'string')) {
      throw new SetupError(
        'LCFS_EDOCKER_CONFIG',
        `${file} has "registry-mirrors" ${JSON.stringify(mirrors)}, which is not a list of ` +
          `URLs; it was not changed`,
      );
    }
    if (!mirrors.some((m) => sameMirrorUrl(m, opts.mirror!))) {
      // dockerd tries mirrors in order: the agent's goes first, as it falls back upstream itself.
      settings['registry-mirrors'] = [opts.mirror, ...mirrors];
      changes.push(
        `added ${opts.mirror} to "registry-mirrors"` +
          (mirrors.length > 0 ? `, before ${mirrors.join(', ')}` : ''),
      );
      reload = true;
    }
  }

  if (changes.length === 0) return { text: existing, changes, apply: 'nothing' };
  const indent = existing === null ? 2 : indentOf(existing);
  return {
    text: JSON.stringify(settings, null, indent) + '\n',
    changes,
    apply: restart ? 'restart' : reload ? 'reload' : 'nothing',
  };
}
