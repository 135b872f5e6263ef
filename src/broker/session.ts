import type { QoS } from 'mqtt-packet';
import { isExpired, type Message } from './message.js';
import type { Subscription } from './subscription.js';
import type { Will } from './will.js';
import type { QueueTotals, Store } from '../store/store.js';

/**
 * Destination of a session's outgoing messages while a client is attached: a network connection
 * or an in-process client.
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

/** A queued delivery with its place in the session's order. */
interface QueuedDelivery {
  readonly seq: number;
  readonly delivery: Delivery;
}

/** An outgoing QoS 1 or 2 message that the client has not acknowledged yet. */
interface InflightEntry {
  readonly delivery: Delivery;
  readonly seq: number;
  /** True once PUBREC arrived and PUBREL was sent (QoS 2 only). */
  released: boolean;
}

export interface SessionLimits {
  maxQueuedMessages: number;
  maxQueuedBytes: number;
  queueQos0Messages: boolean;
  /** Pause QoS 1 and 2 publishers while this session's queue is at its high-water mark. */
  throttlePublishers: boolean;
}

/** A publisher that stopped reading until a session's queue has room again. */
export interface QueueWaiter {
  onQueueRoom(session: Session): void;
}

/**
 * Time without an acknowledgement from its client after which a session with a long queue no
 * longer pauses publishers: a client that has stopped reading gets its messages dropped at
 * the queue bound, rather than slowing every publisher down.
 */
export const STALL_MS = 1000;

export type DropReason = 'queue-full' | 'expired' | 'too-large' | 'qos0-not-queued';

export interface SessionEvents {
  dropped(session: Session, delivery: Delivery, reason: DropReason): void;
}

/**
 * Number of queued messages of a stored session kept in memory while its client is connected.
 * The rest stay in the store and are read in batches of this size as the queue drains.
 */
const MEMORY_QUEUE_WINDOW = 100;

/**
 * The state of one client id that can outlive its connection: subscriptions, messages waiting to
 * be sent, outgoing messages awaiting acknowledgement and incoming QoS 2 ids awaiting PUBREL.
 *
 * A session with a store writes every queued and in-flight message to it. It keeps only a window
 * of them in memory while its client is connected, and none while it is offline, so memory does
 * not grow with the stored backlog.
 */
export class Session {
  readonly clientId: string;
  /** Subscriptions by filter as the client sent it. */
  readonly subscriptions = new Map<string, Subscription>();
  sink: SessionSink | null = null;
  /** Session Expiry Interval in seconds; 0 ends the session with its connection, 0xFFFFFFFF never. */
  expiryInterval = 0;
  expiryTimer: NodeJS.Timeout | null = null;
  /** A will whose delay is running after its connection closed. */
  pendingWill: Will | null = null;
  willTimer: NodeJS.Timeout | null = null;
  /** The store that keeps this session across restarts, or null for a session held in memory only. */
  store: Store | null = null;
  /** User name and listener name of the client that last held the session, kept with it in the store. */
  ownerUsername: string | undefined = undefined;
  ownerListener = '';

  /** Incoming QoS 2 packet ids whose PUBREC was sent and whose PUBREL has not arrived. */
  private awaitingRelease: Set<number> | null = null;
  private readonly inflight = new Map<number, InflightEntry>();
  /** True while `inflight` contains every in-flight message; false after a stored session went offline. */
  private inflightLoaded = true;
  private memoryQueue: QueuedDelivery[] = [];
  /** Queued messages that are in the store but not in `memoryQueue`; they come after it in order. */
  private storedOnly = 0;
  private queuedCount = 0;
  private queuedBytes = 0;
  private nextSeq = 1;
  private nextPacketId = 1;
  /** Publishers waiting for this queue to shrink, or null when none is. */
  private waiters: Set<QueueWaiter> | null = null;
  /**
   * Date.now() of the last acknowledgement from the client, or of the send that started its
   * in-flight window when that came later: the time the client was last seen keeping up.
   */
  private progressAt = 0;
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

  get queuedMessages(): number {
    return this.queuedCount;
  }

  /** Restores the counters of a stored session after a restart, without reading its messages. */
  restore(totals: QueueTotals | undefined, maxInflightSeq: number, incoming: readonly number[]): void {
    this.queuedCount = totals?.count ?? 0;
    this.queuedBytes = totals?.bytes ?? 0;
    this.storedOnly = this.queuedCount;
    this.nextSeq = Math.max(totals?.maxSeq ?? 0, maxInflightSeq) + 1;
    this.inflightLoaded = false;
    if (incoming.length > 0) this.awaitingRelease = new Set(incoming);
  }

  /** Sends a message now when the client can take it, or queues it within the session's limits. */
  deliver(delivery: Delivery): void {
    const sink = this.sink;
    if (sink !== null && sink.acknowledgesImmediately) {
      sink.sendPublish(delivery, 0, false);
      return;
    }
    if (sink !== null && sink.canSend()) {
      // QoS 0 does not wait behind queued QoS 1 and 2 messages, because ordering is kept per QoS level.
      if (delivery.qos === 0) {
        if (!sink.sendPublish(delivery, 0, false)) this.events.dropped(this, delivery, 'too-large');
        return;
      }
      if (this.queuedCount === 0 && this.inflight.size < sink.sendQuota) {
        this.sendNew(sink, delivery, this.nextSeq++);
        return;
      }
    }
    this.enqueue(delivery);
  }

  /**
   * Tells whether `deliver` would send or queue a message of this QoS rather than drop it, not
   * counting the queue's byte limit.
   */
  hasRoomFor(qos: QoS): boolean {
    const sink = this.sink;
    if (sink !== null && sink.acknowledgesImmediately) return true;
    if (sink !== null && sink.canSend() && (qos === 0 || (this.queuedCount === 0 && this.inflight.size < sink.sendQuota))) {
      return true;
    }
    if (qos === 0 && (sink !== null || !this.limits.queueQos0Messages)) return false;
    return this.queuedCount < this.limits.maxQueuedMessages;
  }

  /**
   * Tells whether publishers should wait for this session: its client is online and still
   * acknowledging, and its queue is at its high-water mark (see `queueAbove`).
   */
  get congested(): boolean {
    if (this.sink === null || !this.limits.throttlePublishers || !this.queueAbove(1)) return false;
    return Date.now() - this.progressAt < STALL_MS;
  }

  /** Registers a publisher to be notified when the queue is down to its low-water mark. */
  addWaiter(waiter: QueueWaiter): void {
    this.waiters ??= new Set();
    this.waiters.add(waiter);
  }

  removeWaiter(waiter: QueueWaiter): void {
    this.waiters?.delete(waiter);
  }

  /**
   * Tells whether the queue is at `share` of its high-water mark or above. The mark is half of
   * `max_queued_messages`, at most MEMORY_QUEUE_WINDOW messages so that a stored session's queue
   * stays in memory, or half of `max_queued_bytes`.
   */
  private queueAbove(share: number): boolean {
    const { maxQueuedMessages, maxQueuedBytes } = this.limits;
    const messages = Math.min(maxQueuedMessages / 2, MEMORY_QUEUE_WINDOW) * share;
    if (maxQueuedMessages > 0 && this.queuedCount >= messages) return true;
    return maxQueuedBytes > 0 && this.queuedBytes >= (maxQueuedBytes / 2) * share;
  }

  private releaseWaiters(): void {
    const waiters = this.waiters;
    if (waiters === null) return;
    this.waiters = null;
    for (const waiter of waiters) waiter.onQueueRoom(this);
  }

  /** Sends queued messages while the client has room for them. */
  pump(): void {
    const sink = this.sink;
    if (sink === null) return;
    this.sendQueued(sink);
    // Waiting publishers resume at three quarters of the high-water mark rather than at the mark,
    // so that they do not pause and resume on every message.
    if (this.waiters !== null && !this.queueAbove(0.75)) this.releaseWaiters();
  }

  private sendQueued(sink: SessionSink): void {
    const now = Date.now();
    while (this.queuedCount > 0 && sink.canSend()) {
      if (this.memoryQueue.length === 0 && !this.refillMemoryQueue()) return;
      const head = this.memoryQueue[0];
      if (head.delivery.qos > 0 && this.inflight.size >= sink.sendQuota) return;
      this.memoryQueue.shift();
      this.queuedCount--;
      this.queuedBytes -= head.delivery.message.payload.length;
      this.store?.deleteQueued(this.clientId, head.seq);
      if (isExpired(head.delivery.message, now)) {
        this.events.dropped(this, head.delivery, 'expired');
        continue;
      }
      if (head.delivery.qos === 0) {
        if (!sink.sendPublish(head.delivery, 0, false)) this.events.dropped(this, head.delivery, 'too-large');
      } else {
        this.sendNew(sink, head.delivery, head.seq);
      }
    }
  }

  /**
   * Attaches a client and sends again what it has not acknowledged, with DUP set on PUBLISH
   * [MQTT-4.4.0-1], PUBREL where PUBREC had arrived, and then the queue.
   */
  resume(sink: SessionSink): void {
    this.sink = sink;
    if (!this.inflightLoaded && this.store !== null) {
      for (const stored of this.store.loadInflight(this.clientId)) {
        this.inflight.set(stored.packetId, { delivery: stored.delivery, seq: stored.seq, released: stored.released });
      }
    }
    this.inflightLoaded = true;
    for (const [packetId, entry] of this.inflight) {
      if (entry.released) {
        sink.sendPubrel(packetId);
      } else if (!sink.sendPublish(entry.delivery, packetId, true)) {
        this.inflight.delete(packetId);
        this.store?.deleteInflight(this.clientId, packetId);
        this.events.dropped(this, entry.delivery, 'too-large');
      }
    }
    this.pump();
  }

  /** Detaches the client; a stored session also drops its messages from memory. */
  detach(): void {
    this.sink = null;
    this.releaseWaiters();
    if (this.store === null) return;
    this.storedOnly += this.memoryQueue.length;
    this.memoryQueue = [];
    this.inflight.clear();
    this.inflightLoaded = false;
  }

  /** Handles PUBACK; returns false when no QoS 1 message had this packet id. */
  acknowledge(packetId: number): boolean {
    const entry = this.inflight.get(packetId);
    if (entry === undefined || entry.delivery.qos !== 1) return false;
    this.finish(packetId);
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
      this.finish(packetId);
      return true;
    }
    if (!entry.released) {
      entry.released = true;
      this.store?.markReleased(this.clientId, packetId);
    }
    return true;
  }

  /** Handles PUBCOMP; returns false when no released QoS 2 message had this packet id. */
  complete(packetId: number): boolean {
    const entry = this.inflight.get(packetId);
    if (entry === undefined || !entry.released) return false;
    this.finish(packetId);
    return true;
  }

  hasIncoming(packetId: number): boolean {
    return this.awaitingRelease?.has(packetId) ?? false;
  }

  get incomingCount(): number {
    return this.awaitingRelease?.size ?? 0;
  }

  /** Records an incoming QoS 2 packet id whose PUBREC is being sent. */
  addIncoming(packetId: number): void {
    this.awaitingRelease ??= new Set();
    this.awaitingRelease.add(packetId);
    this.store?.saveIncoming(this.clientId, packetId);
  }

  /** Handles PUBREL; returns false when the packet id was not awaiting release. */
  releaseIncoming(packetId: number): boolean {
    if (this.awaitingRelease?.delete(packetId) !== true) return false;
    this.store?.deleteIncoming(this.clientId, packetId);
    return true;
  }

  /** Drops every queued and unacknowledged message, as a clean start or the session's end does. */
  clearMessages(): void {
    this.inflight.clear();
    this.memoryQueue = [];
    this.storedOnly = 0;
    this.queuedCount = 0;
    this.queuedBytes = 0;
    this.awaitingRelease = null;
    this.store?.deleteSessionMessages(this.clientId);
    this.releaseWaiters();
  }

  private finish(packetId: number): void {
    this.progressAt = Date.now();
    this.inflight.delete(packetId);
    this.store?.deleteInflight(this.clientId, packetId);
    this.pump();
  }

  private sendNew(sink: SessionSink, delivery: Delivery, seq: number): void {
    const packetId = this.allocatePacketId();
    if (this.inflight.size === 0) this.progressAt = Date.now();
    if (sink.sendPublish(delivery, packetId, false)) {
      this.inflight.set(packetId, { delivery, seq, released: false });
      this.store?.saveInflight(this.clientId, packetId, seq, delivery);
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
      this.queuedCount >= this.limits.maxQueuedMessages ||
      (this.limits.maxQueuedBytes > 0 && this.queuedBytes + size > this.limits.maxQueuedBytes)
    ) {
      this.events.dropped(this, delivery, 'queue-full');
      return;
    }
    const seq = this.nextSeq++;
    const store = this.store;
    if (store !== null) store.saveQueued(this.clientId, seq, delivery);
    const inMemory = store === null || (this.sink !== null && this.storedOnly === 0 && this.memoryQueue.length < MEMORY_QUEUE_WINDOW);
    if (inMemory) {
      this.memoryQueue.push({ seq, delivery });
    } else {
      this.storedOnly++;
    }
    this.queuedCount++;
    this.queuedBytes += size;
  }

  /** Reads the next batch of stored messages into memory; returns false when none could be read. */
  private refillMemoryQueue(): boolean {
    if (this.store === null || this.storedOnly === 0) {
      this.queuedCount = this.memoryQueue.length;
      return false;
    }
    const batch = this.store.loadQueued(this.clientId, MEMORY_QUEUE_WINDOW);
    if (batch.length === 0) {
      // The store lost rows (a failed commit): count only what memory still holds.
      this.storedOnly = 0;
      this.queuedCount = 0;
      this.queuedBytes = 0;
      return false;
    }
    this.memoryQueue = batch;
    this.storedOnly = Math.max(0, this.storedOnly - batch.length);
    return true;
  }

  private allocatePacketId(): number {
    // The caller checks the quota first, so fewer than 65535 ids are in use and the loop ends.
    let id = this.nextPacketId;
    while (this.inflight.has(id)) id = id === 0xffff ? 1 : id + 1;
    this.nextPacketId = id === 0xffff ? 1 : id + 1;
    return id;
  }
}
