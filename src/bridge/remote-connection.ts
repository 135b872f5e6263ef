import net from 'node:net';
import tls from 'node:tls';
import mqttPacket, { type IConnackPacket, type IConnectPacket, type Packet, type Parser } from 'mqtt-packet';
import type { RemoteAddress } from './address.js';

/** Bytes waiting in the socket above which the drain stops writing until 'drain'. */
export const SOCKET_HIGH_WATER_BYTES = 1_048_576;

/** TLS options toward the remote broker, with the files already read. */
export interface RemoteTlsOptions {
  ca: Buffer | undefined;
  cert: Buffer | undefined;
  key: Buffer | undefined;
  serverName: string;
  alpn: string[];
  verify: boolean;
}

export interface RemoteConnectionOptions {
  address: RemoteAddress;
  tls: RemoteTlsOptions | null;
  /** 4 for MQTT 3.1.1, 5 for MQTT 5.0. */
  protocolVersion: 4 | 5;
  connect: IConnectPacket;
  /** Sets Mosquitto's bridge flag (0x80) in the protocol level of CONNECT. */
  bridgeMode: boolean;
  connectTimeoutMs: number;
  keepaliveSeconds: number;
}

/** Callbacks of one connection; each is called at most once except `onPacket` and `onDrain`. */
export interface RemoteConnectionEvents {
  onConnack(packet: IConnackPacket): void;
  onPacket(packet: Packet): void;
  onDrain(): void;
  /** `connected` is true when the remote accepted CONNECT before the connection closed. */
  onClose(reason: string, connected: boolean): void;
}

/**
 * One network connection to a remote broker: TCP or TLS, CONNECT and CONNACK, packet parsing,
 * keep alive. Reconnecting is the caller's job; a closed connection is never reopened.
 */
export class RemoteConnection {
  private readonly options: RemoteConnectionOptions;
  private readonly events: RemoteConnectionEvents;
  private readonly parser: Parser;
  private socket: net.Socket | null = null;
  private connectTimer: NodeJS.Timeout | null = null;
  private keepaliveTimer: NodeJS.Timeout | null = null;
  private lastReceived = 0;
  private pingOutstanding = false;
  private connected = false;
  private closed = false;

  constructor(options: RemoteConnectionOptions, events: RemoteConnectionEvents) {
    this.options = options;
    this.events = events;
    this.parser = mqttPacket.parser({ protocolVersion: options.protocolVersion });
    this.parser.on('packet', (packet: Packet) => this.onPacket(packet));
    this.parser.on('error', (error: Error) => this.close(`invalid packet from the remote broker: ${error.message}`));
  }

  /** True after CONNACK accepted the connection and until it closes. */
  get isConnected(): boolean {
    return this.connected && !this.closed;
  }

  /** True while the socket has more unsent bytes than SOCKET_HIGH_WATER_BYTES. */
  get congested(): boolean {
    return this.socket !== null && this.socket.writableLength > SOCKET_HIGH_WATER_BYTES;
  }

  open(): void {
    const { address, tls: tlsOptions } = this.options;
    let socket: net.Socket;
    if (tlsOptions === null) {
      socket = net.connect({ host: address.host, port: address.port });
      socket.once('connect', () => this.sendConnect());
    } else {
      const serverName = tlsOptions.serverName !== '' ? tlsOptions.serverName : address.host;
      socket = tls.connect({
        host: address.host,
        port: address.port,
        // SNI carries host names only, never IP addresses (RFC 6066 section 3).
        servername: net.isIP(serverName) === 0 ? serverName : undefined,
        checkServerIdentity: (_host, certificate) => tls.checkServerIdentity(serverName, certificate),
        ca: tlsOptions.ca,
        cert: tlsOptions.cert,
        key: tlsOptions.key,
        ALPNProtocols: tlsOptions.alpn.length > 0 ? tlsOptions.alpn : undefined,
        rejectUnauthorized: tlsOptions.verify,
      });
      socket.once('secureConnect', () => this.sendConnect());
    }
    this.socket = socket;
    socket.setNoDelay(true);
    socket.on('data', (data: Buffer) => {
      this.lastReceived = Date.now();
      this.parser.parse(data);
    });
    socket.on('drain', () => this.events.onDrain());
    socket.on('error', (error: Error) => this.close(describeSocketError(error)));
    socket.on('close', () => this.close('connection closed by the remote broker'));
    this.connectTimer = setTimeout(() => this.close(`no CONNACK within ${this.options.connectTimeoutMs} ms`), this.options.connectTimeoutMs);
  }

  send(packet: Packet): void {
    this.write(mqttPacket.generate(packet, { protocolVersion: this.options.protocolVersion }));
  }

  /** Writes encoded bytes; returns false when the socket is closed. */
  write(bytes: Buffer): boolean {
    if (this.closed || this.socket === null) return false;
    this.socket.write(bytes);
    return true;
  }

  cork(): void {
    this.socket?.cork();
  }

  uncork(): void {
    this.socket?.uncork();
  }

  /** Closes the connection, sending DISCONNECT first when `sendDisconnect` is set and CONNACK came. */
  close(reason: string, sendDisconnect = false): void {
    if (this.closed) return;
    if (sendDisconnect && this.connected) this.send({ cmd: 'disconnect' });
    this.closed = true;
    if (this.connectTimer !== null) clearTimeout(this.connectTimer);
    if (this.keepaliveTimer !== null) clearInterval(this.keepaliveTimer);
    this.connectTimer = null;
    this.keepaliveTimer = null;
    const socket = this.socket;
    if (socket !== null) {
      socket.removeAllListeners('data');
      socket.removeAllListeners('close');
      socket.on('error', ignoreError);
      if (sendDisconnect) socket.end();
      else socket.destroy();
    }
    const wasConnected = this.connected;
    this.connected = false;
    this.events.onClose(reason, wasConnected);
  }

  private sendConnect(): void {
    const bytes = mqttPacket.generate({ ...this.options.connect, bridgeMode: this.options.bridgeMode } as IConnectPacket, {
      protocolVersion: this.options.protocolVersion,
    });
    this.write(bytes);
  }

  private onPacket(packet: Packet): void {
    if (this.closed) return;
    this.pingOutstanding = false;
    if (!this.connected) {
      if (packet.cmd !== 'connack') {
        this.close(`expected CONNACK, got ${packet.cmd.toUpperCase()}`);
        return;
      }
      this.onConnack(packet);
      return;
    }
    if (packet.cmd === 'pingresp') return;
    this.events.onPacket(packet);
  }

  private onConnack(packet: IConnackPacket): void {
    const code = this.options.protocolVersion === 5 ? (packet.reasonCode ?? 0) : (packet.returnCode ?? 0);
    if (code !== 0) {
      this.close(describeConnackRejection(code, this.options.protocolVersion, packet.properties?.reasonString));
      return;
    }
    if (this.connectTimer !== null) clearTimeout(this.connectTimer);
    this.connectTimer = null;
    this.connected = true;
    const serverKeepalive = packet.properties?.serverKeepAlive;
    const keepalive = serverKeepalive ?? this.options.keepaliveSeconds;
    if (keepalive > 0) this.startKeepalive(keepalive);
    this.events.onConnack(packet);
  }

  /**
   * Sends PINGREQ every three quarters of the keep alive, and closes the connection when the
   * remote has sent nothing for one and a half keep alive periods (the limit MQTT sets for servers).
   */
  private startKeepalive(seconds: number): void {
    const intervalMs = Math.max(250, Math.floor(seconds * 750));
    this.lastReceived = Date.now();
    this.keepaliveTimer = setInterval(() => {
      if (this.pingOutstanding && Date.now() - this.lastReceived > seconds * 1500) {
        this.close(`no answer to PINGREQ within ${seconds * 1.5} s (keep alive)`);
        return;
      }
      this.pingOutstanding = true;
      this.send({ cmd: 'pingreq' });
    }, intervalMs);
  }
}

function ignoreError(): void {}

function describeSocketError(error: Error): string {
  const code = (error as NodeJS.ErrnoException).code;
  return code === undefined ? error.message : `${code}: ${error.message}`;
}

/** CONNACK rejections in words: MQTT 3.1.1 return codes and the common MQTT 5.0 reason codes. */
const V4_REJECTIONS: Record<number, string> = {
  1: 'unacceptable protocol version',
  2: 'client identifier rejected',
  3: 'server unavailable',
  4: 'bad user name or password',
  5: 'not authorized',
};

const V5_REJECTIONS: Record<number, string> = {
  0x80: 'unspecified error',
  0x81: 'malformed packet',
  0x82: 'protocol error',
  0x84: 'unsupported protocol version',
  0x85: 'client identifier not valid',
  0x86: 'bad user name or password',
  0x87: 'not authorized',
  0x88: 'server unavailable',
  0x89: 'server busy',
  0x8a: 'banned',
  0x8c: 'bad authentication method',
  0x95: 'packet too large',
  0x97: 'quota exceeded',
  0x9a: 'retain not supported',
  0x9b: 'QoS not supported',
  0x9c: 'use another server',
  0x9d: 'server moved',
  0x9f: 'connection rate exceeded',
};

function describeConnackRejection(code: number, protocolVersion: number, reasonString: string | undefined): string {
  const table = protocolVersion === 5 ? V5_REJECTIONS : V4_REJECTIONS;
  const text = table[code] ?? 'unknown reason';
  const extra = reasonString === undefined ? '' : ` (${reasonString})`;
  return `remote broker rejected CONNECT: ${text}, code 0x${code.toString(16).padStart(2, '0')}${extra}`;
}

/** Tells whether a close reason is a CONNACK rejection, as opposed to a network failure. */
export function isConnectRejection(reason: string): boolean {
  return reason.startsWith('remote broker rejected CONNECT');
}
