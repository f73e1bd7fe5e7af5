import { DEFAULT_MIRROR_ADDRESS } from '../../agent/config.js';
import { SetupError } from './config-file.js';

/** The agent's registry mirror, as the engines on its host are told to reach it. */
export const DEFAULT_MIRROR_URL = `http://${DEFAULT_MIRROR_ADDRESS}`;

/**
 * The mirror URL in the form both engines take: `http(s)://host[:port]`. dockerd refuses a
 * mirror with a path, query or fragment, and the agent's mirror serves `/v2/` at its root.
 */
export function parseMirrorUrl(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw.trim());
  } catch {
    throw new SetupError('LCFS_ESETUP_MIRROR_URL', `--mirror-url ${raw} is not a URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new SetupError('LCFS_ESETUP_MIRROR_URL', `--mirror-url ${raw} must be http or https`);
  if (url.pathname !== '/' || url.search !== '' || url.hash !== '' || url.username !== '')
    throw new SetupError(
      'LCFS_ESETUP_MIRROR_URL',
      `--mirror-url ${raw} must be scheme://host[:port], with no path, query or credentials`,
    );
  return url.origin;
}

/** Whether two mirror URLs name the same server (`http://h:80/` is `http://h`). */
export function sameMirrorUrl(a: string, b: string): boolean {
  const origin = (value: string): string | undefined => {
    try {
      // A host key without a scheme is https to containerd.
      return new URL(value.includes('://') ? value : `https://${value}`).origin;
    } catch {
      return undefined;
    }
  };
  const left = origin(a);
  return left !== undefined && left === origin(b);
}
