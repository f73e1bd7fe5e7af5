import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { Logger } from './logger.js';

/**
 * The agent's HTTP API on `apiAddress`. Today it serves Prometheus metrics:
 *
 *   GET /metrics   every metric of the agent, in Prometheus' text format
 */
export interface ApiServer {
  readonly address: string;
  close(): Promise<void>;
}

export async function startApiServer(options: {
  address: string;
  metrics: Registry;
  logger: Logger;
}): Promise<ApiServer> {
  const { metrics, logger } = options;
  const server: Server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://api').pathname;
    if (req.method === 'GET' && path === '/metrics') {
      metrics.metrics().then(
        (text) => res.writeHead(200, { 'content-type': metrics.contentType }).end(text),
        (err: unknown) => {
          logger.error({ err }, 'collecting metrics failed');
          res.writeHead(500).end();
        },
      );
      return;
    }
    const body = JSON.stringify({
      error: { code: 'LCFS_ENOT_FOUND', message: `no route ${req.method} ${path}` },
    });
    res.writeHead(404, { 'content-type': 'application/json' }).end(body);
  });
  const at = options.address.lastIndexOf(':');
  server.listen(Number(options.address.slice(at + 1)), options.address.slice(0, at));
  await once(server, 'listening');
  const bound = server.address() as AddressInfo;
  return {
    address: `${bound.address}:${bound.port}`,
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}
