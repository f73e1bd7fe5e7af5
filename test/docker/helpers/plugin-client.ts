/** Talking to a graph driver plugin's socket directly, as dockerd does, for protocol tests. */
import { request } from 'node:http';

export interface PluginReply {
  status: number;
  body: Buffer;
  /** The body parsed as JSON, or undefined when it is not JSON. */
  json: unknown;
}

/**
 * POSTs `body` to `path` on the plugin socket with dockerd's Accept header and no Content-Type.
 * A string body is sent as is (so malformed JSON can be sent); an object is JSON-encoded.
 */
export function pluginPost(
  socketPath: string,
  path: string,
  body: string | Buffer | Record<string, unknown> = '',
  timeoutMs = 60_000,
): Promise<PluginReply> {
  const payload = typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        path,
        method: 'POST',
        headers: {
          Accept: 'application/vnd.docker.plugins.v1.2+json',
          'Content-Length': Buffer.byteLength(payload),
        },
        timeout: timeoutMs,
      },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (d: Buffer) => parts.push(d));
        res.on('error', reject);
        res.on('end', () => {
          const buf = Buffer.concat(parts);
          let json: unknown;
          try {
            json = JSON.parse(buf.toString('utf8'));
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode ?? 0, body: buf, json });
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${path}: no reply within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(payload);
  });
}

/** The `Err` of a reply, or undefined. */
export function errOf(reply: PluginReply): string | undefined {
  const j = reply.json;
  if (j && typeof j === 'object' && 'Err' in j && typeof j.Err === 'string') return j.Err;
  return undefined;
}
