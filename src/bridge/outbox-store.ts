import type Database from 'better-sqlite3';
import type { QoS } from 'mqtt-packet';
import type { ForwardedProperties } from '../broker/message.js';
import { decodeProperties, encodeProperties } from '../store/codec.js';
import type { Store } from '../store/store.js';

/** One message in a bridge outbox, already mapped to its remote topic and QoS. */
export interface OutboxEntry {
  /** Position in the bridge's order of acceptance, from 1. */
  readonly seq: number;
  readonly topic: string;
  readonly payload: Buffer;
  readonly qos: QoS;
  readonly retain: boolean;
  readonly properties: ForwardedProperties | null;
  /** Milliseconds since the epoch when the gateway accepted the message. */
  readonly createdAt: number;
  /** Absolute Message Expiry time in milliseconds since the epoch, 0 for none. */
  readonly expiresAt: number;
  /** Topic and payload bytes, the unit of `outbox.max_bytes`. */
  readonly bytes: number;
  /** True once sent to the remote broker, so that a resend carries DUP. */
  sent: boolean;
  /** True once a QoS 2 message got PUBREC and PUBREL went out. */
  released: boolean;
}

export interface OutboxTotals {
  count: number;
  bytes: number;
  /** Lowest seq stored, 0 when the outbox is empty. */
  minSeq: number;
  maxSeq: number;
}

interface OutboxRow {
  seq: number;
  topic: string;
  payload: Buffer;
  qos: QoS;
  retain: number;
  properties: string | null;
  created_at: number;
  expires_at: number;
}

/**
 * The SQL side of one bridge's outbox. Inserts and deletes go through the store's batch, so an
 * insert commits in the transaction whose commit releases the publisher's acknowledgement.
 * `loadAfter` and `sizesAfter` flush the batch first, so they see every queued write.
 */
export class OutboxStore {
  private readonly store: Store;
  private readonly bridge: string;
  private readonly insertStatement: Database.Statement;
  private readonly deleteStatement: Database.Statement;
  private readonly selectAfterStatement: Database.Statement;
  private readonly selectSizesAfterStatement: Database.Statement;
  private readonly totalsStatement: Database.Statement;
  private readonly oldestStatement: Database.Statement;
  private readonly reserveStatement: Database.Statement;
  private readonly reservedStatement: Database.Statement;

  constructor(store: Store, bridge: string) {
    this.store = store;
    this.bridge = bridge;
    const db = store.db;
    this.insertStatement = db.prepare(
      'INSERT OR REPLACE INTO outbox (bridge, seq, topic, payload, qos, retain, properties, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
    );
    this.deleteStatement = db.prepare('DELETE FROM outbox WHERE bridge = ? AND seq = ?');
    this.selectAfterStatement = db.prepare(
      'SELECT seq, topic, payload, qos, retain, properties, created_at, expires_at FROM outbox WHERE bridge = ? AND seq > ? ORDER BY seq LIMIT ?',
    );
    this.selectSizesAfterStatement = db.prepare(
      'SELECT seq, length(payload) + length(CAST(topic AS BLOB)) AS bytes FROM outbox WHERE bridge = ? AND seq > ? ORDER BY seq LIMIT ?',
    );
    this.totalsStatement = db.prepare(
      'SELECT count(*) AS count, coalesce(sum(length(payload) + length(CAST(topic AS BLOB))), 0) AS bytes, coalesce(min(seq), 0) AS min_seq, coalesce(max(seq), 0) AS max_seq FROM outbox WHERE bridge = ?',
    );
    this.oldestStatement = db.prepare('SELECT created_at FROM outbox WHERE bridge = ? ORDER BY seq LIMIT 1');
    this.reserveStatement = db.prepare('INSERT OR REPLACE INTO bridge_state (bridge, reserved_seq) VALUES (?, ?)');
    this.reservedStatement = db.prepare('SELECT reserved_seq FROM bridge_state WHERE bridge = ?');
  }

  /**
   * Returns the committed totals. It does not flush the store's batch, so it may run while
   * `Broker.route` is on the stack; call `Store.flush` first to count queued writes too.
   */
  totals(): OutboxTotals {
    const row = this.totalsStatement.get(this.bridge) as { count: number; bytes: number; min_seq: number; max_seq: number };
    return { count: row.count, bytes: row.bytes, minSeq: row.min_seq, maxSeq: row.max_seq };
  }

  /** Highest seq reserved by an earlier run, 0 when none. */
  reservedSeq(): number {
    const row = this.reservedStatement.get(this.bridge) as { reserved_seq: number } | undefined;
    return row?.reserved_seq ?? 0;
  }

  /** Queues the new highest reserved seq into the current batch. */
  reserve(seq: number): void {
    this.store.write(this.reserveStatement, [this.bridge, seq]);
  }

  insert(entry: OutboxEntry): void {
    this.store.write(this.insertStatement, [
      this.bridge, entry.seq, entry.topic, entry.payload, entry.qos, entry.retain ? 1 : 0,
      encodeProperties(entry.properties), entry.createdAt, entry.expiresAt,
    ]);
  }

  delete(seq: number): void {
    this.store.write(this.deleteStatement, [this.bridge, seq]);
  }

  /** Returns up to `limit` entries with a seq above `afterSeq`, oldest first. */
  loadAfter(afterSeq: number, limit: number): OutboxEntry[] {
    this.store.flush();
    const rows = this.selectAfterStatement.all(this.bridge, afterSeq, limit) as OutboxRow[];
    return rows.map(entryFromRow);
  }

  /** Returns the seq and size of up to `limit` entries above `afterSeq`, oldest first, without payloads. */
  sizesAfter(afterSeq: number, limit: number): Array<{ seq: number; bytes: number }> {
    this.store.flush();
    return this.selectSizesAfterStatement.all(this.bridge, afterSeq, limit) as Array<{ seq: number; bytes: number }>;
  }

  /** Acceptance time of the oldest committed entry, or null when none is committed. */
  oldestCreatedAt(): number | null {
    const row = this.oldestStatement.get(this.bridge) as { created_at: number } | undefined;
    return row?.created_at ?? null;
  }
}

function entryFromRow(row: OutboxRow): OutboxEntry {
  return {
    seq: row.seq,
    topic: row.topic,
    payload: row.payload,
    qos: row.qos,
    retain: row.retain === 1,
    properties: decodeProperties(row.properties),
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    bytes: row.payload.length + Buffer.byteLength(row.topic),
    sent: false,
    released: false,
  };
}
