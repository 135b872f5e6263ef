import type { AddressInfo } from 'node:net';
import type { QoS } from 'mqtt-packet';
import type { ListenerConfig, OutpostConfig } from '../config/schema.js';
import type { Logger } from '../service/logger.js';
import { ReasonCode } from '../mqtt/reason-codes.js';
import { parseFilter } from '../mqtt/topic.js';
import { SERVER_SHUTTING_DOWN, SESSION_TAKEN_OVER, type CloseReason } from './close-reason.js';
import { Connection } from './connection.js';
import { SESSION_NEVER_EXPIRES } from './handlers/connect.js';
import { InternalClient, type InternalClientOptions, type InternalMessageHandler } from './internal-client.js';
import { Listener } from './listener.js';
import { AccessControl, type AuthOutcome } from '../auth/access-control.js';
import { BufferBudget } from '../transport/buffer-budget.js';
import type { ClientSocket } from '../transport/client-socket.js';
import { certificateIdentity } from '../transport/tls.js';
import type { Message } from './message.js';
import { PublishEncoder } from './publish-encoder.js';
import { RetainedStore } from './retained.js';
import { Session, type Delivery, type DropReason, type SessionEvents, type SessionLimits } from './session.js';
import { BrokerStats } from './stats.js';
import type { Subscription } from './subscription.js';
import { SubscriptionTree, type MatchVisitor, type SharedGroup } from './subscription-tree.js';
import { SysPublisher } from './sys.js';
import type { Will } from './will.js';
import { openDatabase } from '../store/database.js';
import { Store, type DurabilityCallback, type StoredSession } from '../store/store.js';

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
  throttlePublishers: boolean;
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
  readonly retained: RetainedStore;
  /** The SQLite store, or null when persistence is off. */
  store: Store | null = null;
  /**
   * Set during `route` by a synchronous in-process subscriber that rejected the message for lack
   * of space (a bridge outbox with `when_full: reject_new`). The publish handler then sends a v5
   * publisher 0x97 (Quota exceeded). Cleared at the start of every `route`.
   */
  routeRejected = false;
  /**
   * Online sessions whose queue `route` left at its high-water mark, for the publish handler to wait
   * for (see `Connection.waitForQueues`). Cleared at the start of every `route`.
   */
  readonly congestedTargets: Session[] = [];
  /** Reusable collectors for `route`, one per nesting level (an in-process subscriber may publish). */
  private readonly collectors: DeliveryCollector[] = [];
  private routeDepth = 0;
  private readonly sessions = new Map<string, Session>();
  private readonly connections = new Set<Connection>();
  private readonly connectionsPerListener = new Map<ListenerSettings, number>();
  private readonly tree = new SubscriptionTree();
  private readonly listeners: Listener[] = [];
  private readonly sessionEvents: SessionEvents;
  /** Authentication and authorization: password and ACL files, auth plugin, login delay. */
  readonly access: AccessControl;
  private readonly bufferBudget: BufferBudget<Connection>;
  private sys: SysPublisher | null = null;
  private running = false;

  constructor(config: OutpostConfig, logger: Logger) {
    this.config = config;
    this.logger = logger;
    this.limits = limitsFromConfig(config);
    this.retained = new RetainedStore({
      maxMessages: config.limits.max_retained_messages,
      maxBytes: config.limits.max_retained_bytes,
    });
    this.sessionEvents = { dropped: (session, delivery, reason) => this.onDropped(session, delivery, reason) };
    this.access = new AccessControl(config, logger, (topic, value) => {
      if (this.running) this.publishSys(topic, value);
    });
    this.bufferBudget = new BufferBudget<Connection>(config.limits.max_client_buffer_bytes, (connection, total) => this.evictForMemory(connection, total));
  }

  /** Binds every listener; rejects with the first bind error after closing those already bound. */
  async start(): Promise<void> {
    await this.access.start();
    if (this.config.persistence.enabled) this.openStore();
    const transportLimits = { maxPacketSize: this.limits.maxPacketSize, connectTimeoutMs: this.limits.connectTimeoutMs };
    for (const settings of this.config.listeners) {
      let listener: Listener;
      try {
        listener = new Listener(settings, (socket) => this.accept(socket, settings), this.logger, transportLimits);
        await listener.listen();
      } catch (error) {
        await this.closeListeners();
        this.closeStore();
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
    this.access.stop();
    this.bufferBudget.stop();
    const closing = this.closeListeners();
    for (const connection of [...this.connections]) connection.close(SERVER_SHUTTING_DOWN);
    for (const session of this.sessions.values()) clearSessionTimers(session);
    await closing;
    this.closeStore();
    this.logger.info('broker stopped');
  }

  listenerAddresses(): AddressInfo[] {
    return this.listeners.map((listener) => listener.address());
  }

  /** True from the end of `start` until `stop` begins. */
  get isRunning(): boolean {
    return this.running;
  }

  /** Network connections open on a listener, counting those that have not sent CONNECT yet. */
  connectionCount(settings: ListenerSettings): number {
    return this.connectionsPerListener.get(settings) ?? 0;
  }

  /** Creates an in-process client that publishes and subscribes through the router like a network client. */
  createClient(clientId: string, handler: InternalMessageHandler, options: InternalClientOptions = {}): InternalClient {
    const existing = this.sessions.get(clientId);
    if (existing !== undefined) {
      if (existing.sink !== null) throw new Error(`client id ${JSON.stringify(clientId)} is in use; choose another id for the in-process client`);
      this.endSession(existing);
    }
    const session = new Session(clientId, this.sessionLimits(), this.sessionEvents);
    this.sessions.set(clientId, session);
    const client = new InternalClient(this, session, handler, options);
    session.sink = client;
    return client;
  }

  /** Tells whether an in-process client (the field adapter or a bridge) uses `clientId`. */
  isInProcessClientId(clientId: string): boolean {
    const sink = this.sessions.get(clientId)?.sink;
    return sink !== undefined && sink !== null && !(sink instanceof Connection);
  }

  /** False while the store refuses writes (disk or database size bound full). */
  get storeWritable(): boolean {
    return this.store === null || this.store.writable;
  }

  /** Calls back once everything written so far is committed; at once without a store. */
  whenDurable(callback: DurabilityCallback): void {
    if (this.store === null) {
      callback(true);
    } else {
      this.store.whenDurable(callback);
    }
  }

  get subscriptionCount(): number {
    return this.tree.size;
  }

  /** Messages waiting in session queues, stored or in memory. */
  queuedMessageCount(): number {
    let count = 0;
    for (const session of this.sessions.values()) count += session.queuedMessages;
    return count;
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  /**
   * Routes a message to every matching subscription and stores it when retained; returns the
   * number of sessions it was delivered to.
   */
  route(message: Message): number {
    this.routeRejected = false;
    this.congestedTargets.length = 0;
    if (message.retain && !this.retained.set(message)) { // [MQTT-3.3.1-5]
      this.logger.limited('warn', 'retained-full', REPEAT_LOG_MS, 'retained message not stored: retained limit reached', {
        topic: message.topic,
        retained_messages: this.retained.size,
        retained_bytes: this.retained.bytes,
      });
    }
    // One collector per nesting level of route, reused, so routing allocates no Map per message.
    const collector = (this.collectors[this.routeDepth] ??= new DeliveryCollector());
    collector.reset(message);
    this.routeDepth++;
    try {
      return this.deliverCollected(message, collector);
    } finally {
      this.routeDepth--;
      collector.reset(null);
    }
  }

  /** Delivers a message to the sessions `collector` gathered; returns how many got it. */
  private deliverCollected(message: Message, collector: DeliveryCollector): number {
    this.tree.match(message.topic, collector);
    let count = 0;
    const readChecks = this.access.readChecks;
    for (const [clientId, target] of collector.targets) {
      const session = this.sessions.get(clientId);
      if (session === undefined) continue;
      if (readChecks && !this.access.mayRead(session, message.topic)) continue;
      session.deliver({ message, qos: target.qos, retain: target.retain, subscriptionIds: target.subscriptionIds });
      if (target.qos > 0 && session.congested) this.congestedTargets.push(session);
      count++;
    }
    for (const group of collector.groups) {
      const member = this.pickSharedMember(group);
      const session = member === null ? undefined : this.sessions.get(member.clientId);
      if (member === null || session === undefined) continue;
      // NOTE: a group member without read access drops the message for the whole group.
      if (readChecks && !this.access.mayRead(session, message.topic)) continue;
      session.deliver({
        message,
        qos: Math.min(message.qos, member.qos) as QoS,
        retain: member.retainAsPublished && message.retain,
        subscriptionIds: member.subscriptionId === 0 ? [] : [member.subscriptionId],
      });
      if (message.qos > 0 && member.qos > 0 && session.congested) this.congestedTargets.push(session);
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
    session.store?.saveSubscription(subscription);
    return existed;
  }

  unsubscribe(session: Session, rawFilter: string): boolean {
    const subscription = session.subscriptions.get(rawFilter);
    if (subscription === undefined) return false;
    session.subscriptions.delete(rawFilter);
    this.tree.remove(session.clientId, subscription.filter, subscription.shareGroup);
    session.store?.deleteSubscription(session.clientId, rawFilter);
    return true;
  }

  /**
   * Sends the retained messages matching a new subscription, with RETAIN set [MQTT-3.3.1-8] and at
   * the lower of the stored and granted QoS.
   */
  sendRetained(session: Session, subscription: Subscription): void {
    const subscriptionIds = subscription.subscriptionId === 0 ? [] : [subscription.subscriptionId];
    const readChecks = this.access.readChecks;
    let skipped = 0;
    for (const { topic, qos } of this.retained.matchTopics(subscription.filter)) {
      if (readChecks && !this.access.mayRead(session, topic)) continue;
      // A payload the session would drop is not read from the store at all.
      if (!session.hasRoomFor(Math.min(qos, subscription.qos) as QoS)) {
        skipped++;
        continue;
      }
      const message = this.retained.get(topic);
      if (message === null) continue;
      session.deliver({ message, qos: Math.min(message.qos, subscription.qos) as QoS, retain: true, subscriptionIds });
    }
    if (skipped > 0) {
      this.stats.publishDropped += skipped;
      this.logger.limited('warn', `retained-skipped:${session.clientId}`, REPEAT_LOG_MS, 'retained messages dropped: session queue full', {
        client_id: session.clientId,
        filter: subscription.rawFilter,
        dropped: skipped,
      });
    }
    this.encoder.reset();
  }

  /**
   * Checks a client's credentials (password file, client certificate, auth plugin). Returns the
   * outcome at once, or a promise when a hash, the plugin or a failed-login delay is involved.
   */
  authenticate(connection: Connection, clientId: string, username: string | undefined, password: Buffer | undefined): AuthOutcome | Promise<AuthOutcome> {
    return this.access.authenticate(connection, clientId, username, password);
  }

  /** Tells whether a client may publish to a topic: never to `$SYS`, else as the ACL and plugin allow. */
  allowPublish(connection: Connection, topic: string): boolean {
    return this.access.mayPublish(connection, topic);
  }

  allowSubscribe(connection: Connection, filter: string): boolean {
    return this.access.maySubscribe(connection, filter);
  }

  /**
   * Reads the password and ACL files and the TLS certificates and keys again (on SIGHUP). Clients
   * stay connected; new logins and TLS handshakes use the new files. A file with a problem is
   * reported in `failed` and its old contents stay in use.
   */
  reloadSecurity(): { reloaded: string[]; failed: string[] } {
    const result = this.access.reload();
    for (const listener of this.listeners) {
      try {
        if (listener.reloadTls()) result.reloaded.push(`listener ${listener.settings.name}: TLS certificate ${listener.settings.tls.cert_file} and key`);
      } catch (error) {
        result.failed.push(error instanceof Error ? error.message : String(error));
      }
    }
    return result;
  }

  /**
   * Finds or creates the session for a connecting client. An existing connection with the same
   * client id is closed first [MQTT-3.1.4-3]; Clean Start discards an existing session [MQTT-3.1.2-4].
   */
  attachSession(
    clientId: string,
    cleanStart: boolean,
    expiry: number,
    will: Will | null,
    owner: { username: string | undefined; listener: string },
  ): { session: Session; present: boolean } {
    let session = this.sessions.get(clientId);
    if (session !== undefined && session.sink instanceof Connection) {
      session.sink.close(SESSION_TAKEN_OVER);
      session = this.sessions.get(clientId);
    } else if (session !== undefined && session.sink !== null) {
      // The CONNECT handler refuses ids of in-process clients; one created while the client's
      // authentication ran is replaced.
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
    session.ownerUsername = owner.username;
    session.ownerListener = owner.listener;
    if (this.store !== null && expiry > 0) {
      session.store = this.store;
      // The will is stored with the session so that a crash of the broker still sends it.
      this.store.saveSession({ clientId, expiryInterval: expiry, expiresAt: 0, will, willAt: 0, ...ownerOf(session) });
    }
    return { session, present };
  }

  /** Takes a new client stream from a listener, unless a connection limit is reached. */
  accept(socket: ClientSocket, settings: ListenerSettings): void {
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
    const certificate = settings.tls.require_certificate ? certificateIdentity(socket) : null;
    const connection = new Connection(this, socket, settings, certificate);
    this.connections.add(connection);
    this.bufferBudget.add(connection);
  }

  /** Disconnects a client whose buffers are among the largest while the buffer cap is exceeded. */
  private evictForMemory(connection: Connection, total: number): void {
    this.logger.limited('warn', 'buffer-cap', REPEAT_LOG_MS, 'client disconnected: client buffers over limits.max_client_buffer_bytes', {
      client_id: connection.clientId,
      conn: connection.id,
      buffered_bytes: connection.bufferedBytes,
      total_bytes: total,
      limit_bytes: this.config.limits.max_client_buffer_bytes,
    });
    connection.close({ code: ReasonCode.ServerBusy, message: 'client buffers over limits.max_client_buffer_bytes', sendDisconnect: true, publishWill: true });
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
    if (session.expiryInterval === 0) {
      if (will !== null) this.publishWill(will, session.clientId);
      this.endSession(session);
      return;
    }
    const publishNow = will !== null && will.delaySeconds === 0;
    if (publishNow) this.publishWill(will, session.clientId);
    const delayedWill = publishNow ? null : will;
    this.saveDisconnectedSession(session, delayedWill);
    // While stopping, no timers are armed: the store keeps the deadlines for the next start.
    if (!this.running) return;
    if (delayedWill !== null) {
      // The will goes out when its delay or the session ends, whichever comes first [MQTT-3.1.3-9].
      session.pendingWill = delayedWill;
      const delayMs = Math.min(delayedWill.delaySeconds, session.expiryInterval) * 1000;
      session.willTimer = setTimeout(firePendingWill, Math.min(delayMs, MAX_TIMER_MS), this, session);
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
    session.store?.deleteSession(session.clientId);
    session.store = null;
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

  /** Records when a stored session expires and when its will is due, after its client left. */
  private saveDisconnectedSession(session: Session, will: Will | null): void {
    const store = session.store;
    if (store === null || session.expiryInterval === 0) return;
    const now = Date.now();
    const never = session.expiryInterval === SESSION_NEVER_EXPIRES;
    store.saveSession({
      clientId: session.clientId,
      expiryInterval: session.expiryInterval,
      expiresAt: never ? 0 : now + session.expiryInterval * 1000,
      will,
      willAt: will !== null ? now + Math.min(will.delaySeconds, session.expiryInterval) * 1000 : 0,
      ...ownerOf(session),
    });
  }

  /** Forgets the stored will of a session once it was published. */
  willPublished(session: Session): void {
    const store = session.store;
    if (store === null) return;
    const never = session.expiryInterval === SESSION_NEVER_EXPIRES;
    const expiresAt = session.sink !== null || never ? 0 : Date.now() + session.expiryInterval * 1000;
    store.saveSession({
      clientId: session.clientId,
      expiryInterval: session.expiryInterval,
      expiresAt,
      will: null,
      willAt: 0,
      ...ownerOf(session),
    });
  }

  private openStore(): void {
    const persistence = this.config.persistence;
    const db = openDatabase(
      {
        dataDir: this.config.data_dir,
        synchronous: persistence.synchronous,
      },
      this.logger,
    );
    const store = new Store(db, { batchWindowMs: persistence.batch_window_ms, maxDatabaseBytes: persistence.max_database_bytes }, this.logger);
    this.store = store;
    this.retained.attach(store, store.iterateRetainedIndex());
    this.restoreSessions(store);
    this.logger.info('state database opened', {
      path: db.name,
      sessions: this.sessions.size,
      subscriptions: this.tree.size,
      retained: this.retained.size,
    });
  }

  private closeStore(): void {
    if (this.store === null) return;
    try {
      this.store.close();
    } catch (error) {
      this.logger.error('closing the state database failed', { error: error instanceof Error ? error.message : String(error) });
    }
    this.store = null;
  }

  /**
   * Rebuilds the stored sessions and their subscriptions without reading queued payloads, then
   * schedules session expiry and wills. A session whose client was connected when the broker
   * stopped counts as disconnected now.
   */
  private restoreSessions(store: Store): void {
    const queueTotals = store.queueTotals();
    const inflightSeq = store.inflightMaxSeq();
    const incoming = new Map<string, number[]>();
    for (const row of store.loadIncoming()) {
      const ids = incoming.get(row.clientId) ?? [];
      ids.push(row.packetId);
      incoming.set(row.clientId, ids);
    }
    const stored: StoredSession[] = store.loadSessions();
    for (const row of stored) {
      const session = new Session(row.clientId, this.sessionLimits(), this.sessionEvents);
      session.expiryInterval = row.expiryInterval;
      session.store = store;
      session.ownerUsername = row.username;
      session.ownerListener = row.listener;
      this.access.bindStoredSession(session, row.clientId, row.username, row.listener);
      session.restore(queueTotals.get(row.clientId), inflightSeq.get(row.clientId) ?? 0, incoming.get(row.clientId) ?? []);
      this.sessions.set(row.clientId, session);
    }
    for (const row of store.loadSubscriptions()) {
      const session = this.sessions.get(row.clientId);
      const parsed = parseFilter(row.rawFilter, this.limits.maxTopicLevels);
      if (session === undefined || typeof parsed === 'string') {
        store.deleteSubscription(row.clientId, row.rawFilter);
        continue;
      }
      const subscription: Subscription = { ...row, filter: parsed.filter, shareGroup: parsed.shareGroup };
      session.subscriptions.set(subscription.rawFilter, subscription);
      this.tree.add(subscription);
    }
    const now = Date.now();
    for (const row of stored) {
      const session = this.sessions.get(row.clientId);
      if (session === undefined) continue;
      const wasConnected = row.expiresAt === 0;
      if (row.will !== null) {
        const due = row.willAt !== 0 ? row.willAt : now + Math.min(row.will.delaySeconds, session.expiryInterval) * 1000;
        session.pendingWill = row.will;
        session.willTimer = setTimeout(firePendingWill, Math.min(Math.max(due - now, 0), MAX_TIMER_MS), this, session);
      }
      if (session.expiryInterval === SESSION_NEVER_EXPIRES) continue;
      const deadline = wasConnected ? now + session.expiryInterval * 1000 : row.expiresAt;
      this.armExpiry(session, deadline);
    }
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
    // No member can take it now, so it waits in the next member's session queue.
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

  private sessionLimits(): SessionLimits {
    return {
      maxQueuedMessages: this.limits.maxQueuedMessages,
      maxQueuedBytes: this.limits.maxQueuedBytes,
      queueQos0Messages: this.limits.queueQos0Messages,
      throttlePublishers: this.limits.throttlePublishers,
    };
  }

  private async closeListeners(): Promise<void> {
    const closing = this.listeners.map((listener) => listener.close());
    this.listeners.length = 0;
    await Promise.all(closing);
  }
}

/** Shared by every delivery without subscription identifiers; never modified. */
const NO_SUBSCRIPTION_IDS: readonly number[] = Object.freeze([]);

/** Gathers the sessions a message goes to, one entry per client however many filters match. */
class DeliveryCollector implements MatchVisitor {
  readonly targets = new Map<string, { qos: QoS; retain: boolean; subscriptionIds: readonly number[] }>();
  readonly groups: SharedGroup[] = [];
  private message: Message | null = null;

  /** Prepares for the next message, or drops the references to the last one (null). */
  reset(message: Message | null): void {
    this.message = message;
    this.targets.clear();
    this.groups.length = 0;
  }

  subscription(subscription: Subscription): void {
    const message = this.message;
    if (message === null) return;
    // No Local: not sent back to the client that published it [MQTT-3.8.3-3].
    if (subscription.noLocal && subscription.clientId === message.origin) return;
    const qos = Math.min(message.qos, subscription.qos) as QoS;
    const retain = subscription.retainAsPublished && message.retain;
    const id = subscription.subscriptionId;
    const existing = this.targets.get(subscription.clientId);
    if (existing === undefined) {
      this.targets.set(subscription.clientId, { qos, retain, subscriptionIds: id === 0 ? NO_SUBSCRIPTION_IDS : [id] });
      return;
    }
    // Overlapping subscriptions: one copy at the highest QoS [MQTT-3.3.4-2], with every identifier.
    if (qos > existing.qos) existing.qos = qos;
    if (retain) existing.retain = true;
    if (id !== 0) existing.subscriptionIds = [...existing.subscriptionIds, id];
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
    throttlePublishers: limits.throttle_publishers,
    maxTopicLevels: limits.max_topic_levels,
    maxKeepalive: limits.max_keepalive,
    connectTimeoutMs: limits.connect_timeout_seconds * 1000,
    drainTimeoutMs: limits.drain_timeout_seconds * 1000,
    topicAliasMaximum: limits.topic_alias_maximum,
    maxSessionExpirySeconds: limits.max_session_expiry_seconds,
  };
}

function ownerOf(session: Session): { username: string | undefined; listener: string } {
  return { username: session.ownerUsername, listener: session.ownerListener };
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
  if (will === null) return;
  broker.publishWill(will, session.clientId);
  broker.willPublished(session);
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
