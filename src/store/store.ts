import { readFileSync } from 'node:fs';
import type Database from 'better-sqlite3';
import type { QoS } from 'mqtt-packet';
import type { Message } from '../broker/message.js';
import type { Delivery } from '../broker/session.js';
import type { Subscription } from '../broker/subscription.js';
import type { Will } from '../broker/will.js';
import type { Logger } from '../service/logger.js';
import { decodeIds, decodeProperties, encodeIds, encodeProperties } from './codec.js';

/** One queued or in-flight delivery read back from the store. */
export interface StoredDelivery {
  seq: number;
  delivery: Delivery;
}

export interface StoredInflight extends StoredDelivery {
  packetId: number;
  released: boolean;
}

export interface StoredSession {
  clientId: string;
  expiryInterval: number;
  expiresAt: number;
  will: Will | null;
  willAt: number;
  /** User name of the client that last held the session, if it gave one. */
  username: string | undefined;
  /** Name of the listener that client connected through. */
  listener: string;
}

export interface RetainedIndexRow {
  topic: string;
  qos: QoS;
  expiresAt: number;
  bytes: number;
}

export interface QueueTotals {
  count: number;
  bytes: number;
  maxSeq: number;
}

/** Called once the writes made before it are committed (`ok`) or were lost with a failed commit. */
export type DurabilityCallback = (ok: boolean) => void;

interface PendingWrite {
  statement: Database.Statement;
  args: unknown[];
  /** Set when a later write in the same batch deletes the row this one inserts. */
  cancelled: boolean;
}

export interface StoreOptions {
  batchWindowMs: number;
  /** Bound on the pages in use in the database file; 0 for none. */
  maxDatabaseBytes: number;
}

/**
 * Why the store refuses new durable work: `limit` when the pages in use reached the configured
 * bound, `disk` when a commit failed with SQLITE_FULL (the disk, or the headroom above the bound).
 */
type FullReason = 'none' | 'limit' | 'disk';

/**
 * Pages allowed above the configured bound, as a share of it and at least 1 MiB of 4 KiB pages.
 * Draining a backlog writes before it deletes (a queued row becomes an in-flight row), so the
 * drain needs room even when new work is refused at the bound.
 */
const HEADROOM_SHARE = 0.05;
const MIN_HEADROOM_PAGES = 256;

/** How often a store that hit a full disk checks whether it can write again. */
const DISK_FULL_PROBE_MS = 5000;

/** Payload size of the probe write, about one stored message. */
const PROBE_BYTES = 1024;

/**
 * The durable state behind the broker. Writes are queued and committed together in one
 * transaction per batch window, so durability costs one fsync per batch, not per message.
 * Reads that must see queued writes flush first; better-sqlite3 runs everything synchronously.
 */
export class Store {
  readonly db: Database.Database;
  /** Messages written to the queued, in-flight and retained tables since start, less cancelled inserts. */
  messagesStored = 0;
  /** Commits that failed, for example because the disk or the database size bound was full. */
  failedCommits = 0;
  private readonly logger: Logger;
  private readonly batchWindowMs: number;
  private pending: PendingWrite[] = [];
  /**
   * Inserts of queued and in-flight rows in the current batch, by table, client id and key. A
   * message acknowledged within the batch window then costs no write at all.
   */
  private pendingInserts = new Map<string, PendingWrite>();
  private callbacks: DurabilityCallback[] = [];
  private timer: NodeJS.Timeout | null = null;
  private probeTimer: NodeJS.Timeout | null = null;
  private fullReason: FullReason = 'none';
  /** Pages in use at which new durable work is refused; 0 without a bound. */
  private readonly limitPages: number;
  private readonly statements: ReturnType<typeof prepareStatements>;
  private readonly commitBatch: (writes: PendingWrite[]) => void;

  constructor(db: Database.Database, options: StoreOptions, logger: Logger) {
    this.db = db;
    this.batchWindowMs = options.batchWindowMs;
    this.logger = logger;
    this.limitPages = 0;
    if (options.maxDatabaseBytes > 0) {
      const pageSize = db.pragma('page_size', { simple: true }) as number;
      this.limitPages = Math.max(1, Math.floor(options.maxDatabaseBytes / pageSize));
      const headroom = Math.max(MIN_HEADROOM_PAGES, Math.ceil(this.limitPages * HEADROOM_SHARE));
      db.pragma(`max_page_count = ${this.limitPages + headroom}`);
    }
    this.statements = prepareStatements(db);
    this.commitBatch = db.transaction((writes: PendingWrite[]) => {
      for (const write of writes) {
        if (!write.cancelled) write.statement.run(...write.args);
      }
    });
  }

  /** False while new durable work is refused: the size bound is reached or the disk is full. */
  get writable(): boolean {
    return this.fullReason === 'none';
  }

  /**
   * Calls `callback` once every write queued so far is committed: at once when nothing is
   * pending, else after the batch commits. Callbacks run in the order they were given.
   */
  whenDurable(callback: DurabilityCallback): void {
    if (this.pending.length === 0 && this.callbacks.length === 0) {
      callback(this.fullReason === 'none');
      return;
    }
    this.callbacks.push(callback);
    this.schedule();
  }

  /** Commits every queued write now and runs the waiting callbacks. */
  flush(): void {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    const writes = this.pending;
    const callbacks = this.callbacks;
    this.pending = [];
    this.callbacks = [];
    this.pendingInserts.clear();
    let ok = true;
    if (writes.length > 0) {
      try {
        this.commitBatch(writes);
        this.checkSizeBound();
      } catch (error) {
        ok = false;
        this.onCommitFailed(error, writes.length);
      }
    }
    for (const callback of callbacks) {
      try {
        callback(ok);
      } catch (error) {
        // A callback that throws must not keep the others from running or reach the event loop.
        this.logger.limited('error', 'store-callback', 10_000, 'acknowledgement after commit failed', {
          error: error instanceof Error ? error.stack ?? error.message : String(error),
        });
      }
    }
  }

  close(): void {
    this.flush();
    if (this.probeTimer !== null) clearInterval(this.probeTimer);
    this.probeTimer = null;
    this.db.close();
  }

  /**
   * Queues a write of another module (for example the bridge outbox) into the current batch, so
   * that it commits in the same transaction as the acknowledgement it belongs to.
   */
  write(statement: Database.Statement, args: unknown[]): void {
    this.queue(statement, args);
  }

  // Retained messages.

  saveRetained(message: Message): void {
    this.messagesStored++;
    this.queue(this.statements.upsertRetained, [
      message.topic, message.payload, message.qos, encodeProperties(message.properties), message.expiresAt,
    ]);
  }

  deleteRetained(topic: string): void {
    this.queue(this.statements.deleteRetained, [topic]);
  }

  loadRetained(topic: string): Message | null {
    this.flush();
    const row = this.statements.selectRetained.get(topic) as
      | { payload: Buffer; qos: QoS; properties: string | null; expires_at: number }
      | undefined;
    if (row === undefined) return null;
    return {
      topic,
      payload: row.payload,
      qos: row.qos,
      retain: true,
      properties: decodeProperties(row.properties),
      expiresAt: row.expires_at,
      origin: '',
    };
  }

  /** Yields the index of the stored retained messages row by row, without their payloads. */
  *iterateRetainedIndex(): Generator<RetainedIndexRow> {
    const rows = this.statements.selectRetainedIndex.iterate() as IterableIterator<{ topic: string; qos: QoS; expires_at: number; bytes: number }>;
    for (const row of rows) yield { topic: row.topic, qos: row.qos, expiresAt: row.expires_at, bytes: row.bytes };
  }

  // Sessions and subscriptions.

  saveSession(session: StoredSession): void {
    this.queue(this.statements.upsertSession, [
      session.clientId, session.expiryInterval, session.expiresAt, encodeWill(session.will), session.willAt,
      session.username ?? null, session.listener,
    ]);
  }

  /** Deletes a session with its subscriptions, queued and in-flight messages and QoS 2 ids. */
  deleteSession(clientId: string): void {
    for (const statement of this.statements.deleteSessionRows) this.queue(statement, [clientId]);
  }

  /** Deletes a session's queued, in-flight and incoming QoS 2 state but keeps the session. */
  deleteSessionMessages(clientId: string): void {
    for (const statement of this.statements.deleteMessageRows) this.queue(statement, [clientId]);
  }

  loadSessions(): StoredSession[] {
    const rows = this.statements.selectSessions.all() as Array<{
      client_id: string; expiry_interval: number; expires_at: number; will: string | null; will_at: number;
      username: string | null; listener: string | null;
    }>;
    return rows.map((row) => ({
      clientId: row.client_id,
      expiryInterval: row.expiry_interval,
      expiresAt: row.expires_at,
      will: decodeWill(row.will),
      willAt: row.will_at,
      username: row.username ?? undefined,
      listener: row.listener ?? '',
    }));
  }

  saveSubscription(subscription: Subscription): void {
    this.queue(this.statements.upsertSubscription, [
      subscription.clientId, subscription.rawFilter, subscription.qos, subscription.noLocal ? 1 : 0,
      subscription.retainAsPublished ? 1 : 0, subscription.retainHandling, subscription.subscriptionId,
    ]);
  }

  deleteSubscription(clientId: string, rawFilter: string): void {
    this.queue(this.statements.deleteSubscription, [clientId, rawFilter]);
  }

  loadSubscriptions(): Array<Omit<Subscription, 'filter' | 'shareGroup'>> {
    const rows = this.statements.selectSubscriptions.all() as Array<{
      client_id: string; raw_filter: string; qos: QoS; no_local: number; retain_as_published: number;
      retain_handling: number; subscription_id: number;
    }>;
    return rows.map((row) => ({
      clientId: row.client_id,
      rawFilter: row.raw_filter,
      qos: row.qos,
      noLocal: row.no_local === 1,
      retainAsPublished: row.retain_as_published === 1,
      retainHandling: row.retain_handling,
      subscriptionId: row.subscription_id,
    }));
  }

  // Queued and in-flight messages of persistent sessions.

  saveQueued(clientId: string, seq: number, delivery: Delivery): void {
    this.messagesStored++;
    const message = delivery.message;
    this.queueInsert(`q\u0000${clientId}\u0000${seq}`, this.statements.insertQueued, [
      clientId, seq, message.topic, message.payload, delivery.qos, delivery.retain ? 1 : 0,
      encodeIds(delivery.subscriptionIds), encodeProperties(message.properties), message.expiresAt,
    ]);
  }

  deleteQueued(clientId: string, seq: number): void {
    if (this.cancelInsert(`q\u0000${clientId}\u0000${seq}`)) return;
    this.queue(this.statements.deleteQueued, [clientId, seq]);
  }

  /** Returns up to `limit` queued messages of a session, oldest first. */
  loadQueued(clientId: string, limit: number): StoredDelivery[] {
    this.flush();
    const rows = this.statements.selectQueued.all(clientId, limit) as DeliveryRow[];
    return rows.map((row) => ({ seq: row.seq, delivery: deliveryFromRow(row) }));
  }

  queueTotals(): Map<string, QueueTotals> {
    const rows = this.statements.selectQueueTotals.all() as Array<{ client_id: string; count: number; bytes: number; max_seq: number }>;
    const totals = new Map<string, QueueTotals>();
    for (const row of rows) totals.set(row.client_id, { count: row.count, bytes: row.bytes, maxSeq: row.max_seq });
    return totals;
  }

  /** Highest sequence number among each session's in-flight messages. */
  inflightMaxSeq(): Map<string, number> {
    const rows = this.statements.selectInflightMaxSeq.all() as Array<{ client_id: string; max_seq: number }>;
    return new Map(rows.map((row) => [row.client_id, row.max_seq]));
  }

  saveInflight(clientId: string, packetId: number, seq: number, delivery: Delivery): void {
    this.messagesStored++;
    const message = delivery.message;
    this.queueInsert(`i\u0000${clientId}\u0000${packetId}`, this.statements.upsertInflight, [
      clientId, packetId, seq, message.topic, message.payload, delivery.qos, delivery.retain ? 1 : 0,
      encodeIds(delivery.subscriptionIds), encodeProperties(message.properties), message.expiresAt,
    ]);
  }

  markReleased(clientId: string, packetId: number): void {
    this.queue(this.statements.markReleased, [clientId, packetId]);
  }

  deleteInflight(clientId: string, packetId: number): void {
    if (this.cancelInsert(`i\u0000${clientId}\u0000${packetId}`)) return;
    this.queue(this.statements.deleteInflight, [clientId, packetId]);
  }

  /** Returns a session's in-flight messages in the order they were first sent. */
  loadInflight(clientId: string): StoredInflight[] {
    this.flush();
    const rows = this.statements.selectInflight.all(clientId) as Array<DeliveryRow & { packet_id: number; released: number }>;
    return rows.map((row) => ({
      seq: row.seq,
      packetId: row.packet_id,
      released: row.released === 1,
      delivery: deliveryFromRow(row),
    }));
  }

  saveIncoming(clientId: string, packetId: number): void {
    this.queue(this.statements.insertIncoming, [clientId, packetId]);
  }

  deleteIncoming(clientId: string, packetId: number): void {
    this.queue(this.statements.deleteIncoming, [clientId, packetId]);
  }

  loadIncoming(): Array<{ clientId: string; packetId: number }> {
    const rows = this.statements.selectIncoming.all() as Array<{ client_id: string; packet_id: number }>;
    return rows.map((row) => ({ clientId: row.client_id, packetId: row.packet_id }));
  }

  /** Size of the database file in bytes (pages in use times page size), without the WAL. */
  databaseBytes(): number {
    const pages = this.db.pragma('page_count', { simple: true }) as number;
    const pageSize = this.db.pragma('page_size', { simple: true }) as number;
    return pages * pageSize;
  }

  /** Bytes this process has written to storage so far (Linux /proc/self/io), or 0 when unknown. */
  static processBytesWritten(): number {
    try {
      const match = /^write_bytes: (\d+)$/m.exec(readFileSync('/proc/self/io', 'utf8'));
      return match === null ? 0 : Number(match[1]);
    } catch {
      return 0;
    }
  }

  private queue(statement: Database.Statement, args: unknown[]): void {
    this.pending.push({ statement, args, cancelled: false });
    this.schedule();
  }

  private queueInsert(key: string, statement: Database.Statement, args: unknown[]): void {
    const write: PendingWrite = { statement, args, cancelled: false };
    this.pending.push(write);
    this.pendingInserts.set(key, write);
    this.schedule();
  }

  /** Cancels an insert still waiting in this batch; returns false when it was already committed. */
  private cancelInsert(key: string): boolean {
    const write = this.pendingInserts.get(key);
    if (write === undefined) return false;
    write.cancelled = true;
    this.pendingInserts.delete(key);
    this.messagesStored--;
    return true;
  }

  private schedule(): void {
    if (this.timer === null) this.timer = setTimeout(flushStore, this.batchWindowMs, this);
  }

  private onCommitFailed(error: unknown, writes: number): void {
    this.failedCommits++;
    const code = (error as { code?: unknown }).code;
    const message = error instanceof Error ? error.message : String(error);
    if (code === 'SQLITE_FULL') {
      if (this.fullReason !== 'disk') {
        this.fullReason = 'disk';
        this.logger.error('state database is full; durable messages are rejected until space returns', {
          lost_writes: writes,
          error: message,
        });
        this.startProbing();
      } else {
        this.logger.limited('error', 'store-full', 10_000, 'state database still full', { lost_writes: writes });
      }
      return;
    }
    this.logger.limited('error', `store-commit:${String(code)}`, 10_000, 'state database commit failed', {
      code: String(code),
      lost_writes: writes,
      error: message,
    });
  }

  /** Tries a write the size of a small message; leaves the full state when it fits. */
  probe(): void {
    if (this.fullReason === 'limit') {
      this.checkSizeBound();
      return;
    }
    if (this.fullReason !== 'disk') return;
    try {
      this.db.transaction(() => {
        this.statements.upsertRetained.run('\u0000probe', Buffer.alloc(PROBE_BYTES), 0, null, 0);
        throw new ProbeFitted();
      })();
    } catch (error) {
      if (error instanceof ProbeFitted) this.leaveFullState();
    }
  }

  /**
   * Compares the pages in use (free pages excluded) with the bound after a commit: reaching it
   * refuses new durable work, and falling below it by 2% accepts work again.
   */
  private checkSizeBound(): void {
    if (this.limitPages === 0 || this.fullReason === 'disk') return;
    const pages = this.db.pragma('page_count', { simple: true }) as number;
    const free = this.db.pragma('freelist_count', { simple: true }) as number;
    const used = pages - free;
    if (this.fullReason === 'none' && used >= this.limitPages) {
      this.fullReason = 'limit';
      this.logger.error('state database reached persistence.max_database_bytes; durable messages are rejected until space is freed', {
        used_pages: used,
        limit_pages: this.limitPages,
      });
      this.startProbing();
    } else if (this.fullReason === 'limit' && used < this.limitPages * 0.98) {
      this.leaveFullState();
    }
  }

  private startProbing(): void {
    if (this.probeTimer !== null) return;
    this.probeTimer = setInterval(probeStore, DISK_FULL_PROBE_MS, this);
    this.probeTimer.unref();
  }

  private leaveFullState(): void {
    this.fullReason = 'none';
    if (this.probeTimer !== null) clearInterval(this.probeTimer);
    this.probeTimer = null;
    this.logger.info('state database writable again');
  }
}

class ProbeFitted extends Error {}

function flushStore(store: Store): void {
  store.flush();
}

function probeStore(store: Store): void {
  store.probe();
}

interface DeliveryRow {
  seq: number;
  topic: string;
  payload: Buffer;
  qos: QoS;
  retain: number;
  subscription_ids: string | null;
  properties: string | null;
  expires_at: number;
}

function deliveryFromRow(row: DeliveryRow): Delivery {
  const retain = row.retain === 1;
  return {
    message: {
      topic: row.topic,
      payload: row.payload,
      qos: row.qos,
      retain,
      properties: decodeProperties(row.properties),
      expiresAt: row.expires_at,
      origin: '',
    },
    qos: row.qos,
    retain,
    subscriptionIds: decodeIds(row.subscription_ids),
  };
}

interface StoredWill {
  topic: string;
  payload: string;
  qos: QoS;
  retain: boolean;
  properties: string | null;
  expiry: number;
  delay: number;
}

function encodeWill(will: Will | null): string | null {
  if (will === null) return null;
  const stored: StoredWill = {
    topic: will.topic,
    payload: will.payload.toString('base64'),
    qos: will.qos,
    retain: will.retain,
    properties: encodeProperties(will.properties),
    expiry: will.messageExpiryInterval,
    delay: will.delaySeconds,
  };
  return JSON.stringify(stored);
}

function decodeWill(text: string | null): Will | null {
  if (text === null) return null;
  const stored = JSON.parse(text) as StoredWill;
  return {
    topic: stored.topic,
    payload: Buffer.from(stored.payload, 'base64'),
    qos: stored.qos,
    retain: stored.retain,
    properties: decodeProperties(stored.properties),
    messageExpiryInterval: stored.expiry,
    delaySeconds: stored.delay,
  };
}

function prepareStatements(db: Database.Database) {
  const deliveryColumns = 'topic, payload, qos, retain, subscription_ids, properties, expires_at';
  return {
    upsertRetained: db.prepare('INSERT OR REPLACE INTO retained (topic, payload, qos, properties, expires_at) VALUES (?, ?, ?, ?, ?)'),
    deleteRetained: db.prepare('DELETE FROM retained WHERE topic = ?'),
    selectRetained: db.prepare('SELECT payload, qos, properties, expires_at FROM retained WHERE topic = ?'),
    selectRetainedIndex: db.prepare('SELECT topic, qos, expires_at, length(payload) AS bytes FROM retained'),
    upsertSession: db.prepare(
      'INSERT OR REPLACE INTO sessions (client_id, expiry_interval, expires_at, will, will_at, username, listener) VALUES (?, ?, ?, ?, ?, ?, ?)',
    ),
    selectSessions: db.prepare('SELECT client_id, expiry_interval, expires_at, will, will_at, username, listener FROM sessions'),
    deleteSessionRows: ['sessions', 'subscriptions', 'queued', 'inflight', 'incoming_qos2'].map((table) =>
      db.prepare(`DELETE FROM ${table} WHERE client_id = ?`),
    ),
    deleteMessageRows: ['queued', 'inflight', 'incoming_qos2'].map((table) => db.prepare(`DELETE FROM ${table} WHERE client_id = ?`)),
    upsertSubscription: db.prepare(
      'INSERT OR REPLACE INTO subscriptions (client_id, raw_filter, qos, no_local, retain_as_published, retain_handling, subscription_id) VALUES (?, ?, ?, ?, ?, ?, ?)',
    ),
    deleteSubscription: db.prepare('DELETE FROM subscriptions WHERE client_id = ? AND raw_filter = ?'),
    selectSubscriptions: db.prepare('SELECT client_id, raw_filter, qos, no_local, retain_as_published, retain_handling, subscription_id FROM subscriptions'),
    insertQueued: db.prepare(`INSERT OR REPLACE INTO queued (client_id, seq, ${deliveryColumns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`),
    deleteQueued: db.prepare('DELETE FROM queued WHERE client_id = ? AND seq = ?'),
    selectQueued: db.prepare(`SELECT seq, ${deliveryColumns} FROM queued WHERE client_id = ? ORDER BY seq LIMIT ?`),
    selectQueueTotals: db.prepare(
      'SELECT client_id, count(*) AS count, sum(length(payload)) AS bytes, max(seq) AS max_seq FROM queued GROUP BY client_id',
    ),
    upsertInflight: db.prepare(
      `INSERT OR REPLACE INTO inflight (client_id, packet_id, seq, ${deliveryColumns}, released) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)`,
    ),
    selectInflightMaxSeq: db.prepare('SELECT client_id, max(seq) AS max_seq FROM inflight GROUP BY client_id'),
    markReleased: db.prepare('UPDATE inflight SET released = 1 WHERE client_id = ? AND packet_id = ?'),
    deleteInflight: db.prepare('DELETE FROM inflight WHERE client_id = ? AND packet_id = ?'),
    selectInflight: db.prepare(`SELECT packet_id, seq, released, ${deliveryColumns} FROM inflight WHERE client_id = ? ORDER BY seq`),
    insertIncoming: db.prepare('INSERT OR REPLACE INTO incoming_qos2 (client_id, packet_id) VALUES (?, ?)'),
    deleteIncoming: db.prepare('DELETE FROM incoming_qos2 WHERE client_id = ? AND packet_id = ?'),
    selectIncoming: db.prepare('SELECT client_id, packet_id FROM incoming_qos2'),
  };
}
