import type { QoS } from 'mqtt-packet';
import { isExpired, type Message } from './message.js';
import { topicMatchesFilter } from '../mqtt/topic.js';
import type { RetainedIndexRow, Store } from '../store/store.js';

/** Index entry of one retained message, with the message itself until it is stored. */
interface RetainedEntry {
  qos: QoS;
  expiresAt: number;
  bytes: number;
  /** The message itself while it is not committed to the store, or always without a store. */
  message: Message | null;
}

export interface RetainedLimits {
  maxMessages: number;
  maxBytes: number;
}

/**
 * Retained messages by topic: the last message published with RETAIN set on each topic. With a
 * store, memory keeps the index only and payloads are read from the store when a subscription
 * needs them. `$SYS` topics are never stored; the broker publishes them again after a restart.
 */
export class RetainedStore {
  private readonly entries = new Map<string, RetainedEntry>();
  private totalBytes = 0;
  private backing: Store | null = null;
  private readonly limits: RetainedLimits;

  constructor(limits: RetainedLimits) {
    this.limits = limits;
  }

  get size(): number {
    return this.entries.size;
  }

  get bytes(): number {
    return this.totalBytes;
  }

  /** Takes the index of the messages already in the store and keeps later ones there too. */
  attach(store: Store, rows: Iterable<RetainedIndexRow>): void {
    this.backing = store;
    const now = Date.now();
    for (const row of rows) {
      if (row.expiresAt !== 0 && row.expiresAt <= now) {
        store.deleteRetained(row.topic);
        continue;
      }
      this.entries.set(row.topic, { qos: row.qos, expiresAt: row.expiresAt, bytes: row.bytes, message: null });
      this.totalBytes += row.bytes;
    }
  }

  /**
   * Stores the message, or removes the topic's retained message when the payload is empty
   * [MQTT-3.3.1-10]. Returns false when a limit keeps a new message from being retained.
   */
  set(message: Message): boolean {
    const topic = message.topic;
    const old = this.entries.get(topic);
    const persist = this.backing !== null && !topic.startsWith('$SYS/');
    if (message.payload.length === 0) {
      if (old !== undefined) this.remove(topic, old);
      return true;
    }
    const bytes = message.payload.length;
    const newBytes = this.totalBytes - (old?.bytes ?? 0) + bytes;
    if ((old === undefined && this.entries.size >= this.limits.maxMessages) || (this.limits.maxBytes > 0 && newBytes > this.limits.maxBytes)) {
      return false;
    }
    const entry: RetainedEntry = { qos: message.qos, expiresAt: message.expiresAt, bytes, message };
    this.entries.set(topic, entry);
    this.totalBytes = newBytes;
    if (persist && this.backing !== null) {
      this.backing.saveRetained(message);
      // Once committed, the payload is read from the store, so memory drops it.
      this.backing.whenDurable((ok) => {
        if (ok && this.entries.get(topic) === entry) entry.message = null;
      });
    }
    return true;
  }

  /**
   * Returns the topics of unexpired retained messages that match `filter`, dropping expired ones.
   * Payloads are read one at a time with `get`, so a wide filter does not load them all at once.
   */
  matchTopics(filter: string): Array<{ topic: string; qos: QoS }> {
    const now = Date.now();
    const found: Array<{ topic: string; qos: QoS }> = [];
    // TODO(perf): a scan of every retained topic; an index by level pays off with many thousands.
    for (const [topic, entry] of this.entries) {
      if (entry.expiresAt !== 0 && entry.expiresAt <= now) {
        this.remove(topic, entry);
        continue;
      }
      if (topicMatchesFilter(filter, topic)) found.push({ topic, qos: entry.qos });
    }
    return found;
  }

  /** Returns the retained message of a topic, read from the store when memory has only its index. */
  get(topic: string): Message | null {
    const entry = this.entries.get(topic);
    if (entry === undefined) return null;
    const message = entry.message ?? this.backing?.loadRetained(topic) ?? null;
    return message === null || isExpired(message, Date.now()) ? null : message;
  }

  private remove(topic: string, entry: RetainedEntry): void {
    this.entries.delete(topic);
    this.totalBytes -= entry.bytes;
    if (this.backing !== null && !topic.startsWith('$SYS/')) this.backing.deleteRetained(topic);
  }
}
