import { chmod, mkdir, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import { isStoreError, type LayerStore } from '../fs/index.js';

/**
 * dockerd's graph driver plugin protocol (Docker 17–27 with --experimental), served on a unix
 * socket. Each endpoint is a thin translation onto the layer store; the protocol's facts are in
 * docs/engines.md. dockerd sends JSON without a Content-Type and ignores ours, except that Diff
 * answers with a raw tar and ApplyDiff sends one.
 */

export interface DockerPluginOptions {
  socketPath: string;
  store: LayerStore;
  /** Where the volume is mounted: Get answers `<mountpoint>/<id>`. */
  mountpoint: string;
  /** The registry mirror's blob cache, reported apart from the volume in Status. */
  blobCache?: { readonly usedBytes: number; readonly maxBytes: number };
  logger?: Logger;
}

export interface DockerPlugin {
  readonly socketPath: string;
  close(): Promise<void>;
}

const MAX_JSON = 1 << 20;

/** A request dockerd got wrong: answered 400 with the reason. */
class BadRequest extends Error {
  readonly code = 'LCFS_EBAD_REQUEST';
}

interface LayerRef {
  ID: string;
  Parent: string | null;
}

type Handler = (
  body: Record<string, unknown>,
  req: IncomingMessage,
  res: ServerResponse,
) => unknown;

export async function startDockerPlugin(opts: DockerPluginOptions): Promise<DockerPlugin> {
  const { store, mountpoint, logger: log } = opts;

  const handlers: Record<string, Handler> = {
    'Plugin.Activate': () => ({ Implements: ['GraphDriver'] }),
    'GraphDriver.Init': () => {
      // A new dockerd holds none of the mounts an old one took: its Gets start from zero.
      for (const layer of store.listLayers())
        while (store.layer(layer.id).refs > 0) store.put(layer.id);
      return {};
    },
    // Diffs are rebuilt from the store's records, not the bytes dockerd sent: dockerd keeps
    // tar-split data to reproduce exact tars for save and push.
    'GraphDriver.Capabilities': () => ({ Capabilities: { ReproducesExactDiffs: false } }),
    'GraphDriver.Create': async (b) => {
      const { ID, Parent } = layerRef(b);
      await store.createLayer(ID, Parent, storageOptions(b));
      return {};
    },
    'GraphDriver.CreateReadWrite': async (b) => {
      const { ID, Parent } = layerRef(b);
      await store.createLayer(ID, Parent, storageOptions(b));
      return {};
    },
    'GraphDriver.Remove': async (b) => {
      const layer = id(b);
      // Removal is idempotent, as in Docker's own drivers: a Remove whose reply was lost (the
      // agent or dockerd went down) is retried, and must not wedge the container for good.
      if (!store.exists(layer)) {
        log?.info({ layer }, 'Remove of a layer that is already gone');
        return {};
      }
      await store.removeLayer(layer);
      return {};
    },
    'GraphDriver.Get': (b) => {
      const layer = id(b);
      store.get(layer);
      return { Dir: join(mountpoint, layer) };
    },
    'GraphDriver.Put': (b) => {
      store.put(id(b));
      return {};
    },
    'GraphDriver.Exists': (b) => ({ Exists: store.exists(id(b)) }),
    'GraphDriver.Status': async () => {
      const fs = await store.statfs();
      const layers = store.listLayers();
      return {
        Status: [
          ['Backing Filesystem', 'lcfs (FUSE)'],
          ['Layers', String(layers.length)],
          ['Frozen Layers', String(layers.filter((l) => l.state === 'frozen').length)],
          ['Volume Size', String(fs.blocks * fs.bsize)],
          ['Volume Available', String(fs.bavail * fs.bsize)],
          ['Mountpoint', mountpoint],
          ...(opts.blobCache === undefined
            ? []
            : [
                ['Blob Cache Used', String(opts.blobCache.usedBytes)],
                ['Blob Cache Limit', String(opts.blobCache.maxBytes)],
              ]),
        ],
      };
    },
    'GraphDriver.GetMetadata': (b) => {
      const info = store.layer(id(b));
      return {
        Metadata: {
          LayerId: info.id,
          Parent: info.parent ?? '',
          State: info.state,
          Dir: join(mountpoint, info.id),
        },
      };
    },
    'GraphDriver.Cleanup': async () => {
      await store.flush();
      return {};
    },
    'GraphDriver.Changes': async (b) => {
      const { ID, Parent } = layerRef(b);
      const changes = await store.changes(ID, Parent);
      return { Changes: changes.map((c) => ({ Path: c.path, Kind: c.kind })) };
    },
    'GraphDriver.DiffSize': async (b) => {
      const { ID, Parent } = layerRef(b);
      return { Size: await store.diffSize(ID, Parent) };
    },
    'GraphDriver.Diff': async (b, _req, res) => {
      const { ID, Parent } = layerRef(b);
      store.layer(ID); // an unknown layer is an error reply, not a broken stream
      const tar = store.diff(ID, Parent);
      res.writeHead(200, { 'Content-Type': 'application/x-tar' });
      try {
        await pipeline(tar, res);
      } catch (err) {
        // Never end a chunked body cleanly after a failure: dockerd would take the truncated
        // tar for a whole one. Destroying the socket makes it see an error.
        log?.error({ err, layer: ID }, 'Diff failed mid-stream; aborting the response');
        res.destroy(err as Error);
      }
      return undefined;
    },
  };

  const server = createServer((req, res) => {
    void serve(req, res);
  });

  async function serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://plugin');
    const name = url.pathname.slice(1);
    const started = process.hrtime.bigint();
    res.on('finish', () => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      log?.debug({ endpoint: name, ms, status: res.statusCode }, 'plugin request');
    });
    try {
      if (req.method !== 'POST')
        throw new BadRequest(`${req.method} ${url.pathname}: only POST is served`);
      if (name === 'GraphDriver.ApplyDiff') {
        const layer = rawQuery(req.url ?? '', 'id');
        if (!layer) throw new BadRequest('ApplyDiff needs ?id=');
        const parent = rawQuery(req.url ?? '', 'parent') || null;
        const size = await store.applyDiff(layer, parent, req);
        return reply(res, 200, { Size: size });
      }
      const handler = handlers[name];
      if (!handler) return reply(res, 404, { Err: `unknown endpoint ${url.pathname}` });
      const result = await handler(await readJson(req), req, res);
      if (result !== undefined) reply(res, 200, result);
    } catch (err) {
      if (res.headersSent) {
        res.destroy(err as Error);
        return;
      }
      const expected = err instanceof BadRequest || isStoreError(err);
      if (expected)
        log?.debug({ endpoint: name, err: (err as Error).message }, 'plugin request refused');
      else log?.error({ err, endpoint: name }, 'plugin request failed');
      reply(res, err instanceof BadRequest ? 400 : 500, { Err: errMessage(err) });
      // Whatever of the request body was not read (a refused ApplyDiff) is dropped.
      req.resume();
    }
  }

  await mkdir(dirname(opts.socketPath), { recursive: true });
  await rm(opts.socketPath, { force: true }); // a socket left by a crash refuses the bind
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  await chmod(opts.socketPath, 0o660);
  log?.info({ socket: opts.socketPath }, 'docker graph driver plugin listening');

  return {
    socketPath: opts.socketPath,
    close: () => closeServer(server, opts.socketPath),
  };
}

function reply(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/vnd.docker.plugins.v1.2+json',
    'Content-Length': Buffer.byteLength(text),
  });
  res.end(text);
}

function errMessage(err: unknown): string {
  if (isStoreError(err)) return `${err.code}: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const part of req as AsyncIterable<Buffer>) {
    size += part.length;
    if (size > MAX_JSON) throw new BadRequest(`request body over ${MAX_JSON} bytes`);
    parts.push(part);
  }
  const text = Buffer.concat(parts).toString('utf8').trim();
  if (text === '' || text === 'null') return {};
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new BadRequest('request body is not valid JSON');
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw new BadRequest('request body must be a JSON object');
  return body as Record<string, unknown>;
}

function id(body: Record<string, unknown>): string {
  const value = body.ID;
  if (typeof value !== 'string' || value === '')
    throw new BadRequest('ID must be a non-empty string');
  return value;
}

function layerRef(body: Record<string, unknown>): LayerRef {
  const parent = body.Parent;
  if (parent !== undefined && parent !== null && typeof parent !== 'string')
    throw new BadRequest('Parent must be a string');
  return { ID: id(body), Parent: parent ? parent : null };
}

/** `--storage-opt` values; `size` is the only one, a quota in Docker's units (50M = 50 MiB). */
function storageOptions(body: Record<string, unknown>): { quota?: number } {
  const opts = body.StorageOpt;
  if (opts === undefined || opts === null) return {};
  if (typeof opts !== 'object' || Array.isArray(opts))
    throw new BadRequest('StorageOpt must be an object');
  const out: { quota?: number } = {};
  for (const [key, value] of Object.entries(opts as Record<string, unknown>)) {
    if (key.toLowerCase() !== 'size')
      throw new BadRequest(`storage option ${key} is not supported (only size)`);
    if (typeof value !== 'string')
      throw new BadRequest('StorageOpt size must be a string such as 50M');
    out.quota = parseSize(value);
  }
  return out;
}

/** Docker's RAMInBytes: binary multipliers, an optional "i" and "b". */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?) ?([kmgtp])?i?b?$/i.exec(text.trim());
  if (!m)
    throw new BadRequest(`invalid size "${text}": use a number with an optional unit, such as 50M`);
  const power = m[2] ? 'kmgtp'.indexOf(m[2].toLowerCase()) + 1 : 0;
  const bytes = Math.floor(Number(m[1]) * 1024 ** power);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new BadRequest(`invalid size "${text}"`);
  return bytes;
}

/** dockerd does not escape ApplyDiff's query values, so read them raw. */
function rawQuery(url: string, key: string): string {
  const query = url.slice(url.indexOf('?') + 1);
  for (const pair of query.split('&')) {
    const at = pair.indexOf('=');
    if (at > 0 && pair.slice(0, at) === key) return pair.slice(at + 1);
  }
  return '';
}

function closeServer(server: Server, socketPath: string): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => {
      void rm(socketPath, { force: true }).finally(resolve);
    });
    server.closeAllConnections();
  });
}
