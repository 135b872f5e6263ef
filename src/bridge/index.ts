import Database from 'better-sqlite3';
import type { Broker } from '../broker/broker.js';
import type { BridgeStatus } from '../service/gateway-status.js';
import type { Logger } from '../service/logger.js';
import { MIGRATIONS } from '../store/migrations.js';
import { Store } from '../store/store.js';
import { Bridge, type BridgeMetrics } from './bridge.js';
import type { BridgeConfig } from './config-schema.js';

export { Bridge, type BridgeMetrics } from './bridge.js';
export type { BridgeConfig } from './config-schema.js';

/**
 * The configured bridges of one broker. Call `attach` before `Broker.start`, `start` after it,
 * `stop` before `Broker.stop` and `close` after it.
 */
export class BridgeManager {
  readonly bridges: Bridge[];
  private readonly broker: Broker;
  private readonly logger: Logger;
  /** The in-memory store used when persistence is off, or null. */
  private memoryStore: Store | null = null;
  private sysTimer: NodeJS.Timeout | null = null;

  constructor(broker: Broker, configs: readonly BridgeConfig[], logger: Logger) {
    this.broker = broker;
    this.logger = logger;
    const storeSource = (): Store | null => this.broker.store ?? this.memoryStore;
    this.bridges = configs.map((config) => new Bridge(config, broker, logger, storeSource));
  }

  /** Subscribes every bridge to its local topics, before any listener accepts a client. */
  attach(): void {
    if (this.bridges.length === 0) return;
    if (!this.broker.config.persistence.enabled && this.memoryStore === null) {
      this.logger.warn('persistence is off: bridge outboxes are kept in memory and lost at a restart');
      this.memoryStore = openMemoryStore(this.broker.config.persistence.batch_window_ms, this.logger);
    }
    for (const bridge of this.bridges) bridge.attach();
  }

  /** Opens the outboxes and starts connecting; the broker must be started. */
  start(): void {
    if (this.bridges.length === 0) return;
    this.attach();
    for (const bridge of this.bridges) bridge.start();
    const intervalSeconds = this.broker.config.sys.interval_seconds;
    if (intervalSeconds > 0) {
      this.sysTimer = setInterval(() => this.publishSys(), intervalSeconds * 1000);
      this.sysTimer.unref();
    }
  }

  /** Disconnects every bridge; local messages still enter the outboxes until `close`. */
  stop(): void {
    if (this.sysTimer !== null) clearInterval(this.sysTimer);
    this.sysTimer = null;
    for (const bridge of this.bridges) bridge.stop();
  }

  /** Removes the local subscriptions and closes the in-memory store, if any. */
  close(): void {
    this.stop();
    for (const bridge of this.bridges) bridge.detach();
    this.memoryStore?.close();
    this.memoryStore = null;
  }

  statuses(): BridgeStatus[] {
    return this.bridges.map((bridge) => bridge.status());
  }

  metrics(): BridgeMetrics[] {
    return this.bridges.map((bridge) => bridge.metrics());
  }

  /** Publishes each bridge's metrics under `$SYS/broker/bridge/<name>/`. */
  private publishSys(): void {
    if (!this.broker.isRunning) return;
    for (const metrics of this.metrics()) {
      const prefix = `$SYS/broker/bridge/${metrics.name}`;
      this.broker.publishSys(`${prefix}/connected`, metrics.connected ? '1' : '0');
      this.broker.publishSys(`${prefix}/backlog/messages`, String(metrics.backlogMessages));
      this.broker.publishSys(`${prefix}/backlog/bytes`, String(metrics.backlogBytes));
      this.broker.publishSys(`${prefix}/backlog/oldest_age_seconds`, metrics.oldestAgeSeconds.toFixed(0));
      this.broker.publishSys(`${prefix}/messages/sent`, String(metrics.sent));
      this.broker.publishSys(`${prefix}/messages/acknowledged`, String(metrics.acknowledged));
      this.broker.publishSys(`${prefix}/messages/rejected`, String(metrics.rejected));
      this.broker.publishSys(`${prefix}/messages/dropped`, String(metrics.dropped));
      this.broker.publishSys(`${prefix}/messages/received`, String(metrics.received));
      this.broker.publishSys(`${prefix}/reconnects`, String(metrics.reconnects));
    }
  }
}

/** Opens an SQLite database in memory with the full schema, for bridges without persistence. */
function openMemoryStore(batchWindowMs: number, logger: Logger): Store {
  const db = new Database(':memory:');
  for (const migration of MIGRATIONS) db.exec(migration);
  db.pragma(`user_version = ${MIGRATIONS.length}`);
  return new Store(db, { batchWindowMs, maxDatabaseBytes: 0 }, logger);
}
