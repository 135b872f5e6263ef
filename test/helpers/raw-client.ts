import net from 'node:net';
import mqttPacket from 'mqtt-packet';
import type { IConnackPacket, IConnectPacket, IDisconnectPacket, Packet, Parser } from 'mqtt-packet';

export type ProtocolVersion = 3 | 4 | 5;

/** CONNECT fields for `RawClient.connectMqtt`; `cmd` and the protocol name and level are filled in. */
export type ConnectFields = Partial<Omit<IConnectPacket, 'cmd'>>;

interface PacketWaiter {
  resolve: (packet: Packet) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * MQTT client at the packet level for tests that must send what a real client never would:
 * packets out of order, reserved bits set, raw bytes. It encodes and parses packets with
 * mqtt-packet using `protocolVersion`, and queues every server packet until a test reads it.
 */
export class RawClient {
  readonly socket: net.Socket;
  private version: ProtocolVersion;
  private readonly parser: Parser;
  private readonly received: Packet[] = [];
  private readonly waiters: PacketWaiter[] = [];
  private readonly closed: Promise<void>;
  private isClosed = false;
  private parseError: Error | null = null;

  private constructor(socket: net.Socket, protocolVersion: ProtocolVersion) {
    this.socket = socket;
    this.version = protocolVersion;
    this.parser = mqttPacket.parser({ protocolVersion });
    this.parser.on('packet', (packet: Packet) => this.onPacket(packet));
    this.parser.on('error', (error: unknown) => {
      this.parseError = error instanceof Error ? error : new Error(String(error));
      this.rejectWaiters(new Error(`invalid packet from the server: ${this.parseError.message}`));
    });
    socket.on('data', (chunk: Buffer) => {
      this.parser.parse(chunk);
    });
    // A reset by the server counts as a close; the error itself is not interesting to tests.
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) => {
      socket.once('close', () => {
        this.isClosed = true;
        this.rejectWaiters(new Error('the server closed the connection before the next packet'));
        resolve();
      });
    });
  }

  /** Opens a TCP connection to 127.0.0.1:`port` without sending anything. */
  static connect(port: number, opts: { protocolVersion?: ProtocolVersion } = {}): Promise<RawClient> {
    const protocolVersion = opts.protocolVersion ?? 4;
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port });
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.removeListener('error', reject);
        socket.setNoDelay(true);
        resolve(new RawClient(socket, protocolVersion));
      });
    });
  }

  /** MQTT protocol level used to encode outgoing and parse incoming packets. */
  get protocolVersion(): ProtocolVersion {
    return this.version;
  }

  set protocolVersion(version: ProtocolVersion) {
    this.version = version;
    setParserVersion(this.parser, version);
  }

  /** True once the socket has closed, whichever side closed it. */
  get isSocketClosed(): boolean {
    return this.isClosed;
  }

  /** Encodes `packet` for this client's protocol version and writes it. */
  send(packet: Packet): void {
    this.socket.write(mqttPacket.generate(packet, { protocolVersion: this.version }));
  }

  sendBytes(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** Returns the oldest server packet not read yet, waiting up to `timeoutMs` for one to arrive. */
  nextPacket(timeoutMs = 2000): Promise<Packet> {
    const queued = this.received.shift();
    if (queued !== undefined) {
      return Promise.resolve(queued);
    }
    if (this.parseError !== null) {
      return Promise.reject(new Error(`invalid packet from the server: ${this.parseError.message}`));
    }
    if (this.isClosed) {
      return Promise.reject(new Error('the server closed the connection before the next packet'));
    }

    return new Promise((resolve, reject) => {
      const waiter: PacketWaiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters.splice(this.waiters.indexOf(waiter), 1);
          reject(new Error(`no packet from the server within ${timeoutMs} ms`));
        }, timeoutMs),
      };
      this.waiters.push(waiter);
    });
  }

  /** Returns the next server packet, and throws when it is not a `cmd` packet. */
  async expectPacket<C extends Packet['cmd']>(
    cmd: C,
    timeoutMs = 2000,
  ): Promise<Extract<Packet, { cmd: C }>> {
    const packet = await this.nextPacket(timeoutMs);
    if (packet.cmd !== cmd) {
      throw new Error(`expected ${cmd}, but the server sent ${describePacket(packet)}`);
    }
    return packet as Extract<Packet, { cmd: C }>;
  }

  /** Waits `ms` and throws when the server sent any packet in that time (or before, unread). */
  async expectNoPacket(ms: number): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, ms));
    const unexpected = this.received.shift();
    if (unexpected !== undefined) {
      throw new Error(`expected no packet, but the server sent ${describePacket(unexpected)}`);
    }
  }

  /** Resolves when the socket closes, and rejects when it is still open after `timeoutMs`. */
  waitClose(timeoutMs = 2000): Promise<void> {
    if (this.isClosed) {
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`the server did not close the connection within ${timeoutMs} ms`));
      }, timeoutMs);
      void this.closed.then(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /**
   * Sends CONNECT built from `fields` (protocol name and level from this client's version, clean
   * session and keep alive 60 unless given) and returns the CONNACK. Throws when the next packet
   * is not a CONNACK.
   */
  async connectMqtt(fields: ConnectFields = {}, timeoutMs = 2000): Promise<IConnackPacket> {
    const version = fields.protocolVersion ?? this.version;
    this.protocolVersion = version;
    const connect: IConnectPacket = {
      cmd: 'connect',
      protocolId: version === 3 ? 'MQIsdp' : 'MQTT',
      clean: true,
      keepalive: 60,
      clientId: '',
      ...fields,
      protocolVersion: version,
    };
    this.send(connect);

    const reply = await this.nextPacket(timeoutMs);
    if (reply.cmd !== 'connack') {
      throw new Error(`expected CONNACK, but the server sent ${describePacket(reply)}`);
    }
    return reply;
  }

  /**
   * Sends DISCONNECT (with `fields`, such as a v5 reason code or properties), ends the socket as a
   * client must after DISCONNECT, and waits for the close.
   */
  async disconnect(fields: Partial<Omit<IDisconnectPacket, 'cmd'>> = {}, timeoutMs = 2000): Promise<void> {
    this.send({ cmd: 'disconnect', ...fields });
    this.socket.end();
    await this.waitClose(timeoutMs);
  }

  /** Destroys the socket without sending DISCONNECT. */
  close(): void {
    this.socket.destroy();
  }

  private onPacket(packet: Packet): void {
    const waiter = this.waiters.shift();
    if (waiter === undefined) {
      this.received.push(packet);
      return;
    }
    clearTimeout(waiter.timer);
    waiter.resolve(packet);
  }

  private rejectWaiters(error: Error): void {
    for (const waiter of this.waiters.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.reject(error);
    }
  }
}

/** Returns a short description of a packet for failure messages, e.g. `disconnect (reason 0x82)`. */
export function describePacket(packet: Packet): string {
  const code =
    'reasonCode' in packet && packet.reasonCode !== undefined
      ? packet.reasonCode
      : 'returnCode' in packet
        ? packet.returnCode
        : undefined;
  return code === undefined ? packet.cmd : `${packet.cmd} (code 0x${code.toString(16)})`;
}

function setParserVersion(parser: Parser, version: ProtocolVersion): void {
  // mqtt-packet's parser reads the protocol level from `settings`, which its typings do not declare.
  (parser as Parser & { settings: { protocolVersion?: number } }).settings.protocolVersion = version;
}

export interface RawConnectFields {
  /** Protocol name; 'MQTT' unless given. */
  protocolName?: string;
  /** Protocol level byte; 4 (MQTT 3.1.1) unless given. */
  level?: number;
  /** Connect flags byte as sent, including the reserved bit 0; 0x02 (clean session) unless given. */
  flags?: number;
  keepalive?: number;
  clientId?: string;
}

/**
 * Encodes a CONNECT without properties or will, byte for byte as given. Tests use it for invalid
 * CONNECT packets (unknown levels, an empty client id with clean session 0) that mqtt-packet
 * refuses to encode.
 */
export function encodeRawConnect(fields: RawConnectFields = {}): Buffer {
  const name = Buffer.from(fields.protocolName ?? 'MQTT', 'utf8');
  const clientId = Buffer.from(fields.clientId ?? 'raw-client', 'utf8');
  const keepalive = fields.keepalive ?? 60;

  const body = Buffer.concat([
    uint16(name.length),
    name,
    Buffer.from([fields.level ?? 4, fields.flags ?? 0x02]),
    uint16(keepalive),
    uint16(clientId.length),
    clientId,
  ]);
  if (body.length > 127) {
    throw new Error(`encodeRawConnect supports bodies up to 127 bytes, got ${body.length}`);
  }
  return Buffer.concat([Buffer.from([0x10, body.length]), body]);
}

function uint16(value: number): Buffer {
  const bytes = Buffer.alloc(2);
  bytes.writeUInt16BE(value);
  return bytes;
}
