import net from 'node:net';
import type { IConnackPacket, IConnectPacket, IPublishPacket, Packet, QoS } from 'mqtt-packet';
import type { Broker } from '../broker/broker.js';
import type { InternalClient, InternalMessage } from '../broker/internal-client.js';
import { forwardedProperties } from '../broker/message.js';
import { encodePublish, userPropertyPairs } from '../mqtt/publish-codec.js';
import { checkTopicName } from '../mqtt/topic.js';
import type { BridgeStatus } from '../service/gateway-status.js';
import type { Logger } from '../service/logger.js';
import type { Store } from '../store/store.js';
import { parseAddress, type RemoteAddress } from './address.js';
import { ReconnectBackoff } from './backoff.js';
import type { BridgeConfig } from './config-schema.js';
import { Outbox } from './outbox.js';
import type { OutboxEntry } from './outbox-store.js';
import { isConnectRejection, RemoteConnection, type RemoteTlsOptions } from './remote-connection.js';
import { buildConnectPacket, readTlsOptions } from './remote-options.js';
import { buildRules, isInbound, isOutbound, mapInbound, mapOutbound, type TopicRule } from './topic-rules.js';

/** Packet ids are derived from seq: `(seq - 1) mod 65535 + 1`. */
const PACKET_ID_SPACE = 65_535;

/** How often expired outbox messages are removed. */
const EXPIRY_SWEEP_MS = 60_000;

/** A connection that stayed up this long resets the reconnect backoff. */
const STABLE_CONNECTION_MS = 10_000;

const REPEAT_LOG_MS = 10_000;

/** Counters and gauges of one bridge. */
export interface BridgeMetrics {
  name: string;
  connected: boolean;
  /** The address of the current connection, `host:port`, or null. */
  remote: string | null;
  backlogMessages: number;
  backlogBytes: number;
  /** Age of the oldest message in the outbox in seconds, 0 when it is empty. */
  oldestAgeSeconds: number;
  /** PUBLISH packets written to the remote broker, resends included. */
  sent: number;
  /** Messages the remote broker acknowledged (PUBACK, PUBCOMP; QoS 0 counts when written). */
  acknowledged: number;
  /** Messages the remote broker rejected with a reason code of 0x80 or above. */
  rejected: number;
  /** Messages dropped because an outbox bound was reached or they expired. */
  dropped: number;
  /** Connections established after the first one. */
  reconnects: number;
  /** Connection attempts since start, failed ones included. */
  connectAttempts: number;
  /** Messages received from the remote broker and routed locally. */
  received: number;
  lastError: string | null;
}

/**
 * One store-and-forward bridge. Local messages that match an `out` rule enter the durable
 * outbox synchronously while they are routed. The outbox is sent to the remote broker in seq
 * order, pipelined up to the in-flight window, and an entry is deleted only when the remote
 * acknowledged it. Inbound rules subscribe at the remote broker and route what arrives locally.
 */
export class Bridge {
  readonly name: string;
  /** The client id of the bridge's in-process session, `$bridge/<name>`. */
  readonly localClientId: string;
  private readonly config: BridgeConfig;
  private readonly broker: Broker;
  private readonly logger: Logger;
  private readonly rules: TopicRule[];
  private readonly addresses: RemoteAddress[];
  private readonly clientId: string;
  private readonly gatewayId: string;
  private readonly stateTopic: string;
  private readonly backoff: ReconnectBackoff;
  private readonly outbox: Outbox;
  /** Returns the store the outbox lives in: the broker's, or an in-memory one without persistence. */
  private readonly storeSource: () => Store | null;
  private outboxOpened = false;
  private client: InternalClient | null = null;

  /** Messages sent and not yet acknowledged, by packet id, in the order they were sent. */
  private readonly inflight = new Map<number, OutboxEntry>();
  private link: RemoteConnection | null = null;
  /** True after CONNACK and the SUBACK of the inbound subscriptions, while the link is up. */
  private ready = false;
  private sessionPresent = false;
  private window = 1;
  private remoteMaxQos: QoS = 2;
  private remoteRetainAvailable = true;
  private remoteMaxPacketSize = 0;
  private useBridgeFlag: boolean;
  private addressIndex = 0;
  private connectedAt = 0;
  private everConnected = false;
  /**
   * Ids of inbound QoS 2 messages that were routed and got PUBREC but no PUBREL yet. They are
   * also stored under the bridge's local client id, so a resend after a restart is not routed twice.
   */
  private readonly incomingQos2 = new Set<number>();
  private incomingLoaded = false;
  private pendingSubscribeId = 0;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private rateTimer: NodeJS.Timeout | null = null;
  private sweepTimer: NodeJS.Timeout | null = null;
  private probeTimer: NodeJS.Timeout | null = null;
  private pumpScheduled = false;
  private rateAllowance = 0;
  private rateUpdatedAt = 0;
  private running = false;

  private sent = 0;
  private acknowledged = 0;
  private rejected = 0;
  private reconnects = 0;
  private connectAttempts = 0;
  private received = 0;
  private lastError: string | null = null;
  /** The backlog found at the last connect, until it has been sent and acknowledged. */
  private backlogAtConnect: { messages: number; acknowledged: number; at: number } | null = null;

  constructor(config: BridgeConfig, broker: Broker, logger: Logger, storeSource: () => Store | null) {
    this.name = config.name;
    this.localClientId = `$bridge/${config.name}`;
    this.config = config;
    this.broker = broker;
    this.logger = logger.child({ bridge: config.name });
    this.storeSource = storeSource;
    this.rules = buildRules(config.topics);
    const defaultPort = config.tls.enabled ? 8883 : 1883;
    this.addresses = config.addresses.map((text) => {
      const address = parseAddress(text, defaultPort);
      if (typeof address === 'string') throw new Error(`bridge ${config.name}: invalid address ${JSON.stringify(text)}: ${address}`);
      return address;
    });
    this.clientId = config.client_id !== '' ? config.client_id : `outpost-${config.name}`;
    this.gatewayId = config.message_id.gateway_id !== '' ? config.message_id.gateway_id : this.clientId;
    this.stateTopic = `$SYS/broker/connection/${config.name}/state`;
    this.backoff = new ReconnectBackoff(config.reconnect.base_ms, config.reconnect.max_ms);
    this.useBridgeFlag = config.protocol_version === '3.1.1' && config.try_private;
    this.outbox = new Outbox(config.name, config, this.logger, () => this.schedulePump());
  }

  /**
   * Subscribes to the local topics of the out rules. Call it before `Broker.start`, so that no
   * message accepted after the listeners bind misses the outbox.
   */
  attach(): void {
    if (this.client !== null) return;
    // The synchronous handler puts each message into the store batch while it is routed, so the
    // outbox row commits in the transaction that releases the publisher's PUBACK or PUBREC.
    const client = this.broker.createClient(this.localClientId, (message) => this.onLocalMessage(message), { synchronous: true });
    this.client = client;
    for (const rule of this.rules) {
      // No Local keeps messages that came in over this bridge from going back out, and Retain As
      // Published forwards the RETAIN flag, as a Mosquitto bridge does.
      if (!isOutbound(rule)) continue;
      client.subscribe(rule.localFilter, { qos: 2, noLocal: true, retainAsPublished: true }).catch((error: unknown) => {
        this.logger.error('bridge topic rule not subscribed locally; fix its pattern or prefixes', {
          filter: rule.localFilter,
          error: error instanceof Error ? error.message : String(error),
        });
      });
    }
  }

  /** Opens the outbox and starts connecting to the remote broker; call it after `Broker.start`. */
  start(): void {
    this.attach();
    this.openOutbox();
    this.running = true;
    this.broker.publishSys(this.stateTopic, '0');
    this.sweepTimer = setInterval(() => this.outbox.sweepExpired(Date.now()), EXPIRY_SWEEP_MS);
    this.sweepTimer.unref();
    this.connect();
  }

  /**
   * Disconnects from the remote broker. The local subscription stays until `detach`, so that
   * messages routed while the broker stops (wills, for example) still enter the outbox.
   */
  stop(): void {
    if (!this.running) return;
    this.running = false;
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
    if (this.rateTimer !== null) clearTimeout(this.rateTimer);
    if (this.sweepTimer !== null) clearInterval(this.sweepTimer);
    this.reconnectTimer = null;
    this.rateTimer = null;
    this.sweepTimer = null;
    this.stopPrimaryProbe();
    const link = this.link;
    if (link !== null && link.isConnected && this.config.notification_topic !== '') {
      // A clean DISCONNECT discards the will, so the state goes to 0 explicitly.
      link.send({ cmd: 'publish', topic: this.config.notification_topic, payload: Buffer.from('0'), qos: 0, retain: this.remoteRetainAvailable, dup: false });
    }
    link?.close('bridge stopping', true);
    this.link = null;
  }

  /** Removes the local subscription; the bridge receives no more messages. */
  detach(): void {
    this.stop();
    this.client?.close();
    this.client = null;
  }

  metrics(): BridgeMetrics {
    const oldest = this.outbox.oldestCreatedAt(this.inflight.values().next().value);
    const address = this.ready ? this.addresses[this.addressIndex] : undefined;
    return {
      name: this.name,
      connected: this.ready,
      remote: address === undefined ? null : `${address.host}:${address.port}`,
      backlogMessages: this.outbox.messages,
      backlogBytes: this.outbox.bytes,
      oldestAgeSeconds: oldest === null ? 0 : Math.max(0, (Date.now() - oldest) / 1000),
      sent: this.sent,
      acknowledged: this.acknowledged,
      rejected: this.rejected,
      dropped: this.outbox.dropped,
      reconnects: this.reconnects,
      connectAttempts: this.connectAttempts,
      received: this.received,
      lastError: this.lastError,
    };
  }

  status(): BridgeStatus {
    const metrics = this.metrics();
    return {
      name: this.name,
      connected: this.ready,
      backlogMessages: metrics.backlogMessages,
      backlogBytes: metrics.backlogBytes,
      droppedMessages: this.outbox.dropped,
      oldestAgeSeconds: metrics.oldestAgeSeconds,
      sentMessages: metrics.sent,
      acknowledgedMessages: metrics.acknowledged,
      rejectedMessages: metrics.rejected,
      receivedMessages: metrics.received,
      reconnects: metrics.reconnects,
      lastError: this.lastError,
    };
  }

  // Local side.

  private openOutbox(): boolean {
    if (this.outboxOpened) return this.outbox.isOpen;
    const store = this.storeSource();
    if (store === null) return false;
    this.outbox.open(store);
    this.outboxOpened = true;
    return true;
  }

  /** Called synchronously inside `Broker.route` for every local message an out rule matches. */
  private onLocalMessage(message: InternalMessage): void {
    const mapped = mapOutbound(this.rules, message.topic, message.qos);
    if (mapped === null) return;
    if (!this.openOutbox()) {
      // Only after the store closed (the broker stopped) or before it opened, when no publisher
      // can be acknowledged either.
      this.logger.limited('warn', `bridge-closed:${this.name}`, REPEAT_LOG_MS, 'message not forwarded: the outbox is not open', { topic: message.topic });
      return;
    }
    const overtake = this.config.drain.order === 'live_first' && this.ready;
    const stored = this.outbox.append(
      {
        topic: mapped.topic,
        payload: message.payload,
        qos: mapped.qos === 0 && this.config.upgrade_qos0 ? mapped.ruleQos : mapped.qos,
        retain: message.retain,
        properties: message.properties,
        expiresAt: message.expiresAt,
      },
      overtake,
    );
    if (!stored) {
      this.broker.routeRejected = true;
      return;
    }
    this.schedulePump();
  }

  // Remote side: connecting.

  private connect(): void {
    this.reconnectTimer = null;
    if (!this.running) return;
    const address = this.addresses[this.addressIndex];
    if (address === undefined) return;
    this.connectAttempts++;

    let tls: RemoteTlsOptions | null;
    let connect: IConnectPacket;
    try {
      tls = readTlsOptions(this.config);
      connect = buildConnectPacket(this.config, this.clientId, this.broker.limits);
    } catch (error) {
      this.onLinkClosed(error instanceof Error ? error.message : String(error), false, false);
      return;
    }

    this.logger.debug('connecting to the remote broker', { remote: `${address.host}:${address.port}`, bridge_flag: this.useBridgeFlag });
    const link: RemoteConnection = new RemoteConnection(
      {
        address,
        tls,
        protocolVersion: this.config.protocol_version === '5' ? 5 : 4,
        connect,
        bridgeMode: this.useBridgeFlag,
        connectTimeoutMs: this.config.reconnect.connect_timeout_ms,
        keepaliveSeconds: this.config.keepalive_seconds,
      },
      {
        onConnack: (packet) => this.onConnack(link, packet),
        onPacket: (packet) => this.onPacket(link, packet),
        onDrain: () => this.schedulePump(),
        onClose: (reason, connected) => {
          if (this.link === link) this.onLinkClosed(reason, connected, true);
        },
      },
    );
    this.link = link;
    link.open();
  }

  private onConnack(link: RemoteConnection, packet: IConnackPacket): void {
    const address = this.addresses[this.addressIndex];
    this.connectedAt = Date.now();
    this.sessionPresent = packet.sessionPresent;
    // Inbound QoS 2 ids belong to the remote session; a new session may use them for new messages.
    if (!packet.sessionPresent) {
      this.loadIncomingIds();
      for (const packetId of this.incomingQos2) this.storeSource()?.deleteIncoming(this.localClientId, packetId);
      this.incomingQos2.clear();
    }
    const properties = packet.properties;
    this.window = Math.min(this.config.drain.max_inflight, properties?.receiveMaximum ?? PACKET_ID_SPACE);
    this.remoteMaxQos = (properties?.maximumQoS ?? 2) as QoS;
    this.remoteRetainAvailable = properties?.retainAvailable ?? true;
    this.remoteMaxPacketSize = properties?.maximumPacketSize ?? 0;
    if (this.everConnected) this.reconnects++;
    this.everConnected = true;
    this.lastError = null;
    this.logger.info('bridge connected', {
      remote: address === undefined ? undefined : `${address.host}:${address.port}`,
      session_present: packet.sessionPresent,
      inflight_window: this.window,
      backlog: this.outbox.messages,
    });
    this.backlogAtConnect = this.outbox.messages > 0 ? { messages: this.outbox.messages, acknowledged: this.acknowledged, at: Date.now() } : null;
    this.warnAboutRemoteLimits();
    if (this.config.notification_topic !== '') {
      link.send({ cmd: 'publish', topic: this.config.notification_topic, payload: Buffer.from('1'), qos: 0, retain: this.remoteRetainAvailable, dup: false });
    }
    this.outbox.requeue(this.inflight.values());
    this.inflight.clear();
    this.subscribeInbound(link);
  }

  /** Subscribes to the remote topics of the in rules; the drain starts after SUBACK. */
  private subscribeInbound(link: RemoteConnection): void {
    const qosByFilter = new Map<string, QoS>();
    for (const rule of this.rules) {
      if (isInbound(rule)) qosByFilter.set(rule.remoteFilter, Math.max(qosByFilter.get(rule.remoteFilter) ?? 0, rule.qos) as QoS);
    }
    if (qosByFilter.size === 0) {
      this.onReady();
      return;
    }
    // Nothing is in flight until SUBACK, so the packet id of the next message is free.
    this.pendingSubscribeId = packetIdFor(this.outbox.peek()?.seq ?? 1);
    const v5 = this.config.protocol_version === '5';
    link.send({
      cmd: 'subscribe',
      messageId: this.pendingSubscribeId,
      // No Local and Retain As Published keep our own messages from coming back and keep RETAIN.
      // MQTT 3.1.1 has neither, so there the bridge flag requests the same behaviour of Mosquitto.
      subscriptions: [...qosByFilter].map(([topic, qos]) => (v5 ? { topic, qos, nl: true, rap: true } : { topic, qos })),
    });
  }

  private warnAboutRemoteLimits(): void {
    const highest = Math.max(...this.rules.map((rule) => rule.qos));
    if (highest > this.remoteMaxQos) {
      this.logger.warn('the remote broker supports a lower QoS than a topic rule requests; messages are sent at its maximum', {
        rule_qos: highest,
        remote_maximum_qos: this.remoteMaxQos,
      });
    }
    if (!this.remoteRetainAvailable) this.logger.warn('the remote broker does not support retained messages; RETAIN is cleared on forwarded messages');
  }

  private onReady(): void {
    this.ready = true;
    this.backoff.reset();
    this.broker.publishSys(this.stateTopic, '1');
    this.startPrimaryProbe();
    this.schedulePump();
  }

  /**
   * While connected to a fallback address, checks every `reconnect.primary_probe_seconds`
   * whether the first address accepts TCP again, and then closes the current link, so that the
   * reconnect starts at the first address.
   */
  private startPrimaryProbe(): void {
    const seconds = this.config.reconnect.primary_probe_seconds;
    const primary = this.addresses[0];
    if (seconds === 0 || this.addressIndex === 0 || primary === undefined) return;
    this.probeTimer = setInterval(() => {
      const socket = net.connect({ host: primary.host, port: primary.port });
      socket.setTimeout(this.config.reconnect.connect_timeout_ms, () => socket.destroy());
      socket.once('error', () => socket.destroy());
      socket.once('connect', () => {
        socket.destroy();
        const link = this.link;
        if (link === null || !this.ready || this.addressIndex === 0) return;
        this.logger.info('the first remote address accepts connections again; moving back to it', { remote: `${primary.host}:${primary.port}` });
        link.close('moving back to the first remote address', true);
      });
    }, seconds * 1000);
    this.probeTimer.unref();
  }

  private stopPrimaryProbe(): void {
    if (this.probeTimer !== null) clearInterval(this.probeTimer);
    this.probeTimer = null;
  }

  private onLinkClosed(reason: string, connected: boolean, attempted: boolean): void {
    const wasReady = this.ready;
    this.link = null;
    this.ready = false;
    this.stopPrimaryProbe();
    this.pendingSubscribeId = 0;
    this.outbox.requeue(this.inflight.values());
    this.inflight.clear();
    this.lastError = reason;
    if (wasReady) this.broker.publishSys(this.stateTopic, '0');
    if (!this.running) return;

    const address = this.addresses[this.addressIndex];
    const remote = address === undefined ? undefined : `${address.host}:${address.port}`;
    if (!connected && attempted && this.useBridgeFlag && isBridgeFlagRejection(reason)) {
      this.useBridgeFlag = false;
      this.logger.warn('the remote broker rejected the bridge flag (try_private); connecting without it', { remote, reason });
      this.reconnectTimer = setTimeout(() => this.connect(), 0);
      return;
    }
    if (connected) {
      this.logger.warn('bridge connection lost', { remote, reason, backlog: this.outbox.messages });
      if (Date.now() - this.connectedAt >= STABLE_CONNECTION_MS) this.backoff.reset();
    } else {
      this.logger.limited('warn', `bridge-connect:${this.name}:${reason}`, REPEAT_LOG_MS, 'bridge could not connect', { remote, reason });
    }

    // A lost connection starts again at the first address, so the bridge returns to the
    // primary broker when it is back. A failed attempt moves on to the next address, and a
    // whole round of failures waits for the backoff.
    let wait: number;
    if (connected) {
      this.addressIndex = 0;
      wait = this.backoff.next();
    } else {
      this.addressIndex = (this.addressIndex + 1) % this.addresses.length;
      wait = this.addressIndex === 0 ? this.backoff.next() : 0;
    }
    this.reconnectTimer = setTimeout(() => this.connect(), wait);
  }

  // Remote side: packets.

  private onPacket(link: RemoteConnection, packet: Packet): void {
    switch (packet.cmd) {
      case 'puback':
        this.onFinalAck(packet.messageId ?? 0, packet.reasonCode ?? 0, 'PUBACK');
        return;
      case 'pubrec':
        this.onPubrec(link, packet.messageId ?? 0, packet.reasonCode ?? 0);
        return;
      case 'pubcomp':
        this.onFinalAck(packet.messageId ?? 0, packet.reasonCode ?? 0, 'PUBCOMP');
        return;
      case 'suback':
        this.onSuback(packet.messageId ?? 0, packet.granted);
        return;
      case 'publish':
        this.onRemotePublish(link, packet);
        return;
      case 'pubrel':
        this.loadIncomingIds();
        if (this.incomingQos2.delete(packet.messageId ?? 0)) this.storeSource()?.deleteIncoming(this.localClientId, packet.messageId ?? 0);
        link.send({ cmd: 'pubcomp', messageId: packet.messageId });
        return;
      case 'disconnect': {
        const reasonString = packet.properties?.reasonString;
        link.close(`the remote broker sent DISCONNECT (reason 0x${(packet.reasonCode ?? 0).toString(16)}${reasonString === undefined ? '' : `, ${reasonString}`})`);
        return;
      }
      default:
        return;
    }
  }

  private onSuback(messageId: number, granted: Array<number | object>): void {
    if (messageId !== this.pendingSubscribeId) return;
    this.pendingSubscribeId = 0;
    const rejected = granted.filter((code) => typeof code === 'number' && code >= 0x80).length;
    if (rejected > 0) {
      this.logger.error('the remote broker rejected inbound topic subscriptions; check its ACL for the bridge user', {
        rejected,
        filters: this.rules.filter(isInbound).map((rule) => rule.remoteFilter).join(' '),
      });
    }
    this.onReady();
  }

  private onFinalAck(packetId: number, reasonCode: number, kind: string): void {
    const entry = this.inflight.get(packetId);
    if (entry === undefined) return;
    this.inflight.delete(packetId);
    this.outbox.remove(entry);
    if (reasonCode >= 0x80) {
      // A negative acknowledgement is final in MQTT 5. Sending the message again would get the
      // same reason code and hold up the queue behind it.
      this.rejected++;
      this.logger.limited('warn', `bridge-rejected:${this.name}:${reasonCode}`, REPEAT_LOG_MS, 'the remote broker rejected a message; it is removed from the outbox', {
        ack: kind,
        reason_code: `0x${reasonCode.toString(16)}`,
        topic: entry.topic,
        rejected_total: this.rejected,
      });
    } else {
      this.acknowledged++;
    }
    this.schedulePump();
  }

  private onPubrec(link: RemoteConnection, packetId: number, reasonCode: number): void {
    const entry = this.inflight.get(packetId);
    if (entry === undefined) {
      // Not in flight (any more): release it so that the remote frees the id.
      link.send({ cmd: 'pubrel', messageId: packetId });
      return;
    }
    if (reasonCode >= 0x80) {
      this.onFinalAck(packetId, reasonCode, 'PUBREC');
      return;
    }
    entry.released = true;
    link.send({ cmd: 'pubrel', messageId: packetId });
  }

  /** Routes a message from the remote broker locally and acknowledges it once it is stored. */
  private onRemotePublish(link: RemoteConnection, packet: IPublishPacket): void {
    const packetId = packet.messageId ?? 0;
    this.loadIncomingIds();
    if (packet.qos === 2 && this.incomingQos2.has(packetId)) {
      link.send({ cmd: 'pubrec', messageId: packetId });
      return;
    }
    const localTopic = mapInbound(this.rules, packet.topic);
    const client = this.client;
    if (localTopic !== null && client !== null && checkTopicName(localTopic, this.broker.limits.maxTopicLevels) === null) {
      this.received++;
      const properties = packet.properties;
      void client
        .publish(localTopic, typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload, {
          qos: packet.qos,
          retain: packet.retain,
          properties: forwardedProperties(properties, userPropertyPairs(properties?.userProperties)) ?? undefined,
          messageExpiryInterval: properties?.messageExpiryInterval,
        })
        .catch((error: unknown) => {
          this.logger.limited('warn', `bridge-inbound:${this.name}`, REPEAT_LOG_MS, 'inbound message not routed', { topic: localTopic, error: String(error) });
        });
    } else {
      this.logger.limited('warn', `bridge-inbound-topic:${this.name}`, REPEAT_LOG_MS, 'inbound message matches no inbound topic rule; acknowledged and dropped', {
        topic: packet.topic,
      });
    }
    if (packet.qos === 0) return;
    if (packet.qos === 2) {
      this.incomingQos2.add(packetId);
      // Committed in the batch whose commit releases the PUBREC below.
      this.storeSource()?.saveIncoming(this.localClientId, packetId);
    }
    // Like a network publisher, the remote gets PUBACK or PUBREC once the message is stored.
    this.broker.whenDurable(() => {
      if (link.isConnected) link.send({ cmd: packet.qos === 1 ? 'puback' : 'pubrec', messageId: packetId });
    });
  }

  /** Reads the inbound QoS 2 ids an earlier run stored, once, when the store is open. */
  private loadIncomingIds(): void {
    if (this.incomingLoaded) return;
    const store = this.storeSource();
    if (store === null) return;
    this.incomingLoaded = true;
    for (const row of store.loadIncoming()) {
      if (row.clientId === this.localClientId) this.incomingQos2.add(row.packetId);
    }
  }

  // Remote side: the drain.

  private schedulePump(): void {
    if (this.pumpScheduled || !this.ready) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  /** Sends queued messages in seq order while the window, the rate cap and the socket allow. */
  private pump(): void {
    const link = this.link;
    if (link === null || !this.ready) return;
    const now = Date.now();
    link.cork();
    try {
      this.resendReleased(link);
      while (!link.congested) {
        const head = this.outbox.peek();
        if (head === undefined) {
          this.outbox.resyncWhenEmpty(this.inflight.size);
          if (this.inflight.size === 0) this.logBacklogSent();
          break;
        }
        // Waits for the commit (at most one batch window) of the seq reservation of a new block.
        if (!this.outbox.isReserved(head)) break;
        if (head.qos > 0 && !this.hasWindowFor(head)) break;
        if (!this.takeRateToken(now)) break;
        this.outbox.take();
        this.sendEntry(link, head, now);
      }
    } finally {
      link.uncork();
    }
  }

  /**
   * After a reconnect to a kept session, QoS 2 messages that got PUBREC before the link was
   * lost get PUBREL again instead of a second PUBLISH (MQTT 5.0 section 4.4).
   */
  private resendReleased(link: RemoteConnection): void {
    if (!this.sessionPresent) return;
    for (let entry = this.outbox.shiftReleased(); entry !== undefined; entry = this.outbox.shiftReleased()) {
      const packetId = packetIdFor(entry.seq);
      this.inflight.set(packetId, entry);
      link.send({ cmd: 'pubrel', messageId: packetId });
    }
  }

  private hasWindowFor(entry: OutboxEntry): boolean {
    if (this.inflight.size >= this.window) return false;
    // Packet ids repeat every 65535 seqs; a message whose id is still in flight waits for it.
    return !this.inflight.has(packetIdFor(entry.seq));
  }

  /** Token bucket of `drain.max_rate` messages per second, with a burst of one second. */
  private takeRateToken(now: number): boolean {
    const rate = this.config.drain.max_rate;
    if (rate === 0) return true;
    this.rateAllowance = Math.min(rate, this.rateAllowance + ((now - this.rateUpdatedAt) / 1000) * rate);
    this.rateUpdatedAt = now;
    if (this.rateAllowance >= 1) {
      this.rateAllowance -= 1;
      return true;
    }
    if (this.rateTimer === null) {
      const waitMs = Math.ceil(((1 - this.rateAllowance) / rate) * 1000);
      this.rateTimer = setTimeout(() => {
        this.rateTimer = null;
        this.schedulePump();
      }, waitMs);
    }
    return false;
  }

  private sendEntry(link: RemoteConnection, entry: OutboxEntry, now: number): void {
    const maxAge = this.config.outbox.max_age_seconds;
    if (maxAge > 0 && now - entry.createdAt > maxAge * 1000) {
      this.outbox.drop(entry, 'expired in the outbox (max_age_seconds)');
      return;
    }
    if (entry.expiresAt !== 0 && entry.expiresAt <= now) {
      this.outbox.drop(entry, 'Message Expiry Interval passed');
      return;
    }
    const qos = Math.min(entry.qos, this.remoteMaxQos) as QoS;
    const packetId = qos > 0 ? packetIdFor(entry.seq) : 0;
    const bytes = this.encodeEntry(entry, qos, packetId, now);
    if (this.remoteMaxPacketSize > 0 && bytes.length > this.remoteMaxPacketSize) {
      this.outbox.drop(entry, `larger than the remote broker's Maximum Packet Size ${this.remoteMaxPacketSize}`);
      return;
    }
    entry.sent = true;
    link.write(bytes);
    this.sent++;
    if (qos === 0) {
      // QoS 0 has no acknowledgement: the message leaves the outbox once written.
      this.outbox.remove(entry);
      this.acknowledged++;
      return;
    }
    this.inflight.set(packetId, entry);
  }

  /** Logs once that the backlog found at connect time is at the remote broker. */
  private logBacklogSent(): void {
    const backlog = this.backlogAtConnect;
    if (backlog === null) return;
    this.backlogAtConnect = null;
    this.logger.info('bridge backlog sent', {
      backlog: backlog.messages,
      acknowledged: this.acknowledged - backlog.acknowledged,
      seconds: ((Date.now() - backlog.at) / 1000).toFixed(1),
    });
  }

  private encodeEntry(entry: OutboxEntry, qos: QoS, packetId: number, now: number): Buffer {
    const properties = entry.properties;
    let userProperties = properties?.userProperties;
    if (this.config.message_id.enabled) {
      userProperties = [...(userProperties ?? []), [this.config.message_id.property, `${this.gatewayId}:${entry.seq}`]];
    }
    return encodePublish({
      protocolVersion: this.config.protocol_version === '5' ? 5 : 4,
      topic: entry.topic,
      payload: entry.payload,
      qos,
      retain: entry.retain && this.remoteRetainAvailable,
      dup: entry.sent && qos > 0,
      packetId,
      payloadFormatIndicator: properties?.payloadFormatIndicator,
      messageExpiryInterval: entry.expiresAt === 0 ? undefined : Math.max(1, Math.ceil((entry.expiresAt - now) / 1000)),
      contentType: properties?.contentType,
      responseTopic: properties?.responseTopic,
      correlationData: properties?.correlationData,
      userProperties,
      topicAlias: 0,
      subscriptionIds: [],
    });
  }
}

/** Packet id of the message with sequence number `seq`, so that a resend after a restart reuses it. */
function packetIdFor(seq: number): number {
  return ((seq - 1) % PACKET_ID_SPACE) + 1;
}

/**
 * Tells whether a failed connection looks like a 3.1.1 broker that does not support the bridge
 * flag: it rejects the protocol level, or closes the connection before CONNACK.
 */
function isBridgeFlagRejection(reason: string): boolean {
  if (reason.includes('unacceptable protocol version')) return true;
  return !isConnectRejection(reason) && reason === 'connection closed by the remote broker';
}
