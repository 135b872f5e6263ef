import { createRequire } from 'node:module';
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createServer as createNetServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import type { WebSocket, WebSocketServer } from 'ws';

import type { ListenerConfig } from '../config/schema.js';
import type { Logger } from '../service/logger.js';
import type { ClientSocket } from '../transport/client-socket.js';
import { ConnectionRateLimiter } from '../transport/connection-rate.js';
import { isTlsProtocol, readSecureContextOptions, serverTlsOptions } from '../transport/tls.js';
import { WebSocketStream } from '../transport/websocket-stream.js';

/** A listener could not bind its address. */
export class ListenError extends Error {
  readonly code = 'ERR_LISTEN';
}

/** Limits a listener applies before a client reaches the broker. */
export interface TransportLimits {
  /** Largest MQTT packet accepted; a WebSocket message may be a little larger, see `WS_PAYLOAD_MARGIN`. */
  maxPacketSize: number;
  /** Time for the TLS handshake and the WebSocket upgrade request, in ms. */
  connectTimeoutMs: number;
}

/** WebSocket subprotocol for MQTT [MQTT-6.0.0-3]; `mqttv3.1` is what MQTT 3.1 clients offer. */
const WS_SUBPROTOCOLS = ['mqtt', 'mqttv3.1'];

/**
 * Room above the packet size limit in one WebSocket message, so an oversized packet is rejected
 * by the MQTT layer with its reason code (v5 0x95) rather than by the WebSocket layer.
 */
const WS_PAYLOAD_MARGIN = 64 * 1024;

/** How often a refused connection of one listener reaches the log. */
const REFUSED_LOG_MS = 10_000;

type AnyServer = Server | TlsServer | HttpServer;

const require = createRequire(import.meta.url);

/**
 * Loads the ws package when the first WebSocket listener starts, so that a gateway without one
 * does not spend its memory. Loading ws and serialport on first use lowered the RSS of a started
 * gateway from about 69.6 MB to 62.7 MB on x86-64.
 */
function loadWebSocketServer(): typeof WebSocketServer {
  return (require('ws') as typeof import('ws')).WebSocketServer;
}

/**
 * One network endpoint: binds its address, applies the per-address connection rate, runs the TLS
 * handshake or WebSocket upgrade its protocol needs, and hands each client stream to the broker.
 */
export class Listener {
  readonly settings: ListenerConfig;
  private readonly server: AnyServer;
  private readonly webSockets: WebSocketServer | null = null;
  private readonly logger: Logger;
  private readonly onConnection: (stream: ClientSocket) => void;
  private readonly rateLimiter: ConnectionRateLimiter;

  /** Throws TlsConfigError when an `mqtts` or `wss` listener's certificate or key cannot be used. */
  constructor(settings: ListenerConfig, onConnection: (stream: ClientSocket) => void, logger: Logger, limits: TransportLimits) {
    this.settings = settings;
    this.logger = logger;
    this.onConnection = onConnection;
    this.rateLimiter = new ConnectionRateLimiter(settings.connection_rate);
    this.server = this.createServer(limits);
    if (settings.protocol === 'ws' || settings.protocol === 'wss') {
      const WebSocketServerClass = loadWebSocketServer();
      this.webSockets = new WebSocketServerClass({
        noServer: true,
        maxPayload: effectivePacketSize(settings, limits) + WS_PAYLOAD_MARGIN,
        perMessageDeflate: false,
        handleProtocols: chooseSubprotocol,
      });
      this.attachWebSocketHandlers(this.server as HttpServer, limits);
    }
    // Every transport gets the TCP connection first, before any TLS handshake or HTTP request.
    this.server.prependListener('connection', (socket: Socket) => this.onTcpConnection(socket));
  }

  private createServer(limits: TransportLimits): AnyServer {
    const settings = this.settings;
    switch (settings.protocol) {
      case 'mqtt':
        return createNetServer({ noDelay: true }, (socket) => {
          // The connection rate check runs first and may have closed the socket already.
          if (!socket.destroyed) this.onConnection(socket);
        });
      case 'mqtts': {
        const server = createTlsServer(serverTlsOptions(settings, limits.connectTimeoutMs), (socket: TLSSocket) => {
          socket.setNoDelay(true);
          this.onConnection(socket);
        });
        server.on('tlsClientError', (error: Error, socket: TLSSocket) => this.onTlsError(error, socket));
        return server;
      }
      case 'ws':
        return createHttpServer(httpOptions(limits), rejectPlainRequest);
      case 'wss': {
        const server = createHttpsServer({ ...serverTlsOptions(settings, limits.connectTimeoutMs), ...httpOptions(limits) }, rejectPlainRequest);
        server.on('tlsClientError', (error: Error, socket: TLSSocket) => this.onTlsError(error, socket));
        return server;
      }
    }
  }

  private attachWebSocketHandlers(server: HttpServer, limits: TransportLimits): void {
    // An idle socket before the upgrade is closed after the CONNECT timeout. The ws package sets
    // the socket timeout back to 0 when it takes the socket over.
    server.timeout = limits.connectTimeoutMs;
    server.on('upgrade', (request: IncomingMessage, socket: Socket, head: Buffer) => this.onUpgrade(request, socket, head));
  }

  private onUpgrade(request: IncomingMessage, socket: Socket, head: Buffer): void {
    const webSockets = this.webSockets;
    if (webSockets === null) return;
    const path = (request.url ?? '/').split('?')[0];
    if (path !== this.settings.path) {
      socket.on('error', ignoreError);
      socket.end(`HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\nMQTT over WebSocket is served at ${this.settings.path}\n`);
      return;
    }
    webSockets.handleUpgrade(request, socket, head, (ws: WebSocket) => {
      this.onConnection(new WebSocketStream(ws, request.socket as Socket));
    });
  }

  private onTcpConnection(socket: Socket): void {
    const address = socket.remoteAddress ?? '';
    if (this.rateLimiter.tryAcquire(address)) return;
    this.logger.limited('warn', `rate:${this.settings.name}`, REFUSED_LOG_MS, 'connection refused: connection rate exceeded', {
      listener: this.settings.name,
      remote: address,
      limit: `listeners.${this.settings.name}.connection_rate (${this.settings.connection_rate} per second)`,
    });
    socket.on('error', ignoreError);
    socket.destroy();
  }

  private onTlsError(error: Error, socket: TLSSocket): void {
    this.logger.limited('warn', `tls:${this.settings.name}`, REFUSED_LOG_MS, 'TLS handshake failed', {
      listener: this.settings.name,
      remote: socket.remoteAddress,
      error: 'code' in error ? String(error.code) : error.message,
    });
    // Node leaves the socket open after a handshake timeout when 'tlsClientError' has a listener.
    socket.destroy();
  }

  listen(): Promise<void> {
    const { name, host, port } = this.settings;
    return new Promise((resolve, reject) => {
      const onError = (error: NodeJS.ErrnoException): void => {
        const hint = error.code === 'EADDRINUSE'
          ? 'stop the program using it or choose another port'
          : error.code === 'EACCES'
            ? 'ports below 1024 need privileges; choose a port above 1023'
            : 'check the listener host and port';
        reject(new ListenError(`listener ${name}: cannot listen on ${host}:${port}: ${error.code ?? error.message}; ${hint}`));
      };
      this.server.once('error', onError);
      this.server.listen(port, host, () => {
        this.server.off('error', onError);
        this.server.on('error', (error: Error) => {
          this.logger.error('listener error', { listener: name, error: error.message });
        });
        const address = this.address();
        this.logger.info('listening', {
          listener: name,
          protocol: this.settings.protocol,
          address: address.address,
          port: address.port,
          path: this.webSockets === null ? undefined : this.settings.path,
        });
        resolve();
      });
    });
  }

  address(): AddressInfo {
    return this.server.address() as AddressInfo;
  }

  /**
   * Reads the certificate, key and CA files again and uses them for new TLS handshakes; clients
   * already connected keep their session. Returns false for a listener without TLS. Throws
   * TlsConfigError and keeps the old files when the new ones cannot be used.
   */
  reloadTls(): boolean {
    if (!isTlsProtocol(this.settings.protocol)) return false;
    const options = readSecureContextOptions(this.settings);
    (this.server as TlsServer).setSecureContext(options);
    return true;
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.webSockets?.close();
      if (!this.server.listening) {
        resolve();
        return;
      }
      this.server.close(() => resolve());
      // HTTP keep-alive sockets that never upgraded would hold close() open.
      if ('closeIdleConnections' in this.server) this.server.closeIdleConnections();
    });
  }
}

/** Returns the packet size limit of a listener: its own when set and lower, else the broker's. */
function effectivePacketSize(settings: ListenerConfig, limits: TransportLimits): number {
  const own = settings.max_packet_size;
  return own > 0 ? Math.min(own, limits.maxPacketSize) : limits.maxPacketSize;
}

/**
 * HTTP server options of WebSocket listeners: the upgrade request must arrive within the CONNECT
 * timeout. Node checks these timeouts every `connectionsCheckingInterval` (30 s by default), so
 * the interval is shortened to keep a silent client from holding a socket much longer.
 */
function httpOptions(limits: TransportLimits): { headersTimeout: number; requestTimeout: number; connectionsCheckingInterval: number } {
  return {
    headersTimeout: limits.connectTimeoutMs,
    requestTimeout: limits.connectTimeoutMs,
    connectionsCheckingInterval: Math.min(1000, limits.connectTimeoutMs),
  };
}

/** Responds to an HTTP request that is not a WebSocket upgrade. */
function rejectPlainRequest(_request: IncomingMessage, response: ServerResponse): void {
  response.writeHead(426, { 'Content-Type': 'text/plain', Connection: 'close', Upgrade: 'websocket' });
  response.end('This endpoint accepts MQTT over WebSocket only.\n');
}

/** Picks `mqtt` (or `mqttv3.1`) from the offered subprotocols [MQTT-6.0.0-4]; false sends none. */
function chooseSubprotocol(offered: Set<string>): string | false {
  for (const name of WS_SUBPROTOCOLS) {
    if (offered.has(name)) return name;
  }
  return false;
}

function ignoreError(): void {}
