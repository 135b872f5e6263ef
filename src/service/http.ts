/**
 * The operations endpoints over HTTP, on Node's own `http` module:
 *
 * - `GET /metrics`: Prometheus text format;
 * - `GET /healthz`: 200 `ok` when the broker runs, every listener is bound and the state
 *   database accepts writes, else 503 with one line per problem;
 * - `GET /status`: the same snapshot as JSON, read by `outpost status`.
 *
 * The endpoints have no authentication, which is why `http.host` defaults to 127.0.0.1.
 */

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

import type { Broker } from '../broker/broker.js';
import type { OutpostConfig } from '../config/schema.js';
import { GatewayStatusCollector, type BridgeStatus, type DeviceStatus } from './gateway-status.js';
import type { Logger } from './logger.js';
import { METRICS_CONTENT_TYPE, renderMetrics } from './metrics.js';

export type HttpSettings = OutpostConfig['http'];

/** Scrapers and `outpost status` send one short request; a slow client is dropped after this. */
const REQUEST_TIMEOUT_MS = 10_000;

/** Bound on open HTTP connections, so a misbehaving scraper cannot exhaust file descriptors. */
const MAX_HTTP_CONNECTIONS = 32;

const PATHS = ['/metrics', '/healthz', '/status'];

/** The operations endpoint could not bind its address. */
export class OpsListenError extends Error {
  readonly code = 'ERR_OPS_LISTEN';
}

export class OpsServer {
  readonly collector: GatewayStatusCollector;
  private readonly settings: HttpSettings;
  private readonly logger: Logger;
  private readonly server: Server;

  constructor(settings: HttpSettings, broker: Broker, logger: Logger) {
    this.settings = settings;
    this.logger = logger;
    this.collector = new GatewayStatusCollector(broker);
    this.server = createServer((request, response) => this.handle(request, response));
    this.server.requestTimeout = REQUEST_TIMEOUT_MS;
    this.server.headersTimeout = REQUEST_TIMEOUT_MS;
    this.server.maxConnections = MAX_HTTP_CONNECTIONS;
  }

  /** Binds `http.host`:`http.port`; rejects with OpsListenError naming the setting to change. */
  listen(): Promise<void> {
    const { host, port } = this.settings;
    return new Promise((resolve, reject) => {
      const onError = (error: NodeJS.ErrnoException): void => {
        const hint = error.code === 'EADDRINUSE' ? '; another process uses it, so choose another http.port' : '; check http.host and http.port';
        reject(new OpsListenError(`operations endpoint failed to listen on ${host}:${port}: ${error.message}${hint}`));
      };
      this.server.once('error', onError);
      this.server.listen(port, host, () => {
        this.server.off('error', onError);
        this.server.on('error', (error: Error) => this.logger.error('operations endpoint error', { error: error.message }));
        this.collector.start();
        const address = this.address();
        this.logger.info('operations endpoint listening', { address: address.address, port: address.port, paths: PATHS.join(',') });
        resolve();
      });
    });
  }

  address(): AddressInfo {
    return this.server.address() as AddressInfo;
  }

  setBridgeSource(source: () => BridgeStatus[]): void {
    this.collector.setBridgeSource(source);
  }

  setDeviceSource(source: () => DeviceStatus[]): void {
    this.collector.setDeviceSource(source);
  }

  /** Stops listening and closes open HTTP connections. */
  close(): Promise<void> {
    this.collector.stop();
    return new Promise((resolve) => {
      if (!this.server.listening) {
        resolve();
        return;
      }
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private handle(request: IncomingMessage, response: ServerResponse): void {
    const path = (request.url ?? '/').split('?')[0];
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      respond(response, 405, 'text/plain; charset=utf-8', `method ${request.method ?? ''} is not allowed; use GET\n`, { Allow: 'GET, HEAD' });
      return;
    }
    try {
      switch (path) {
        case '/metrics':
          respond(response, 200, METRICS_CONTENT_TYPE, renderMetrics(this.collector.collect(true)));
          return;
        case '/healthz':
          this.respondHealth(response);
          return;
        case '/status':
          respond(response, 200, 'application/json', `${JSON.stringify(this.collector.collect())}\n`);
          return;
        default:
          respond(response, 404, 'text/plain; charset=utf-8', `${path} not found; the endpoints are ${PATHS.join(', ')}\n`);
      }
    } catch (error: unknown) {
      const message = error instanceof Error ? error.message : String(error);
      this.logger.limited('error', `ops-request:${path}`, 10_000, 'operations request failed', { path, error: message });
      respond(response, 500, 'text/plain; charset=utf-8', `internal error: ${message}\n`);
    }
  }

  private respondHealth(response: ServerResponse): void {
    const health = this.collector.collect().health;
    if (health.ok) {
      respond(response, 200, 'text/plain; charset=utf-8', 'ok\n');
      return;
    }
    respond(response, 503, 'text/plain; charset=utf-8', `${health.problems.join('\n')}\n`);
  }
}

function respond(response: ServerResponse, status: number, contentType: string, body: string, headers: Record<string, string> = {}): void {
  response.writeHead(status, {
    'Content-Type': contentType,
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
    ...headers,
  });
  response.end(response.req.method === 'HEAD' ? undefined : body);
}
