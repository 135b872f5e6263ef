import type { QoS } from 'mqtt-packet';
import { isExpired, type Message } from './message.js';
import type { Subscription } from './subscription.js';
import type { Will } from './will.js';

/**
 * Where a session's outgoing messages go while a client is attached: a network connection or an
 * in-process client.
 */
export interface SessionSink {
  /** Maximum number of outgoing QoS 1 and 2 messages awaiting acknowledgement. */
  readonly sendQuota: number;
  /** True for in-process clients, which take every message at once and need no acknowledgement. */
  readonly acknowledgesImmediately: boolean;
  /** False while the transport cannot take more without buffering. */
  canSend(): boolean;
  /** Sends a PUBLISH; returns false when the message was dropped because the client cannot take it. */
  sendPublish(delivery: Delivery, packetId: number, dup: boolean): boolean;
  sendPubrel(packetId: number): void;
}

/** One message on its way to one session, with the options of the subscriptions that matched. */
export interface Delivery {
  readonly message: Message;
  readonly qos: QoS;
  /** The RETAIN flag sent to this subscriber. */
  readonly retain: boolean;
  readonly subscriptionIds: readonly number[];
}

/** An outgoing QoS 1 or 2 message that the client has not acknowledged yet. */
interface InflightEntry {
  readonly delivery: Delivery;
  /** True once PUBREC arrived and PUBREL was sent (QoS 2 only). */
  released: boolean;
}

export interface SessionLimits {
  maxQueuedMessages: number;
  maxQueuedBytes: number;
  queueQos0Messages: boolean;
}

export type DropReason = 'queue-full' | 'expired' | 'too-large' | 'qos0-not-queued';

export interface SessionEvents {
  dropped(session: Session, delivery: Delivery, reason: DropReason): void;
}

/**
 * The state of one client id that can outlive its connection: subscriptions, messages waiting to
 * be sent, outgoing messages awaiting acknowledgement and incoming QoS 2 ids awaiting PUBREL.
 */
export class Session {
  readonly clientId: string;
  /** Subscriptions by filter as the client sent it. */
  readonly subscriptions = new Map<string, Subscription>();
  sink: SessionSink | null = null;
  /** Session Expiry Interval in seconds; 0 ends the session with its connection, 0xFFFFFFFF never. */
  expiryInterval = 0;
  expiryTimer: NodeJS.Timeout | null = null;
  /** Incoming QoS 2 packet ids whose PUBREC was sent and whose PUBREL has not arrived. */
  readonly awaitingRelease = new Set<number>();
  /** A will whose delay is running after its connection closed. */
  pendingWill: Will | null = null;
  willTimer: NodeJS.Timeout | null = null;

  private readonly inflight = new Map<number, InflightEntry>();
  private readonly queue: Delivery[] = [];
  private queuedBytes = 0;
  private nextPacketId = 1;
  private readonly limits: SessionLimits;
  private readonly events: SessionEvents;

  constructor(clientId: string, limits: SessionLimits, events: SessionEvents) {
    this.clientId = clientId;
    this.limits = limits;
    this.events = events;
  }

  get inflightCount(): number {
    return this.inflight.size;
  }

  get queuedCount(): number {
    return this.queue.length;
  }

  /** Sends a message now when the client can take it, or queues it within the session's limits. */
  deliver(delivery: Delivery): void {
    const sink = this.sink;
    if (sink !== null && sink.acknowledgesImmediately) {
      sink.sendPublish(delivery, 0, false);
      return;
    }
    if (sink !== null && sink.canSend()) {
      // QoS 0 does not wait behind queued QoS 1 and 2 messages: ordering holds per QoS level.
      if (delivery.qos === 0) {
        if (!sink.sendPublish(delivery, 0, false)) this.events.dropped(this, delivery, 'too-large');
        return;
      }
      if (this.queue.length === 0 && this.inflight.size < sink.sendQuota) {
        this.sendNew(sink, delivery);
        return;
      }
    }
    this.enqueue(delivery);
  }

  /** Sends queued messages while the client has room for them. */
  pump(): void {
    const sink = this.sink;
    if (sink === null) return;
    const now = Date.now();
    while (this.queue.length > 0 && sink.canSend()) {
      const head = this.queue[0];
      if (head.qos > 0 && this.inflight.size >= sink.sendQuota) return;
      this.queue.shift();
      this.queuedBytes -= head.message.payload.length;
      if (isExpired(head.message, now)) {
        this.events.dropped(this, head, 'expired');
        continue;
      }
      if (head.qos === 0) {
        if (!sink.sendPublish(head, 0, false)) this.events.dropped(this, head, 'too-large');
      } else {
        this.sendNew(sink, head);
      }
    }
  }

  /**
   * Attaches a client and sends again what it has not acknowledged, with DUP set on PUBLISH
   * [MQTT-4.4.0-1], PUBREL where PUBREC had arrived, and then the queue.
   */
  resume(sink: SessionSink): void {
    this.sink = sink;
    for (const [packetId, entry] of this.inflight) {
      if (entry.released) {
        sink.sendPubrel(packetId);
      } else if (!sink.sendPublish(entry.delivery, packetId, true)) {
        this.inflight.delete(packetId);
        this.events.dropped(this, entry.delivery, 'too-large');
      }
    }
    this.pump();
  }

  detach(): void {
    this.sink = null;
  }

  /** Handles PUBACK; returns false when no QoS 1 message had this packet id. */
  acknowledge(packetId: number): boolean {
    const entry = this.inflight.get(packetId);
    if (entry === undefined || entry.delivery.qos !== 1) return false;
    this.inflight.delete(packetId);
    this.pump();
    return true;
  }

  /**
   * Handles PUBREC; returns false when no QoS 2 message had this packet id. A reason code of 0x80
   * or above ends the exchange without PUBREL (MQTT 5.0 section 4.3.3).
   */
  received(packetId: number, reasonCode: number): boolean {
    const entry = this.inflight.get(packetId);
    if (entry === undefined || entry.delivery.qos !== 2) return false;
    if (reasonCode >= 0x80) {
      this.inflight.delete(packetId);
      this.pump();
      return true;
    }
    entry.released = true;
    return true;
  }

  /** Handles PUBCOMP; returns false when no released QoS 2 message had this packet id. */
  complete(packetId: number): boolean {
    const entry = this.inflight.get(packetId);
    if (entry === undefined || !entry.released) return false;
    this.inflight.delete(packetId);
    this.pump();
    return true;
  }

  /** Drops every queued and unacknowledged message, as a clean start or the session's end does. */
  clearMessages(): void {
    this.inflight.clear();
    this.queue.length = 0;
    this.queuedBytes = 0;
    this.awaitingRelease.clear();
  }

  private sendNew(sink: SessionSink, delivery: Delivery): void {
    const packetId = this.allocatePacketId();
    if (sink.sendPublish(delivery, packetId, false)) {
      this.inflight.set(packetId, { delivery, released: false });
    } else {
      this.events.dropped(this, delivery, 'too-large');
    }
  }

  private enqueue(delivery: Delivery): void {
    if (delivery.qos === 0 && (this.sink !== null || !this.limits.queueQos0Messages)) {
      // QoS 0 waits only for an offline session, and only when queueing QoS 0 is on.
      this.events.dropped(this, delivery, 'qos0-not-queued');
      return;
    }
    const size = delivery.message.payload.length;
    if (
      this.queue.length >= this.limits.maxQueuedMessages ||
      (this.limits.maxQueuedBytes > 0 && this.queuedBytes + size > this.limits.maxQueuedBytes)
    ) {
      this.events.dropped(this, delivery, 'queue-full');
      return;
    }
    this.queue.push(delivery);
    this.queuedBytes += size;
  }

  private allocatePacketId(): number {
    // The caller checks the quota first, so fewer than 65535 ids are in use and the loop ends.
    let id = this.nextPacketId;
    while (this.inflight.has(id)) id = id === 0xffff ? 1 : id + 1;
    this.nextPacketId = id === 0xffff ? 1 : id + 1;
    return id;
  }
}
