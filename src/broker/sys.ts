import { createRequire } from 'node:module';
import type { Broker } from './broker.js';
import { Store } from '../store/store.js';

const packageJson = createRequire(import.meta.url)('../../package.json') as { version: string };

export const OUTPOST_VERSION = packageJson.version;

/**
 * Publishes broker status on retained `$SYS/broker/...` topics with the names and formats
 * Mosquitto uses, so that dashboards and scripts written for Mosquitto read them unchanged.
 * A topic is published again only when its value changed.
 */
export class SysPublisher {
  private readonly broker: Broker;
  private readonly intervalMs: number;
  private timer: NodeJS.Timeout | null = null;
  private readonly lastValues = new Map<string, string>();

  constructor(broker: Broker, intervalMs: number) {
    this.broker = broker;
    this.intervalMs = intervalMs;
  }

  start(): void {
    this.publish('$SYS/broker/version', `outpost version ${OUTPOST_VERSION}`);
    this.publishAll();
    this.timer = setInterval(() => this.publishAll(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  private publishAll(): void {
    const broker = this.broker;
    const stats = broker.stats;
    const connected = stats.clientsConnected;
    const disconnected = Math.max(0, broker.sessionCount - connected);
    this.publish('$SYS/broker/uptime', `${Math.floor((Date.now() - stats.startedAt) / 1000)} seconds`);
    this.publish('$SYS/broker/clients/connected', String(connected));
    this.publish('$SYS/broker/clients/active', String(connected));
    this.publish('$SYS/broker/clients/disconnected', String(disconnected));
    this.publish('$SYS/broker/clients/inactive', String(disconnected));
    this.publish('$SYS/broker/clients/total', String(connected + disconnected));
    this.publish('$SYS/broker/clients/maximum', String(stats.clientsMaximum));
    this.publish('$SYS/broker/clients/expired', String(stats.clientsExpired));
    this.publish('$SYS/broker/messages/received', String(stats.messagesReceived));
    this.publish('$SYS/broker/messages/sent', String(stats.messagesSent));
    this.publish('$SYS/broker/publish/messages/received', String(stats.publishReceived));
    this.publish('$SYS/broker/publish/messages/sent', String(stats.publishSent));
    this.publish('$SYS/broker/publish/messages/dropped', String(stats.publishDropped));
    this.publish('$SYS/broker/bytes/received', String(stats.bytesReceived));
    this.publish('$SYS/broker/bytes/sent', String(stats.bytesSent));
    this.publish('$SYS/broker/subscriptions/count', String(broker.subscriptionCount));
    this.publish('$SYS/broker/retained messages/count', String(broker.retained.size));
    this.publish('$SYS/broker/heap/current', String(process.memoryUsage().heapUsed));
    this.publish('$SYS/broker/messages/stored', String(broker.retained.size + broker.queuedMessageCount()));
    const store = broker.store;
    if (store !== null) {
      const written = Store.processBytesWritten();
      this.publish('$SYS/broker/store/messages', String(store.messagesStored));
      this.publish('$SYS/broker/store/bytes_written', String(written));
      this.publish('$SYS/broker/store/bytes_per_message', store.messagesStored === 0 ? '0' : String(Math.round(written / store.messagesStored)));
      this.publish('$SYS/broker/store/size', String(store.databaseBytes()));
      this.publish('$SYS/broker/store/full', store.writable ? '0' : '1');
      this.publish('$SYS/broker/store/failed_commits', String(store.failedCommits));
    }
  }

  private publish(topic: string, value: string): void {
    if (this.lastValues.get(topic) === value) return;
    this.lastValues.set(topic, value);
    this.broker.publishSys(topic, value);
  }
}
