import type { AddressInfo, Socket } from 'node:net';
import type { QoS } from 'mqtt-packet';
import type { ListenerConfig, OutpostConfig } from '../config/schema.js';
import type { Logger } from '../service/logger.js';
import { ReasonCode } from '../mqtt/reason-codes.js';
import { SERVER_SHUTTING_DOWN, SESSION_TAKEN_OVER, type CloseReason } from './close-reason.js';
import { Connection } from './connection.js';
import { SESSION_NEVER_EXPIRES } from './handlers/connect.js';
import { InternalClient, type InternalMessageHandler } from './internal-client.js';
import { Listener } from './listener.js';
import type { Message } from './message.js';
import { PublishEncoder } from './publish-encoder.js';
import { RetainedStore } from './retained.js';
import { Session, type Delivery, type DropReason, type SessionEvents } from './session.js';
import { BrokerStats } from './stats.js';
import type { Subscription } from './subscription.js';
import { SubscriptionTree, type MatchVisitor, type SharedGroup } from './subscription-tree.js';
import { SysPublisher } from './sys.js';
import type { Will } from './will.js';

export type ListenerSettings = ListenerConfig;

/** The limits section of the configuration in the units the broker works in. */
export interface BrokerLimits {
  maxConnections: number;
  maxPacketSize: number;
  maxInflightMessages: number;
  receiveMaximum: number;
  maxQueuedMessages: number;
  maxQueuedBytes: number;
  queueQos0Messages: boolean;
  maxTopicLevels: number;
  maxKeepalive: number;
  connectTimeoutMs: number;
  drainTimeoutMs: number;
  topicAliasMaximum: number;
  maxSessionExpirySeconds: number;
}

/** Node.js timers fire at once when set above 2^31 - 1 ms, so long expiries are re-armed in steps. */
const MAX_TIMER_MS = 2_147_483_647;

/** How often a repeated warning about one client or listener reaches the log. */
const REPEAT_LOG_MS = 10_000;

/**
 * The router and owner of all broker state: listeners, connections, sessions, subscriptions and
 * retained messages. Every message, from a network client, an in-process client or a will, is
 * routed by `route`.
 */
export class Broker {
  readonly config: OutpostConfig;
  readonly logger: Logger;
  readonly limits: BrokerLimits;
  readonly stats = new BrokerStats();
  readonly encoder = new PublishEncoder();
  readonly retained = new RetainedStore();
  private readonly sessions = new Map<string, Session>();
  private readonly connections = new Set<Connection>();
  private readonly connectionsPerListener = new Map<ListenerSettings, number>();
  private readonly tree = new SubscriptionTree();
  private readonly listeners: Listener[] = [];
  private readonly sessionEvents: SessionEvents;
  private sys: SysPublisher | null = null;
  private running = false;

  constructor(config: OutpostConfig, logger: Logger) {
    this.config = config;
    this.logger = logger;
    this.limits = limitsFromConfig(config);
    this.sessionEvents = { dropped: (session, delivery, reason) => this.onDropped(session, delivery, reason) };
  }

  /** Binds every listener; rejects with the first bind error after closing those already bound. */
  async start(): Promise<void> {
    for (const settings of this.config.listeners) {
      const listener = new Listener(settings, (socket) => this.accept(socket, settings), this.logger);
      try {
        await listener.listen();
      } catch (error) {
        await this.closeListeners();
        throw error;
      }
      this.listeners.push(listener);
    }
    this.running = true;
    if (this.config.sys.interval_seconds > 0) {
      this.sys = new SysPublisher(this, this.config.sys.interval_seconds * 1000);
      this.sys.start();
    }
    this.logger.info('broker started', { listeners: this.listeners.length });
  }

  /** Stops accepting, sends v5 clients DISCONNECT 0x8B, closes every connection and listener. */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.sys?.stop();
    this.sys = null;
    const closing = this.closeListeners();
    for (const connection of [...this.connections]) connection.close(SERVER_SHUTTING_DOWN);
    for (const session of this.sessions.values()) clearSessionTimers(session);
    await closing;
    this.logger.info('broker stopped');
  }

  listenerAddresses(): AddressInfo[] {
    return this.listeners.map((listener) => listener.address());
  }

  /** Creates an in-process client that publishes and subscribes through the router like a network client. */
  createClient(clientId: string, handler: InternalMessageHandler): InternalClient {
    const existing = this.sessions.get(clientId);
    if (existing !== undefined) {
      if (existing.sink !== null) throw new Error(`client id ${JSON.stringify(clientId)} is in use; choose another id for the in-process client`);
      this.endSession(existing);
    }
    const session = new Session(clientId, this.sessionLimits(), this.sessionEvents);
    this.sessions.set(clientId, session);
    const client = new InternalClient(this, session, handler);
    session.sink = client;
    return client;
  }

  get subscriptionCount(): number {
    return this.tree.size;
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  /**
   * Routes a message to every matching subscription and stores it when retained; returns the
   * number of sessions it was delivered to.
   */
  route(message: Message): number {
    if (message.retain) this.retained.set(message); // [MQTT-3.3.1-5]
    const collector = new DeliveryCollector(message);
    this.tree.match(message.topic, collector);
    let count = 0;
    for (const [clientId, target] of collector.targets) {
      const session = this.sessions.get(clientId);
      if (session === undefined) continue;
      session.deliver({ message, qos: target.qos, retain: target.retain, subscriptionIds: target.subscriptionIds });
      count++;
    }
    for (const group of collector.groups) {
      const member = this.pickSharedMember(group);
      const session = member === null ? undefined : this.sessions.get(member.clientId);
      if (member === null || session === undefined) continue;
      session.deliver({
        message,
        qos: Math.min(message.qos, member.qos) as QoS,
        retain: member.retainAsPublished && message.retain,
        subscriptionIds: member.subscriptionId === 0 ? [] : [member.subscriptionId],
      });
      count++;
    }
    this.encoder.reset();
    return count;
  }

  /** Adds or replaces a subscription; returns whether the session already had this filter. */
  subscribe(session: Session, subscription: Subscription): boolean {
    const existed = session.subscriptions.has(subscription.rawFilter);
    session.subscriptions.set(subscription.rawFilter, subscription); // replaces [MQTT-3.8.4-3]
    this.tree.add(subscription);
    return existed;
  }

  unsubscribe(session: Session, rawFilter: string): boolean {
    const subscription = session.subscriptions.get(rawFilter);
    if (subscription === undefined) return false;
    session.subscriptions.delete(rawFilter);
    this.tree.remove(session.clientId, subscription.filter, subscription.shareGroup);
    return true;
  }

  /**
   * Sends the retained messages matching a new subscription, with RETAIN set [MQTT-3.3.1-8] and at
   * the lower of the stored and granted QoS.
   */
  sendRetained(session: Session, subscription: Subscription): void {
    const subscriptionIds = subscription.subscriptionId === 0 ? [] : [subscription.subscriptionId];
    for (const message of this.retained.match(subscription.filter)) {
      session.deliver({ message, qos: Math.min(message.qos, subscription.qos) as QoS, retain: true, subscriptionIds });
    }
    this.encoder.reset();
  }

  /** Checks a client's credentials; returns 0 or the v5 reason code to refuse the connection with. */
  authenticate(connection: Connection, username: string | undefined, _password: Buffer | undefined): number {
    const settings = connection.listener;
    if (settings.allow_anonymous) return ReasonCode.Success;
    // NOTE: no password backend exists yet, so a listener without anonymous access admits nobody.
    return username === undefined ? ReasonCode.NotAuthorized : ReasonCode.BadUserNameOrPassword;
  }

  /** Tells whether a client may publish to a topic; `$SYS/` belongs to the broker. */
  allowPublish(connection: Connection, topic: string): boolean {
    if (topic.startsWith('$SYS/') || topic === '$SYS') {
      this.logger.limited('warn', `sys-publish:${connection.clientId}`, REPEAT_LOG_MS, 'publish to $SYS topic rejected', {
        client_id: connection.clientId,
        conn: connection.id,
        topic,
      });
      return false;
    }
    return true;
  }

  allowSubscribe(_connection: Connection, _filter: string): boolean {
    return true;
  }

  /**
   * Finds or creates the session for a connecting client. An existing connection with the same
   * client id is closed first [MQTT-3.1.4-3]; Clean Start discards an existing session [MQTT-3.1.2-4].
   */
  attachSession(clientId: string, cleanStart: boolean, expiry: number): { session: Session; present: boolean } {
    let session = this.sessions.get(clientId);
    if (session !== undefined && session.sink instanceof Connection) {
      session.sink.close(SESSION_TAKEN_OVER);
      session = this.sessions.get(clientId);
    } else if (session !== undefined && session.sink !== null) {
      // An in-process client holds this id; the network client replaces it.
      this.endSession(session);
      session = undefined;
    }
    if (session !== undefined && cleanStart) {
      this.endSession(session);
      session = undefined;
    }
    let present = false;
    if (session === undefined) {
      session = new Session(clientId, this.sessionLimits(), this.sessionEvents);
      this.sessions.set(clientId, session);
    } else {
      present = true; // [MQTT-3.2.2-2]
      // A new connection before the Will Delay Interval ends cancels the will [MQTT-3.1.3-9].
      clearSessionTimers(session);
      session.pendingWill = null;
    }
    session.expiryInterval = expiry;
    return { session, present };
  }

  accept(socket: Socket, settings: ListenerSettings): void {
    const perListener = this.connectionsPerListener.get(settings) ?? 0;
    const overGlobal = this.connections.size >= this.limits.maxConnections;
    const overListener = settings.max_connections > 0 && perListener >= settings.max_connections;
    if (!this.running || overGlobal || overListener) {
      const limit = overGlobal ? 'limits.max_connections' : `listeners.${settings.name}.max_connections`;
      this.logger.limited('warn', `limit:${settings.name}`, REPEAT_LOG_MS, 'connection refused: limit reached', {
        listener: settings.name,
        remote: socket.remoteAddress,
        limit: this.running ? limit : 'broker stopping',
      });
      socket.on('error', ignoreError);
      socket.destroy();
      return;
    }
    this.connectionsPerListener.set(settings, perListener + 1);
    this.connections.add(new Connection(this, socket, settings));
  }

  clientConnected(connection: Connection, cleanStart: boolean, sessionPresent: boolean): void {
    const stats = this.stats;
    stats.clientsConnected++;
    if (stats.clientsConnected > stats.clientsMaximum) stats.clientsMaximum = stats.clientsConnected;
    this.logger.info('client connected', {
      client_id: connection.clientId,
      conn: connection.id,
      listener: connection.listener.name,
      remote: connection.remoteAddress,
      protocol: protocolName(connection.protocolVersion),
      user: connection.username,
      clean_start: cleanStart,
      session_present: sessionPresent,
      keepalive: connection.keepaliveSeconds,
    });
  }

  /** Called once by Connection.close: logs the reason and hands the session its will and expiry. */
  connectionClosed(connection: Connection, reason: CloseReason, wasConnected: boolean): void {
    this.connections.delete(connection);
    const perListener = this.connectionsPerListener.get(connection.listener) ?? 1;
    this.connectionsPerListener.set(connection.listener, perListener - 1);
    if (!wasConnected) {
      this.logger.limited('info', `closed-before-connect:${reason.message}`, REPEAT_LOG_MS, 'connection closed before CONNACK', {
        conn: connection.id,
        remote: connection.remoteAddress,
        client_id: connection.clientId === '' ? undefined : connection.clientId,
        reason: reason.message,
      });
      return;
    }
    this.stats.clientsConnected--;
    this.logger.info('client disconnected', {
      client_id: connection.clientId,
      conn: connection.id,
      reason: reason.message,
      reason_code: reason.sendDisconnect && connection.protocolVersion === 5 ? hex(reason.code) : undefined,
    });
    const session = connection.session;
    if (session === null || session.sink !== connection) return;
    session.detach();
    const will = reason.publishWill ? connection.will : null;
    connection.will = null;
    if (!this.running) return;
    if (session.expiryInterval === 0) {
      if (will !== null) this.publishWill(will, session.clientId);
      this.endSession(session);
      return;
    }
    if (will !== null) {
      if (will.delaySeconds === 0) {
        this.publishWill(will, session.clientId);
      } else {
        // The will goes out when its delay or the session ends, whichever comes first [MQTT-3.1.3-9].
        session.pendingWill = will;
        const delayMs = Math.min(will.delaySeconds, session.expiryInterval) * 1000;
        session.willTimer = setTimeout(firePendingWill, Math.min(delayMs, MAX_TIMER_MS), this, session);
      }
    }
    if (session.expiryInterval !== SESSION_NEVER_EXPIRES) {
      this.armExpiry(session, Date.now() + session.expiryInterval * 1000);
    }
  }

  /** Publishes a will (or a will whose delay ran out) through the router. */
  publishWill(will: Will, clientId: string): void {
    this.logger.debug('publishing will', { client_id: clientId, topic: will.topic });
    this.route({
      topic: will.topic,
      payload: will.payload,
      qos: will.qos,
      retain: will.retain,
      properties: will.properties,
      expiresAt: will.messageExpiryInterval > 0 ? Date.now() + will.messageExpiryInterval * 1000 : 0,
      origin: clientId,
    });
  }

  /** Ends a session: its will goes out if still pending, its subscriptions and messages are dropped. */
  endSession(session: Session): void {
    clearSessionTimers(session);
    const will = session.pendingWill;
    session.pendingWill = null;
    if (this.sessions.get(session.clientId) === session) this.sessions.delete(session.clientId);
    for (const subscription of session.subscriptions.values()) {
      this.tree.remove(session.clientId, subscription.filter, subscription.shareGroup);
    }
    session.subscriptions.clear();
    session.clearMessages();
    if (will !== null) this.publishWill(will, session.clientId);
  }

  /** Expires a session whose expiry deadline has passed, re-arming when the timer fired early. */
  expireSession(session: Session, deadline: number): void {
    if (session.sink !== null || this.sessions.get(session.clientId) !== session) return;
    if (Date.now() < deadline) {
      this.armExpiry(session, deadline);
      return;
    }
    this.stats.clientsExpired++;
    this.logger.info('session expired', { client_id: session.clientId });
    this.endSession(session);
  }

  /** Publishes a broker status value on a retained `$SYS` topic. */
  publishSys(topic: string, value: string): void {
    this.route({ topic, payload: Buffer.from(value), qos: 0, retain: true, properties: null, expiresAt: 0, origin: '' });
  }

  private armExpiry(session: Session, deadline: number): void {
    if (session.expiryTimer !== null) clearTimeout(session.expiryTimer);
    const delay = Math.min(Math.max(deadline - Date.now(), 0), MAX_TIMER_MS);
    session.expiryTimer = setTimeout(onExpiryTimer, delay, this, session, deadline);
  }

  private pickSharedMember(group: SharedGroup): Subscription | null {
    const members = group.members;
    if (members.length === 0) return null;
    // Prefer the next member, round-robin, whose client is connected and not congested.
    for (let i = 0; i < members.length; i++) {
      const index = (group.next + i) % members.length;
      const sink = this.sessions.get(members[index].clientId)?.sink;
      if (sink !== null && sink !== undefined && sink.canSend()) {
        group.next = (index + 1) % members.length;
        return members[index];
      }
    }
    // Nobody can take it now: queue it in the next member's session.
    const index = group.next % members.length;
    group.next = (index + 1) % members.length;
    return members[index];
  }

  private onDropped(session: Session, delivery: Delivery, reason: DropReason): void {
    this.stats.publishDropped++;
    if (reason === 'qos0-not-queued') return;
    this.logger.limited('warn', `drop:${session.clientId}:${reason}`, REPEAT_LOG_MS, 'message dropped', {
      client_id: session.clientId,
      reason,
      topic: delivery.message.topic,
      qos: delivery.qos,
    });
  }

  private sessionLimits(): { maxQueuedMessages: number; maxQueuedBytes: number; queueQos0Messages: boolean } {
    return {
      maxQueuedMessages: this.limits.maxQueuedMessages,
      maxQueuedBytes: this.limits.maxQueuedBytes,
      queueQos0Messages: this.limits.queueQos0Messages,
    };
  }

  private async closeListeners(): Promise<void> {
    const closing = this.listeners.map((listener) => listener.close());
    this.listeners.length = 0;
    await Promise.all(closing);
  }
}

/** Gathers the sessions a message goes to, one entry per client however many filters match. */
class DeliveryCollector implements MatchVisitor {
  readonly targets = new Map<string, { qos: QoS; retain: boolean; subscriptionIds: number[] }>();
  readonly groups: SharedGroup[] = [];
  private readonly message: Message;

  constructor(message: Message) {
    this.message = message;
  }

  subscription(subscription: Subscription): void {
    const message = this.message;
    // No Local: not sent back to the client that published it [MQTT-3.8.3-3].
    if (subscription.noLocal && subscription.clientId === message.origin) return;
    const qos = Math.min(message.qos, subscription.qos) as QoS;
    const retain = subscription.retainAsPublished && message.retain;
    const existing = this.targets.get(subscription.clientId);
    if (existing === undefined) {
      const subscriptionIds = subscription.subscriptionId === 0 ? [] : [subscription.subscriptionId];
      this.targets.set(subscription.clientId, { qos, retain, subscriptionIds });
      return;
    }
    // Overlapping subscriptions: one copy at the highest QoS [MQTT-3.3.4-2], with every identifier.
    if (qos > existing.qos) existing.qos = qos;
    if (retain) existing.retain = true;
    if (subscription.subscriptionId !== 0) existing.subscriptionIds.push(subscription.subscriptionId);
  }

  sharedGroup(group: SharedGroup): void {
    this.groups.push(group);
  }
}

function limitsFromConfig(config: OutpostConfig): BrokerLimits {
  const limits = config.limits;
  return {
    maxConnections: limits.max_connections,
    maxPacketSize: limits.max_packet_size,
    maxInflightMessages: limits.max_inflight_messages,
    receiveMaximum: limits.receive_maximum,
    maxQueuedMessages: limits.max_queued_messages,
    maxQueuedBytes: limits.max_queued_bytes,
    queueQos0Messages: limits.queue_qos0_messages,
    maxTopicLevels: limits.max_topic_levels,
    maxKeepalive: limits.max_keepalive,
    connectTimeoutMs: limits.connect_timeout_seconds * 1000,
    drainTimeoutMs: limits.drain_timeout_seconds * 1000,
    topicAliasMaximum: limits.topic_alias_maximum,
    maxSessionExpirySeconds: limits.max_session_expiry_seconds,
  };
}

function clearSessionTimers(session: Session): void {
  if (session.expiryTimer !== null) clearTimeout(session.expiryTimer);
  if (session.willTimer !== null) clearTimeout(session.willTimer);
  session.expiryTimer = null;
  session.willTimer = null;
}

function firePendingWill(broker: Broker, session: Session): void {
  session.willTimer = null;
  const will = session.pendingWill;
  session.pendingWill = null;
  if (will !== null) broker.publishWill(will, session.clientId);
}

function onExpiryTimer(broker: Broker, session: Session, deadline: number): void {
  session.expiryTimer = null;
  broker.expireSession(session, deadline);
}

function ignoreError(): void {}

function protocolName(version: number): string {
  if (version === 5) return 'mqtt5';
  return version === 4 ? 'mqtt3.1.1' : 'mqtt3.1';
}

function hex(code: number): string {
  return `0x${code.toString(16).padStart(2, '0')}`;
}
