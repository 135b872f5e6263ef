import type { QoS } from 'mqtt-packet';
import type { ForwardedProperties } from '../broker/message.js';
import type { Logger } from '../service/logger.js';
import type { Store } from '../store/store.js';
import type { BridgeConfig } from './config-schema.js';
import { OutboxStore, type OutboxEntry } from './outbox-store.js';

/**
 * Seqs reserved in the database at once. An entry is sent only once the reservation of its seq
 * has committed, so a crash can never hand a seq that was already sent (with its message id and
 * packet id) to another message after the restart.
 */
const SEQ_BLOCK = 10_000;

/** Entries kept in memory ahead of the drain; the rest of the backlog waits in the database. */
const MEMORY_WINDOW = 2_000;

const REPEAT_LOG_MS = 10_000;

/** A local message mapped to its remote topic and QoS, before it has a seq. */
export interface OutgoingMessage {
  topic: string;
  payload: Buffer;
  qos: QoS;
  retain: boolean;
  properties: ForwardedProperties | null;
  expiresAt: number;
}

/**
 * The durable queue of one bridge, in seq order. Every entry is a row in the `outbox` table from
 * the moment it is appended until the remote acknowledges it or a bound drops it. The memory
 * queue contains a window of the oldest unsent entries, and the live queue (`live_first` only)
 * new entries that overtake the backlog. The rest is read from the database in batches as the
 * drain needs it.
 *
 * Invariant: every entry with seq <= `readSeq` is in flight, in `memory` or `live`, or deleted;
 * entries above `readSeq` are read from the database, except those in `liveSeqs`.
 */
export class Outbox {
  private readonly name: string;
  private readonly settings: BridgeConfig['outbox'];
  private readonly batchSize: number;
  private readonly logger: Logger;
  /** Called when a reservation commits, because entries may be waiting for it. */
  private readonly onReserved: () => void;
  private store: OutboxStore | null = null;
  private sqlite: Store | null = null;
  private nextSeq = 1;
  /** Highest seq whose reservation has committed. */
  private reservedSeq = 0;
  /** Highest seq of a reservation queued but not yet committed, 0 when none is waiting. */
  private pendingReservation = 0;
  private readSeq = 0;
  private readonly memory: OutboxEntry[] = [];
  private readonly live: OutboxEntry[] = [];
  private readonly liveSeqs = new Set<number>();
  private dropScheduled = false;
  /** Messages in the outbox: unsent, in memory or the database, and in flight. */
  messages = 0;
  /** Topic and payload bytes of those messages. */
  bytes = 0;
  /** Messages dropped by a bound or by age since start. */
  dropped = 0;

  constructor(name: string, config: BridgeConfig, logger: Logger, onReserved: () => void) {
    this.name = name;
    this.onReserved = onReserved;
    this.settings = config.outbox;
    this.batchSize = config.drain.batch_size;
    this.logger = logger;
  }

  /**
   * Reads the totals and the seq reservation of this bridge from `store`. It does not flush the
   * store's batch, so it may run inside `Broker.route`.
   */
  open(store: Store): void {
    const outboxStore = new OutboxStore(store, this.name);
    const totals = outboxStore.totals();
    this.store = outboxStore;
    this.sqlite = store;
    this.messages = totals.count;
    this.bytes = totals.bytes;
    const lastUsed = Math.max(outboxStore.reservedSeq(), totals.maxSeq);
    this.nextSeq = lastUsed + 1;
    this.readSeq = totals.count === 0 ? this.nextSeq - 1 : totals.minSeq - 1;
    this.reservedSeq = lastUsed;
    this.reserveNextBlock();
    if (totals.count > 0) {
      this.logger.info('bridge outbox has a backlog from an earlier run', { messages: totals.count, bytes: totals.bytes });
    }
  }

  /** False before `open` and after the store was closed. */
  get isOpen(): boolean {
    return this.store !== null && this.sqlite !== null && this.sqlite.db.open;
  }

  /**
   * Appends a message; its row joins the store's current batch. Returns false when the outbox is
   * full and `when_full` is `reject_new`. `overtake` puts the entry ahead of a waiting backlog
   * (`live_first` while the link is up).
   */
  append(message: OutgoingMessage, overtake: boolean): boolean {
    const store = this.store;
    if (store === null) return false;
    const bytes = message.payload.length + Buffer.byteLength(message.topic);
    if (this.settings.when_full === 'reject_new' && this.wouldExceed(bytes)) {
      this.countDropped(1, 'outbox full (reject_new)', message.topic);
      return false;
    }
    const seq = this.nextSeq++;
    if (seq > this.reservedSeq - SEQ_BLOCK / 2) this.reserveNextBlock();
    const entry: OutboxEntry = { ...message, seq, createdAt: Date.now(), bytes, sent: false, released: false };
    store.insert(entry);
    this.messages++;
    this.bytes += bytes;

    const backlogWaiting = this.memory.length > 0 || this.readSeq < seq - 1;
    if (overtake && backlogWaiting && this.live.length < MEMORY_WINDOW) {
      this.live.push(entry);
      this.liveSeqs.add(seq);
    } else if (this.readSeq === seq - 1 && this.memory.length < MEMORY_WINDOW) {
      this.memory.push(entry);
      this.readSeq = seq;
    }
    if (this.settings.when_full === 'drop_oldest' && this.overBounds()) this.scheduleDropOldest();
    return true;
  }

  /** Returns the next entry to send without taking it, reading a batch from the database if needed. */
  peek(): OutboxEntry | undefined {
    const head = this.live[0] ?? this.memory[0];
    if (head !== undefined) return head;
    return this.refill() ? this.memory[0] : undefined;
  }

  /** Tells whether `entry` may be sent: the reservation of its seq has committed. */
  isReserved(entry: OutboxEntry): boolean {
    return entry.seq <= this.reservedSeq;
  }

  /** Takes the entry that `peek` returned. */
  take(): void {
    if (this.live.length > 0) this.live.shift();
    else this.memory.shift();
  }

  /**
   * Re-reads the counters from the database when nothing is queued or in flight. They drift
   * only when a commit failed (a full disk) and took appended rows with it.
   */
  resyncWhenEmpty(inflight: number): void {
    const store = this.store;
    if (store === null || inflight > 0 || this.messages === 0) return;
    if (this.memory.length > 0 || this.live.length > 0 || this.readSeq < this.nextSeq - 1) return;
    this.sqlite?.flush();
    const totals = store.totals();
    if (totals.count === this.messages && totals.bytes === this.bytes) return;
    this.logger.warn('bridge outbox counters corrected from the database', { counted: this.messages, stored: totals.count });
    this.messages = totals.count;
    this.bytes = totals.bytes;
  }

  /** Deletes an entry the remote acknowledged (or rejected for good). */
  remove(entry: OutboxEntry): void {
    this.deleteRow(entry.seq, entry.bytes);
  }

  /** Deletes an entry that cannot be sent and counts it as dropped. */
  drop(entry: OutboxEntry, reason: string): void {
    this.deleteRow(entry.seq, entry.bytes);
    this.countDropped(1, reason, entry.topic);
  }

  /**
   * Puts `unacknowledged` entries and live entries not sent yet back into the queue, merged in
   * seq order, so that the next connection starts with the oldest.
   */
  requeue(unacknowledged: Iterable<OutboxEntry>): void {
    const entries = [...unacknowledged, ...this.live.splice(0), ...this.memory.splice(0)];
    entries.sort((a, b) => a.seq - b.seq);
    this.memory.push(...entries);
  }

  /**
   * Takes the head of the queue if it is a QoS 2 entry that got PUBREC before the link was lost;
   * returns undefined otherwise.
   */
  shiftReleased(): OutboxEntry | undefined {
    const head = this.memory[0];
    if (head === undefined || !head.released || head.qos !== 2) return undefined;
    return this.memory.shift();
  }

  /** Acceptance time of the oldest entry, or null when the outbox is empty. */
  oldestCreatedAt(inflightHead: OutboxEntry | undefined): number | null {
    if (this.messages === 0) return null;
    let oldest = inflightHead?.createdAt ?? Number.POSITIVE_INFINITY;
    const head = this.memory[0];
    if (head !== undefined) oldest = Math.min(oldest, head.createdAt);
    if (oldest === Number.POSITIVE_INFINITY) oldest = this.store?.oldestCreatedAt() ?? Date.now();
    return oldest;
  }

  /** Queues the reservation of the next block of seqs, unless one is already waiting to commit. */
  private reserveNextBlock(): void {
    const store = this.store;
    const sqlite = this.sqlite;
    if (store === null || sqlite === null || this.pendingReservation !== 0) return;
    const reservation = Math.max(this.reservedSeq, this.nextSeq - 1) + SEQ_BLOCK;
    this.pendingReservation = reservation;
    store.reserve(reservation);
    sqlite.whenDurable((ok) => {
      this.pendingReservation = 0;
      if (!ok) return;
      this.reservedSeq = Math.max(this.reservedSeq, reservation);
      this.onReserved();
    });
  }

  /** Drops unsent messages older than `outbox.max_age_seconds`; returns how many. */
  sweepExpired(now: number): number {
    const maxAge = this.settings.max_age_seconds;
    const store = this.store;
    if (maxAge === 0 || store === null) return 0;
    const cutoff = now - maxAge * 1000;
    let count = this.dropFromMemory((entry) => entry.createdAt <= cutoff);
    // Entries are appended in time order, so the expired rows in the database are a prefix.
    while (this.memory.length === 0) {
      const rows = store.loadAfter(this.readSeq, this.batchSize).filter((row) => !this.liveSeqs.has(row.seq));
      const expired = rows.filter((row) => row.createdAt <= cutoff);
      for (const row of expired) {
        this.deleteRow(row.seq, row.bytes);
        this.readSeq = Math.max(this.readSeq, row.seq);
      }
      count += expired.length;
      if (expired.length === 0 || expired.length < rows.length) break;
    }
    if (count > 0) this.countDropped(count, 'expired in the outbox (max_age_seconds)', undefined);
    return count;
  }

  private wouldExceed(bytes: number): boolean {
    if (this.settings.max_messages > 0 && this.messages + 1 > this.settings.max_messages) return true;
    return this.settings.max_bytes > 0 && this.bytes + bytes > this.settings.max_bytes;
  }

  private overBounds(): boolean {
    if (this.settings.max_messages > 0 && this.messages > this.settings.max_messages) return true;
    return this.settings.max_bytes > 0 && this.bytes > this.settings.max_bytes;
  }

  /**
   * Drops the oldest messages on the next turn of the event loop. Reading sizes from the database
   * flushes the store's batch, which must not happen while `Broker.route` is on the stack, so
   * the outbox may exceed its bound by the messages of one burst until then.
   */
  private scheduleDropOldest(): void {
    if (this.dropScheduled) return;
    this.dropScheduled = true;
    setImmediate(() => {
      this.dropScheduled = false;
      if (this.isOpen) this.dropOldest();
    });
  }

  /**
   * Drops the oldest unsent messages until the outbox is within its bounds. Messages that went
   * out once are kept: the remote may hold them under their packet id.
   */
  private dropOldest(): void {
    const store = this.store;
    if (store === null) return;
    let count = this.dropFromMemory(() => this.overBounds());
    while (this.overBounds() && this.memory.length === 0) {
      const rows = store.sizesAfter(this.readSeq, this.batchSize);
      if (rows.length === 0) break;
      for (const row of rows) {
        if (!this.overBounds()) break;
        this.readSeq = row.seq;
        if (this.liveSeqs.has(row.seq)) continue;
        this.deleteRow(row.seq, row.bytes);
        count++;
      }
    }
    if (count > 0) this.countDropped(count, 'outbox full (drop_oldest)', undefined);
  }

  /** Drops unsent entries from the front of the memory queue while `shouldDrop` holds. */
  private dropFromMemory(shouldDrop: (entry: OutboxEntry) => boolean): number {
    let count = 0;
    let index = 0;
    while (index < this.memory.length) {
      const entry = this.memory[index] as OutboxEntry;
      if (entry.sent) {
        index++;
        continue;
      }
      if (!shouldDrop(entry)) break;
      this.memory.splice(index, 1);
      this.deleteRow(entry.seq, entry.bytes);
      count++;
    }
    return count;
  }

  private refill(): boolean {
    const store = this.store;
    if (store === null || this.readSeq >= this.nextSeq - 1) return false;
    const entries = store.loadAfter(this.readSeq, this.batchSize);
    if (entries.length === 0) {
      this.readSeq = this.nextSeq - 1;
      this.liveSeqs.clear();
      return false;
    }
    this.readSeq = entries[entries.length - 1]?.seq ?? this.readSeq;
    for (const entry of entries) {
      if (!this.liveSeqs.has(entry.seq)) this.memory.push(entry);
    }
    for (const seq of this.liveSeqs) {
      if (seq <= this.readSeq) this.liveSeqs.delete(seq);
    }
    // A batch made only of live entries leaves memory empty; the caller asks again.
    return this.memory.length > 0 || this.refill();
  }

  private deleteRow(seq: number, bytes: number): void {
    this.store?.delete(seq);
    this.messages--;
    this.bytes -= bytes;
  }

  private countDropped(count: number, reason: string, topic: string | undefined): void {
    this.dropped += count;
    this.logger.limited('warn', `bridge-drop:${this.name}:${reason}`, REPEAT_LOG_MS, 'bridge dropped messages', {
      reason,
      messages: count,
      dropped_total: this.dropped,
      topic,
    });
  }
}
