import mqttPacket from 'mqtt-packet';
import type { Packet, Parser } from 'mqtt-packet';
import { FrameReader, type FrameHandler } from '../mqtt/framer.js';
import { decodeCommonPacket, encodeSimpleAcknowledgement } from '../mqtt/fast-path.js';
import { hasMalformedUtf8 } from '../mqtt/utf8.js';
import { ConnackReturnCode, ReasonCode, connackCodeForVersion } from '../mqtt/reason-codes.js';
import { KEEPALIVE_TIMEOUT, malformedPacket, type CloseReason } from './close-reason.js';
import { STALL_MS, type Delivery, type QueueWaiter, type Session, type SessionSink } from './session.js';
import type { Will } from './will.js';
import type { Broker, ListenerSettings } from './broker.js';
import { dispatchPacket } from './handlers/dispatch.js';
import type { ClientSocket } from '../transport/client-socket.js';
import type { CertificateIdentity } from '../transport/tls.js';

/**
 * Bytes buffered in a socket before a connection counts as congested: QoS 1 and 2 messages then
 * wait in the session queue, QoS 0 messages are dropped, and reading from the client pauses.
 */
const OUTPUT_BUFFER_LIMIT = 512 * 1024;

/** How long a closing socket may take to flush its last packet before it is destroyed. */
const CLOSE_FLUSH_MS = 1000;

const EMPTY = Buffer.alloc(0);

// mqtt-packet otherwise builds a cache of 65,536 two-byte Buffers (about 7 MB of heap) at the
// first `generate`; Outpost encodes PUBLISH itself and generates few enough other packets.
mqttPacket.writeToStream.cacheNumbers = false;

export type ConnectionState = 'connecting' | 'connected' | 'closed';

let nextConnectionId = 1;

/** One network connection of one MQTT client: framing, parsing, timers, writes and backpressure. */
export class Connection implements SessionSink, FrameHandler, QueueWaiter {
  readonly id: number;
  readonly socket: ClientSocket;
  readonly broker: Broker;
  readonly listener: ListenerSettings;
  readonly remoteAddress: string;
  /** The source IP address alone, for per-address limits. */
  readonly remoteIp: string;
  /** The verified client certificate on listeners with `tls.require_certificate`, else null. */
  readonly certificate: CertificateIdentity | null;
  readonly acknowledgesImmediately = false;
  state: ConnectionState = 'connecting';
  protocolVersion = 4;
  clientId = '';
  username: string | undefined = undefined;
  session: Session | null = null;
  /** The will from CONNECT, removed by a normal DISCONNECT. */
  will: Will | null = null;
  keepaliveSeconds = 0;
  /** Receive Maximum, Maximum Packet Size and Topic Alias Maximum the v5 client announced. */
  clientReceiveMaximum = 65535;
  clientMaximumPacketSize = 0;
  clientTopicAliasMaximum = 0;
  requestProblemInformation = true;
  /** Session Expiry Interval the v5 client asked for in CONNECT, before the broker's cap. */
  requestedSessionExpiry = 0;
  /** Topic aliases the client set, created with the first one (most clients use none). */
  incomingAliases: Map<number, string> | null = null;
  private outgoingAliases: Map<string, number> | null = null;
  private readonly reader: FrameReader;
  /** Bytes of the packet being handled, for checks that mqtt-packet's decoding cannot make. */
  currentFrame: Buffer = EMPTY;
  private packetParsed = false;
  private keepaliveTimer: NodeJS.Timeout | null = null;
  private connectTimer: NodeJS.Timeout | null = null;
  private drainTimer: NodeJS.Timeout | null = null;
  private congested = false;
  private corked = false;
  private socketError: string | null = null;
  /** Frames that arrived while an asynchronous step (authentication, plugin authorization) runs. */
  private heldFrames: Buffer[] | null = null;
  private heldBytes = 0;
  /** Number of `hold` calls not yet released. */
  private holdCount = 0;
  /** Subscriber sessions whose long queues keep this publisher's socket unread, or null. */
  private waitingFor: Set<Session> | null = null;
  private waitTimer: NodeJS.Timeout | null = null;

  constructor(broker: Broker, socket: ClientSocket, listener: ListenerSettings, certificate: CertificateIdentity | null = null) {
    this.id = nextConnectionId++;
    this.broker = broker;
    this.socket = socket;
    this.listener = listener;
    this.certificate = certificate;
    this.remoteIp = socket.remoteAddress ?? 'unknown';
    this.remoteAddress = `${this.remoteIp}:${socket.remotePort ?? 0}`;
    // A listener's own packet size limit applies when it is set and below the broker-wide one.
    const listenerLimit = listener.max_packet_size;
    this.reader = new FrameReader(listenerLimit > 0 ? Math.min(listenerLimit, broker.limits.maxPacketSize) : broker.limits.maxPacketSize);
    socket.setNoDelay?.(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('drain', () => this.onDrain());
    socket.on('error', (error: NodeJS.ErrnoException) => {
      this.socketError = error.code ?? error.message;
    });
    socket.on('close', () => this.onSocketClose());
    this.connectTimer = setTimeout(onConnectTimeout, broker.limits.connectTimeoutMs, this);
  }

  get sendQuota(): number {
    return Math.min(this.broker.limits.maxInflightMessages, this.clientReceiveMaximum);
  }

  canSend(): boolean {
    return this.state === 'connected' && !this.congested;
  }

  /** Reads the state through a call, because handlers may close the connection during parsing. */
  isClosed(): boolean {
    return this.state === 'closed';
  }

  /** Largest packet this connection accepts: the listener's limit or `limits.max_packet_size`. */
  get maxPacketSize(): number {
    return this.reader.maxPacketSize;
  }

  /** Bytes buffered for this client: a partial packet, held packets and unsent output. */
  get bufferedBytes(): number {
    return this.reader.bufferedBytes + this.heldBytes + this.socket.writableLength;
  }

  /**
   * Holds back the packets that arrive from now on and stops reading the socket, until `release`.
   * Used while CONNECT authentication or a plugin authorization runs, and while a publisher waits
   * for subscribers' queues, so packets keep their order. Holds nest: each needs its release.
   */
  hold(): void {
    this.holdCount++;
    if (this.heldFrames !== null) return;
    this.heldFrames = [];
    this.socket.pause();
  }

  /** Ends one hold; after the last one, handles the held packets in order and reads the socket again. */
  release(): void {
    if (this.holdCount === 0) return;
    this.holdCount--;
    const frames = this.heldFrames;
    if (this.holdCount > 0 || frames === null) return;
    this.heldFrames = null;
    this.heldBytes = 0;
    for (let i = 0; i < frames.length; i++) {
      if (this.state === 'closed') return;
      if (this.holdCount > 0) {
        // A held packet started another asynchronous step: the rest waits behind it.
        const rest = frames.slice(i);
        this.heldFrames = rest;
        this.heldBytes = rest.reduce((sum, frame) => sum + frame.length, 0);
        return;
      }
      this.onFrame(frames[i]);
    }
    this.resumeReading();
  }

  /**
   * Stops reading this publisher until each of `sessions` has room in its queue again, so that a
   * publisher faster than a subscriber is slowed down instead of having its messages dropped at
   * the queue bound. A session that stops acknowledging for STALL_MS is no longer waited for.
   */
  waitForQueues(sessions: readonly Session[]): void {
    if (this.state === 'closed') return;
    for (const session of sessions) {
      // A client subscribed to its own topics would otherwise wait for itself.
      if (session === this.session) continue;
      this.waitingFor ??= new Set();
      if (this.waitingFor.has(session)) continue;
      this.waitingFor.add(session);
      session.addWaiter(this);
    }
    if (this.waitingFor === null || this.waitTimer !== null) return;
    this.hold();
    this.waitTimer = setTimeout(onWaitCheck, STALL_MS, this);
  }

  onQueueRoom(session: Session): void {
    const waitingFor = this.waitingFor;
    if (waitingFor === null) return;
    waitingFor.delete(session);
    if (waitingFor.size === 0) this.stopWaiting();
  }

  /** Drops the sessions that no longer need waiting for, such as a client that stopped acknowledging. */
  checkWaits(): void {
    const waitingFor = this.waitingFor;
    if (waitingFor === null) return;
    for (const session of waitingFor) {
      if (session.congested) continue;
      waitingFor.delete(session);
      session.removeWaiter(this);
    }
    if (waitingFor.size === 0) {
      this.stopWaiting();
    } else {
      this.waitTimer?.refresh();
    }
  }

  /** Tells whether reading is paused until subscribers' queues shrink. */
  get waitingForQueues(): boolean {
    return this.waitingFor !== null;
  }

  private stopWaiting(): void {
    for (const session of this.waitingFor ?? []) session.removeWaiter(this);
    this.waitingFor = null;
    if (this.waitTimer === null) return;
    clearTimeout(this.waitTimer);
    this.waitTimer = null;
    this.release();
  }

  /** Reads the socket again unless a hold or unsent output still pauses it. */
  private resumeReading(): void {
    if (this.holdCount === 0 && !this.congested && this.state !== 'closed') this.socket.resume();
  }

  /** Label for logs: the client id once known, else the remote address. */
  get label(): string {
    return this.clientId === '' ? this.remoteAddress : this.clientId;
  }

  sendPublish(delivery: Delivery, packetId: number, dup: boolean): boolean {
    if (this.state !== 'connected') return false;
    const topic = delivery.message.topic;
    let alias = 0;
    let sendTopic = true;
    let newAlias = false;
    if (this.clientTopicAliasMaximum > 0) {
      this.outgoingAliases ??= new Map();
      const known = this.outgoingAliases.get(topic);
      if (known !== undefined) {
        alias = known;
        sendTopic = false;
      } else if (this.outgoingAliases.size < this.clientTopicAliasMaximum) {
        alias = this.outgoingAliases.size + 1;
        newAlias = true;
      }
    }
    const packet = this.broker.encoder.encode(delivery, this.protocolVersion, packetId, dup, alias, sendTopic);
    // A message larger than the client's Maximum Packet Size is dropped as if sent [MQTT-3.1.2-25].
    if (this.clientMaximumPacketSize > 0 && packet.length > this.clientMaximumPacketSize) return false;
    if (newAlias) this.outgoingAliases?.set(topic, alias);
    const stats = this.broker.stats;
    stats.publishSent++;
    stats.publishSentByQos[delivery.qos]++;
    stats.publishBytesSentByQos[delivery.qos] += delivery.message.payload.length;
    this.write(packet);
    return true;
  }

  sendPubrel(packetId: number): void {
    this.send({ cmd: 'pubrel', messageId: packetId });
  }

  /** Encodes and writes one packet for this client's protocol version. */
  send(packet: Packet): void {
    if (this.state === 'closed') return;
    this.write(encodeSimpleAcknowledgement(packet) ?? mqttPacket.generate(packet, { protocolVersion: this.protocolVersion }));
  }

  /**
   * Sends `packet`, or `fallback` (the same packet without optional properties) when the first
   * is larger than the Maximum Packet Size the client announced [MQTT-3.1.2-24].
   */
  sendWithinLimit(packet: Packet, fallback: Packet): void {
    if (this.state === 'closed') return;
    const bytes = mqttPacket.generate(packet, { protocolVersion: this.protocolVersion });
    if (this.clientMaximumPacketSize > 0 && bytes.length > this.clientMaximumPacketSize) {
      this.send(fallback);
    } else {
      this.write(bytes);
    }
  }

  /** Writes encoded bytes, corking the socket until the end of the current tick to batch a burst. */
  write(bytes: Buffer): void {
    if (this.state === 'closed' || this.socket.destroyed) return;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(uncork, this);
    }
    const stats = this.broker.stats;
    stats.messagesSent++;
    stats.bytesSent += bytes.length;
    this.socket.write(bytes);
    if (!this.congested && this.socket.writableLength >= OUTPUT_BUFFER_LIMIT) {
      this.congested = true;
      this.socket.pause();
      this.drainTimer = setTimeout(onDrainTimeout, this.broker.limits.drainTimeoutMs, this);
    }
  }

  /** Flushes the writes batched since the socket was corked. */
  uncork(): void {
    this.corked = false;
    this.socket.uncork();
  }

  /** Restarts the keep alive period, as a packet from the client does. */
  refreshKeepalive(): void {
    this.keepaliveTimer?.refresh();
  }

  /** Marks the connection as accepted by CONNACK and starts the keep alive timer. */
  markConnected(): void {
    this.state = 'connected';
    if (this.connectTimer !== null) {
      clearTimeout(this.connectTimer);
      this.connectTimer = null;
    }
    // The server closes a connection silent for one and a half keep alive periods [MQTT-3.1.2-24].
    if (this.keepaliveSeconds > 0) {
      this.keepaliveTimer = setTimeout(onKeepaliveTimeout, this.keepaliveSeconds * 1500, this);
    }
  }

  /**
   * Refuses a CONNECT: sends CONNACK with the reason code translated for the client's protocol
   * version, so a 3.1.1 client never sees a v5 code, then closes.
   */
  refuseConnect(reasonCode: number, message: string): void {
    if (this.state !== 'connecting') return;
    const code = connackCodeForVersion(reasonCode, this.protocolVersion);
    if (this.protocolVersion === 5) {
      this.sendWithinLimit(
        { cmd: 'connack', sessionPresent: false, reasonCode: code, properties: { reasonString: message } },
        { cmd: 'connack', sessionPresent: false, reasonCode: code },
      );
    } else {
      this.send({ cmd: 'connack', sessionPresent: false, returnCode: code });
    }
    this.close({ code: reasonCode, message, sendDisconnect: false, publishWill: false });
  }

  /** Ends the connection; the one place that closes a client, logs why and hands the session back. */
  close(reason: CloseReason): void {
    if (this.state === 'closed') return;
    const wasConnected = this.state === 'connected';
    if (reason.sendDisconnect && this.protocolVersion === 5 && !this.socket.destroyed) {
      // A Reason String is allowed on DISCONNECT and CONNACK whatever Request Problem
      // Information says [MQTT-3.1.2-29]; it tells the user what the broker objected to.
      const properties = { reasonString: reason.message };
      if (wasConnected) {
        this.sendWithinLimit({ cmd: 'disconnect', reasonCode: reason.code, properties }, { cmd: 'disconnect', reasonCode: reason.code });
      } else if (reason.code >= 0x80) {
        this.sendWithinLimit(
          { cmd: 'connack', sessionPresent: false, reasonCode: reason.code, properties },
          { cmd: 'connack', sessionPresent: false, reasonCode: reason.code },
        );
      }
    }
    this.state = 'closed';
    this.clearTimers();
    this.broker.connectionClosed(this, reason, wasConnected);
    if (!this.socket.destroyed) {
      this.socket.end();
      setTimeout(destroySocket, CLOSE_FLUSH_MS, this.socket).unref();
    }
  }

  onFrame(frame: Buffer): boolean {
    if (this.state === 'closed') return false;
    if (this.heldFrames !== null) {
      this.heldFrames.push(frame);
      this.heldBytes += frame.length;
      return true;
    }
    if (this.state === 'connecting' && !this.checkConnectFrame(frame)) return false;
    this.currentFrame = frame;
    this.packetParsed = false;
    const common = this.state === 'connected' ? decodeCommonPacket(frame, this.protocolVersion) : null;
    if (common === null) {
      Connection.parse(this, frame);
    } else {
      this.onPacket(common);
    }
    this.currentFrame = EMPTY;
    if (!this.packetParsed && !this.isClosed()) {
      this.close(malformedPacket('packet shorter than its fields'));
    }
    return !this.isClosed();
  }

  /**
   * Parses one whole packet for `connection` with the shared parser of its protocol level. The
   * FrameReader hands over complete packets only, so a parser keeps no bytes between two calls,
   * and connections need no parser of their own (mqtt-packet's is a stream of about 2 KB). A
   * parse started while another runs, for example by a handler that releases held packets of
   * another connection, gets a parser of its own, because mqtt-packet's parser is not reentrant.
   */
  private static parse(connection: Connection, frame: Buffer): void {
    const outer = parsing;
    const version = connection.protocolVersion;
    let parser = outer === null ? sharedParsers.get(version) : undefined;
    if (parser === undefined) {
      parser = Connection.createParser(version);
      if (outer === null) sharedParsers.set(version, parser);
    }
    const outerFailed = parseFailed;
    parsing = connection;
    parseFailed = false;
    try {
      parser.parse(frame);
    } finally {
      const failed = parseFailed;
      parsing = outer;
      parseFailed = outerFailed;
      // A packet shorter than its fields leaves bytes in the parser, and an error leaves its
      // state: such a parser is not used again.
      if (outer === null && (failed || !connection.packetParsed)) sharedParsers.delete(version);
    }
  }

  /** Creates a parser that hands what it parses to the connection in `parsing`. */
  private static createParser(protocolVersion: number): Parser {
    const parser = mqttPacket.parser({ protocolVersion });
    parser.on('packet', (packet: Packet) => parsing?.onPacket(packet));
    parser.on('error', (error: Error) => {
      parseFailed = true;
      parsing?.onParseError(error);
    });
    return parser;
  }

  private onData(chunk: Buffer): void {
    this.broker.stats.bytesReceived += chunk.length;
    if (this.state === 'closed') return;
    const error = this.reader.push(chunk, this);
    if (error === 'too-large') {
      this.close({
        code: ReasonCode.PacketTooLarge,
        message: `packet larger than ${this.listener.max_packet_size > 0 ? `listeners.${this.listener.name}.max_packet_size` : 'limits.max_packet_size'} (${this.reader.maxPacketSize} bytes)`,
        sendDisconnect: true,
        publishWill: true,
      });
    } else if (error === 'malformed-length') {
      this.close(malformedPacket('invalid remaining length'));
    }
  }

  private onPacket(packet: Packet): void {
    this.packetParsed = true;
    if (this.state === 'closed') return;
    this.broker.stats.messagesReceived++;
    if (this.keepaliveTimer !== null) this.keepaliveTimer.refresh();
    if (hasMalformedUtf8(packet, this.currentFrame, this.protocolVersion)) {
      // [MQTT-1.5.4-1] A string that is not well-formed UTF-8 makes the packet malformed.
      this.close(malformedPacket(`malformed UTF-8 in ${packet.cmd.toUpperCase()}`));
      return;
    }
    if (this.broker.access.asyncAuthorize && this.state === 'connected') {
      const pending = this.broker.access.prepareAuthorization(this, packet);
      if (pending !== null) {
        this.dispatchWhenAuthorized(packet, pending);
        return;
      }
    }
    this.dispatch(packet);
  }

  /** Holds the connection until the plugin has decided on the packet's topics, then handles it. */
  private dispatchWhenAuthorized(packet: Packet, pending: Promise<void>): void {
    const frame = this.currentFrame;
    this.hold();
    void pending.then(() => {
      if (this.state === 'closed') return;
      this.currentFrame = frame;
      this.dispatch(packet);
      this.currentFrame = EMPTY;
      this.release();
    });
  }

  private dispatch(packet: Packet): void {
    try {
      dispatchPacket(this, packet);
    } catch (error) {
      this.broker.logger.error('packet handling failed', {
        client_id: this.clientId,
        conn: this.id,
        packet: packet.cmd,
        error: error instanceof Error ? error.stack ?? error.message : String(error),
      });
      this.close({
        code: ReasonCode.ImplementationSpecificError,
        message: 'internal error while handling a packet',
        sendDisconnect: true,
        publishWill: true,
      });
    }
  }

  private onParseError(error: Error): void {
    this.packetParsed = true;
    this.close(malformedPacket(error.message));
  }

  /**
   * Checks the first packet before parsing it: it must be CONNECT [MQTT-3.1.0-1], with a known
   * protocol name [MQTT-3.1.2-1] and a supported level, else CONNACK 0x01 [MQTT-3.1.2-2].
   */
  private checkConnectFrame(frame: Buffer): boolean {
    if (frame[0] >> 4 !== 1) {
      this.close({ code: ReasonCode.ProtocolError, message: 'first packet was not CONNECT', sendDisconnect: false, publishWill: false });
      return false;
    }
    let offset = 2;
    while ((frame[offset - 1] & 0x80) !== 0) offset++;
    if (offset + 2 > frame.length) return true; // the parser reports the short packet
    const nameLength = frame.readUInt16BE(offset);
    const levelOffset = offset + 2 + nameLength;
    if (levelOffset >= frame.length) return true;
    const name = frame.toString('latin1', offset + 2, levelOffset);
    if (name !== 'MQTT' && name !== 'MQIsdp') {
      this.close({ code: ReasonCode.ProtocolError, message: `unknown protocol name ${JSON.stringify(name)}`, sendDisconnect: false, publishWill: false });
      return false;
    }
    const level = frame[levelOffset] & 0x7f;
    const supported = name === 'MQTT' ? level === 4 || level === 5 : level === 3;
    if (!supported) {
      this.write(Buffer.from([0x20, 0x02, 0x00, ConnackReturnCode.UnacceptableProtocolVersion]));
      this.close({
        code: ReasonCode.UnsupportedProtocolVersion,
        message: `unsupported protocol ${name} level ${level}`,
        sendDisconnect: false,
        publishWill: false,
      });
      return false;
    }
    this.protocolVersion = level;
    return true;
  }

  private onDrain(): void {
    if (!this.congested) return;
    this.congested = false;
    if (this.drainTimer !== null) {
      clearTimeout(this.drainTimer);
      this.drainTimer = null;
    }
    if (this.state === 'closed') return;
    this.resumeReading();
    this.session?.pump();
  }

  private onSocketClose(): void {
    this.close({
      code: ReasonCode.UnspecifiedError,
      message: this.socketError === null ? 'connection closed by client' : `socket error ${this.socketError}`,
      sendDisconnect: false,
      publishWill: true,
    });
  }

  private clearTimers(): void {
    if (this.waitingFor !== null) {
      for (const session of this.waitingFor) session.removeWaiter(this);
      this.waitingFor = null;
    }
    if (this.waitTimer !== null) clearTimeout(this.waitTimer);
    this.waitTimer = null;
    if (this.keepaliveTimer !== null) clearTimeout(this.keepaliveTimer);
    if (this.connectTimer !== null) clearTimeout(this.connectTimer);
    if (this.drainTimer !== null) clearTimeout(this.drainTimer);
    this.keepaliveTimer = null;
    this.connectTimer = null;
    this.drainTimer = null;
  }
}

function uncork(connection: Connection): void {
  connection.uncork();
}

function destroySocket(socket: ClientSocket): void {
  socket.destroy();
}

function onConnectTimeout(connection: Connection): void {
  connection.close({
    code: ReasonCode.ProtocolError,
    message: 'no CONNECT within limits.connect_timeout_seconds',
    sendDisconnect: false,
    publishWill: false,
  });
}

/** The connection whose packet is being parsed, or null between packets. */
let parsing: Connection | null = null;
/** Set by a parser's error event during `Connection.parse`. */
let parseFailed = false;
/** The parsers shared by all connections, by MQTT protocol level (3, 4 or 5). */
const sharedParsers = new Map<number, Parser>();

function onKeepaliveTimeout(connection: Connection): void {
  // A publisher held back by waitForQueues is not silent: the broker is not reading it.
  if (connection.waitingForQueues) {
    connection.refreshKeepalive();
    return;
  }
  connection.close(KEEPALIVE_TIMEOUT);
}

function onWaitCheck(connection: Connection): void {
  connection.checkWaits();
}

function onDrainTimeout(connection: Connection): void {
  connection.close({
    code: ReasonCode.ServerBusy,
    message: 'slow consumer: socket not drained within limits.drain_timeout_seconds',
    sendDisconnect: false,
    publishWill: true,
  });
}
