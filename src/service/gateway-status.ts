/**
 * A point-in-time view of the running gateway, shared by `/metrics`, `/healthz` and `/status`,
 * so the three endpoints never disagree about what they report.
 */

import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';

import type { Broker } from '../broker/broker.js';
import { OUTPOST_VERSION } from '../broker/sys.js';
import { Store } from '../store/store.js';

/** State of one bridge to a remote broker, as its provider (`OpsServer.setBridgeSource`) reports it. */
export interface BridgeStatus {
  name: string;
  connected: boolean;
  /** Messages waiting in the outbox. */
  backlogMessages: number;
  /** Payload bytes waiting in the outbox. */
  backlogBytes: number;
  /** Messages dropped because an outbox bound was reached, since start. */
  droppedMessages: number;
  /** Age of the oldest message in the outbox in seconds, 0 when it is empty. */
  oldestAgeSeconds: number;
  /** PUBLISH packets written to the remote broker since start, resends included. */
  sentMessages: number;
  /** Messages the remote broker acknowledged since start. */
  acknowledgedMessages: number;
  /** Messages the remote broker rejected with a reason code of 0x80 or above, since start. */
  rejectedMessages: number;
  /** Messages received from the remote broker and routed locally, since start. */
  receivedMessages: number;
  /** Connections established after the first one. */
  reconnects: number;
  /** Message of the last connection or delivery error, or null. */
  lastError: string | null;
}

/**
 * Availability of one field device (a Modbus slave or a serial-line sensor), as its provider
 * (`OpsServer.setDeviceSource`) reports it.
 */
export interface DeviceStatus {
  name: string;
  online: boolean;
  /** Failed polls since start. */
  pollErrors: number;
  lastError: string | null;
}

export interface ListenerStatus {
  name: string;
  protocol: string;
  host: string;
  /** The bound port, or the configured one when the listener is not bound. */
  port: number;
  bound: boolean;
  connections: number;
}

/** Counts indexed by QoS: [QoS 0, QoS 1, QoS 2]. */
export type PerQos = [number, number, number];

export interface StoreStatus {
  writable: boolean;
  sizeBytes: number;
  /** `persistence.max_database_bytes`; 0 means no bound. */
  maxBytes: number;
  /** Bytes the whole process wrote to storage (Linux /proc/self/io), 0 when unknown. */
  processBytesWritten: number;
  messagesStored: number;
  failedCommits: number;
}

export interface EventLoopLag {
  /** Median event loop delay in seconds over the window. */
  p50Seconds: number;
  p99Seconds: number;
  maxSeconds: number;
}

export interface GatewayStatus {
  version: string;
  pid: number;
  uptimeSeconds: number;
  running: boolean;
  listeners: ListenerStatus[];
  clients: { connected: number; maximum: number; sessions: number; offlineSessions: number; expired: number };
  messages: {
    receivedByQos: PerQos;
    sentByQos: PerQos;
    payloadBytesReceivedByQos: PerQos;
    payloadBytesSentByQos: PerQos;
    dropped: number;
    packetsReceived: number;
    packetsSent: number;
    bytesReceived: number;
    bytesSent: number;
  };
  subscriptions: number;
  retained: { messages: number; bytes: number };
  queuedMessages: number;
  /** Null when persistence is off. */
  store: StoreStatus | null;
  process: {
    residentBytes: number;
    heapUsedBytes: number;
    heapTotalBytes: number;
    externalBytes: number;
    cpuSeconds: number;
    startTimeSeconds: number;
    eventLoopLag: EventLoopLag;
  };
  bridges: BridgeStatus[];
  devices: DeviceStatus[];
  health: { ok: boolean; problems: string[] };
}

/** Sampling interval of the event loop delay histogram, in milliseconds. */
const EVENT_LOOP_RESOLUTION_MS = 20;

/** Collects `GatewayStatus` snapshots from a broker and the optional bridge and device sources. */
export class GatewayStatusCollector {
  private readonly broker: Broker;
  private readonly histogram: IntervalHistogram;
  private bridgeSource: () => BridgeStatus[] = noBridges;
  private deviceSource: () => DeviceStatus[] = noDevices;

  constructor(broker: Broker) {
    this.broker = broker;
    this.histogram = monitorEventLoopDelay({ resolution: EVENT_LOOP_RESOLUTION_MS });
  }

  start(): void {
    this.histogram.enable();
  }

  stop(): void {
    this.histogram.disable();
  }

  setBridgeSource(source: () => BridgeStatus[]): void {
    this.bridgeSource = source;
  }

  setDeviceSource(source: () => DeviceStatus[]): void {
    this.deviceSource = source;
  }

  /**
   * Takes a snapshot. The event loop figures cover the time since the last call with
   * `resetLag` set (the `/metrics` scrape), or since start.
   */
  collect(resetLag = false): GatewayStatus {
    const broker = this.broker;
    const stats = broker.stats;
    const listeners = this.listenerStatus();
    const store = storeStatus(broker);
    const connected = stats.clientsConnected;
    const status: GatewayStatus = {
      version: OUTPOST_VERSION,
      pid: process.pid,
      uptimeSeconds: Math.floor((Date.now() - stats.startedAt) / 1000),
      running: broker.isRunning,
      listeners,
      clients: {
        connected,
        maximum: stats.clientsMaximum,
        sessions: broker.sessionCount,
        offlineSessions: Math.max(0, broker.sessionCount - connected),
        expired: stats.clientsExpired,
      },
      messages: {
        receivedByQos: perQos(stats.publishReceivedByQos),
        sentByQos: perQos(stats.publishSentByQos),
        payloadBytesReceivedByQos: perQos(stats.publishBytesReceivedByQos),
        payloadBytesSentByQos: perQos(stats.publishBytesSentByQos),
        dropped: stats.publishDropped,
        packetsReceived: stats.messagesReceived,
        packetsSent: stats.messagesSent,
        bytesReceived: stats.bytesReceived,
        bytesSent: stats.bytesSent,
      },
      subscriptions: broker.subscriptionCount,
      retained: { messages: broker.retained.size, bytes: broker.retained.bytes },
      queuedMessages: broker.queuedMessageCount(),
      store,
      process: this.processStatus(stats.startedAt, resetLag),
      bridges: this.bridgeSource(),
      devices: this.deviceSource(),
      health: { ok: true, problems: [] },
    };
    status.health = checkHealth(status);
    return status;
  }

  private listenerStatus(): ListenerStatus[] {
    const broker = this.broker;
    const addresses = broker.listenerAddresses();
    return broker.config.listeners.map((settings, index) => {
      // Listener.address() returns null once its server is closed, although its type excludes null.
      const address = addresses[index] as ReturnType<Broker['listenerAddresses']>[number] | null | undefined;
      const bound = address !== undefined && address !== null;
      return {
        name: settings.name,
        protocol: settings.protocol,
        host: settings.host,
        port: bound ? address.port : settings.port,
        bound,
        connections: broker.connectionCount(settings),
      };
    });
  }

  private processStatus(startedAt: number, resetLag: boolean): GatewayStatus['process'] {
    const memory = process.memoryUsage();
    const cpu = process.cpuUsage();
    const histogram = this.histogram;
    // The histogram records nanoseconds; with no sample yet its percentiles are 0 but min is huge.
    const sampled = histogram.count > 0;
    const eventLoopLag: EventLoopLag = {
      p50Seconds: sampled ? histogram.percentile(50) / 1e9 : 0,
      p99Seconds: sampled ? histogram.percentile(99) / 1e9 : 0,
      maxSeconds: sampled ? histogram.max / 1e9 : 0,
    };
    if (resetLag) histogram.reset();
    return {
      residentBytes: memory.rss,
      heapUsedBytes: memory.heapUsed,
      heapTotalBytes: memory.heapTotal,
      externalBytes: memory.external,
      cpuSeconds: (cpu.user + cpu.system) / 1e6,
      startTimeSeconds: Math.floor(startedAt / 1000),
      eventLoopLag,
    };
  }
}

/** Lists why the gateway is unhealthy: broker stopped, a listener not bound, the store refusing writes. */
export function checkHealth(status: Omit<GatewayStatus, 'health'>): { ok: boolean; problems: string[] } {
  const problems: string[] = [];
  if (!status.running) problems.push('the broker is not running (starting or stopping)');
  for (const listener of status.listeners) {
    if (!listener.bound) problems.push(`listener ${listener.name} (${listener.protocol} on ${listener.host}:${listener.port}) is not listening`);
  }
  const store = status.store;
  if (store !== null && !store.writable) {
    const bound = store.maxBytes > 0 ? ` (persistence.max_database_bytes is ${store.maxBytes}, the file has ${store.sizeBytes})` : '';
    problems.push(`the state database is full${bound}, so QoS 1/2 messages are rejected; free disk space or raise the bound`);
  }
  return { ok: problems.length === 0, problems };
}

function storeStatus(broker: Broker): StoreStatus | null {
  const store = broker.store;
  if (store === null) return null;
  return {
    writable: store.writable,
    sizeBytes: store.databaseBytes(),
    maxBytes: broker.config.persistence.max_database_bytes,
    processBytesWritten: Store.processBytesWritten(),
    messagesStored: store.messagesStored,
    failedCommits: store.failedCommits,
  };
}

function perQos(values: readonly number[]): PerQos {
  return [values[0] ?? 0, values[1] ?? 0, values[2] ?? 0];
}

function noBridges(): BridgeStatus[] {
  return [];
}

function noDevices(): DeviceStatus[] {
  return [];
}
