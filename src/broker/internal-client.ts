import type { QoS } from 'mqtt-packet';
import { checkTopicName, parseFilter } from '../mqtt/topic.js';
import type { Broker } from './broker.js';
import type { ForwardedProperties, Message } from './message.js';
import type { Delivery, Session, SessionSink } from './session.js';

/** A message as handed to an in-process client. */
export interface InternalMessage {
  topic: string;
  payload: Buffer;
  qos: QoS;
  retain: boolean;
  properties: ForwardedProperties | null;
  /** Absolute Message Expiry time in milliseconds since the epoch, 0 when it never expires. */
  expiresAt: number;
}

export type InternalMessageHandler = (message: InternalMessage) => void;

export interface InternalClientOptions {
  /**
   * Call the handler synchronously inside `Broker.route` instead of in a microtask. Store writes
   * the handler queues then join the batch whose commit releases the publisher's PUBACK. The
   * handler must not publish or subscribe from inside the call (the bridge outbox only writes).
   */
  synchronous?: boolean;
}

export interface InternalPublishOptions {
  qos?: QoS;
  retain?: boolean;
  properties?: ForwardedProperties;
  /** Message Expiry Interval in seconds. */
  messageExpiryInterval?: number;
}

export interface InternalSubscribeOptions {
  qos?: QoS;
  noLocal?: boolean;
  /** Keep the publisher's RETAIN flag on delivered messages (the bridge forwards it). */
  retainAsPublished?: boolean;
}

/** Rejected use of the in-process client API, such as an invalid topic. */
export class InternalClientError extends Error {
  readonly code = 'ERR_INTERNAL_CLIENT';
}

/**
 * An in-process client of the router (for the field adapter and the bridge). It publishes and
 * subscribes through the same routing and retained-message paths as network clients, without a
 * socket. Messages reach its handler in order, each in its own microtask, so a handler that
 * publishes never re-enters the routing of the message it is handling.
 */
export class InternalClient implements SessionSink {
  readonly sendQuota = Number.POSITIVE_INFINITY;
  readonly acknowledgesImmediately = true;
  private readonly broker: Broker;
  private readonly session: Session;
  private readonly handler: InternalMessageHandler;
  private readonly pending: InternalMessage[] = [];
  private readonly synchronous: boolean;
  private flushScheduled = false;
  private closed = false;

  constructor(broker: Broker, session: Session, handler: InternalMessageHandler, options: InternalClientOptions = {}) {
    this.broker = broker;
    this.session = session;
    this.handler = handler;
    this.synchronous = options.synchronous ?? false;
  }

  get clientId(): string {
    return this.session.clientId;
  }

  canSend(): boolean {
    return !this.closed;
  }

  sendPublish(delivery: Delivery): boolean {
    if (this.closed) return false;
    const message = delivery.message;
    const internalMessage: InternalMessage = {
      topic: message.topic,
      payload: message.payload,
      qos: delivery.qos,
      retain: delivery.retain,
      properties: message.properties,
      expiresAt: message.expiresAt,
    };
    if (this.synchronous) {
      this.callHandler(internalMessage);
      return true;
    }
    this.pending.push(internalMessage);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(() => this.flush());
    }
    return true;
  }

  sendPubrel(): void {
    // In-process clients acknowledge on receipt; nothing is ever awaiting PUBREL.
  }

  /**
   * Routes a message. QoS 1 and 2 resolve once the message is committed to the store, and reject
   * with InternalClientError when it cannot be stored; QoS 0 resolves once routed.
   */
  async publish(topic: string, payload: Buffer | string, options: InternalPublishOptions = {}): Promise<void> {
    this.assertOpen();
    const problem = checkTopicName(topic, this.broker.limits.maxTopicLevels);
    if (problem !== null) throw new InternalClientError(`invalid topic ${JSON.stringify(topic)} (${problem})`);
    const expiry = options.messageExpiryInterval ?? 0;
    const message: Message = {
      topic,
      payload: typeof payload === 'string' ? Buffer.from(payload) : payload,
      qos: options.qos ?? 0,
      retain: options.retain ?? false,
      properties: options.properties ?? null,
      expiresAt: expiry > 0 ? Date.now() + expiry * 1000 : 0,
      origin: this.session.clientId,
    };
    if (message.qos > 0 && !this.broker.storeWritable) {
      throw new InternalClientError(`message on ${JSON.stringify(topic)} not stored: the state database is full`);
    }
    this.broker.stats.publishReceived++;
    this.broker.route(message);
    if (message.qos === 0) return;
    // Like PUBACK for a network client, a QoS 1 or 2 publish resolves once it is stored.
    await new Promise<void>((resolve, reject) => {
      this.broker.whenDurable((ok) => {
        if (ok) {
          resolve();
        } else {
          reject(new InternalClientError(`message on ${JSON.stringify(topic)} not stored: commit failed`));
        }
      });
    });
  }

  async subscribe(filter: string, options: InternalSubscribeOptions = {}): Promise<void> {
    this.assertOpen();
    const parsed = parseFilter(filter, this.broker.limits.maxTopicLevels);
    if (typeof parsed === 'string') throw new InternalClientError(`invalid topic filter ${JSON.stringify(filter)} (${parsed})`);
    const subscription = {
      clientId: this.session.clientId,
      rawFilter: filter,
      filter: parsed.filter,
      shareGroup: parsed.shareGroup,
      qos: options.qos ?? 0,
      noLocal: options.noLocal ?? false,
      retainAsPublished: options.retainAsPublished ?? false,
      retainHandling: 0,
      subscriptionId: 0,
    };
    this.broker.subscribe(this.session, subscription);
    if (parsed.shareGroup === null) this.broker.sendRetained(this.session, subscription);
  }

  async unsubscribe(filter: string): Promise<void> {
    this.assertOpen();
    this.broker.unsubscribe(this.session, filter);
  }

  /** Removes the client's subscriptions and session; later calls are rejected. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.session.detach();
    this.broker.endSession(this.session);
  }

  private flush(): void {
    this.flushScheduled = false;
    const batch = this.pending.splice(0, this.pending.length);
    for (const message of batch) this.callHandler(message);
  }

  private callHandler(message: InternalMessage): void {
    try {
      this.handler(message);
    } catch (error) {
      this.broker.logger.limited('error', `internal-handler:${this.clientId}`, 10_000, 'in-process client handler failed', {
        client_id: this.clientId,
        topic: message.topic,
        error: error instanceof Error ? error.message : String(error),
      });
    }
  }

  private assertOpen(): void {
    if (this.closed) throw new InternalClientError(`in-process client ${JSON.stringify(this.clientId)} is closed`);
  }
}
