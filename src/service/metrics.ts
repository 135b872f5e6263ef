/**
 * Rendering of a `GatewayStatus` in the Prometheus text exposition format (version 0.0.4):
 * `# HELP` and `# TYPE` lines, then one sample per line. Counters end in `_total` and sizes
 * are in bytes and seconds, as Prometheus's naming guide asks.
 */

import type { BridgeStatus, GatewayStatus, PerQos } from './gateway-status.js';

export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

type MetricType = 'counter' | 'gauge';
type Labels = Record<string, string>;

/** Accumulates metric families; every family is written once with its samples together. */
class MetricsWriter {
  private text = '';

  family(name: string, type: MetricType, help: string, samples: ReadonlyArray<[Labels, number]>): void {
    if (samples.length === 0) return;
    this.text += `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n`;
    for (const [labels, value] of samples) this.text += `${name}${formatLabels(labels)} ${formatValue(value)}\n`;
  }

  single(name: string, type: MetricType, help: string, value: number): void {
    this.family(name, type, help, [[{}, value]]);
  }

  toString(): string {
    return this.text;
  }
}

/** Renders every metric of the gateway. */
export function renderMetrics(status: GatewayStatus): string {
  const writer = new MetricsWriter();
  writeBrokerMetrics(writer, status);
  writeMessageMetrics(writer, status);
  writeStoreMetrics(writer, status);
  writeBridgeMetrics(writer, status);
  writeDeviceMetrics(writer, status);
  writeProcessMetrics(writer, status);
  return writer.toString();
}

function writeBrokerMetrics(writer: MetricsWriter, status: GatewayStatus): void {
  writer.family('outpost_build_info', 'gauge', 'Outpost version; the value is always 1.', [[{ version: status.version }, 1]]);
  writer.single('outpost_up', 'gauge', '1 while the broker runs, 0 while it starts or stops.', status.running ? 1 : 0);
  writer.single('outpost_healthy', 'gauge', '1 when /healthz returns 200, else 0.', status.health.ok ? 1 : 0);
  writer.family(
    'outpost_listener_up',
    'gauge',
    '1 when the listener is bound and accepting connections.',
    status.listeners.map((listener) => [{ listener: listener.name, protocol: listener.protocol }, listener.bound ? 1 : 0]),
  );
  writer.family(
    'outpost_listener_connections',
    'gauge',
    'Open network connections per listener, including those that have not sent CONNECT yet.',
    status.listeners.map((listener) => [{ listener: listener.name, protocol: listener.protocol }, listener.connections]),
  );
  const clients = status.clients;
  writer.single('outpost_clients_connected', 'gauge', 'Clients connected (CONNACK sent).', clients.connected);
  writer.single('outpost_clients_maximum', 'gauge', 'Highest number of clients connected at once since start.', clients.maximum);
  writer.single('outpost_sessions', 'gauge', 'Sessions, connected or kept for a disconnected client.', clients.sessions);
  writer.single('outpost_sessions_offline', 'gauge', 'Sessions kept for a disconnected client.', clients.offlineSessions);
  writer.single('outpost_sessions_expired_total', 'counter', 'Sessions that expired since start.', clients.expired);
  writer.single('outpost_subscriptions', 'gauge', 'Subscriptions of all sessions.', status.subscriptions);
  writer.single('outpost_retained_messages', 'gauge', 'Retained messages.', status.retained.messages);
  writer.single('outpost_retained_bytes', 'gauge', 'Payload bytes of the retained messages.', status.retained.bytes);
  writer.single('outpost_queued_messages', 'gauge', 'Messages waiting in session queues.', status.queuedMessages);
}

function writeMessageMetrics(writer: MetricsWriter, status: GatewayStatus): void {
  const messages = status.messages;
  writer.family('outpost_publish_received_total', 'counter', 'PUBLISH packets received from network clients, by QoS.', byQos(messages.receivedByQos));
  writer.family('outpost_publish_sent_total', 'counter', 'PUBLISH packets sent to network clients, by QoS.', byQos(messages.sentByQos));
  writer.family(
    'outpost_publish_received_payload_bytes_total',
    'counter',
    'Payload bytes of PUBLISH packets received from network clients, by QoS.',
    byQos(messages.payloadBytesReceivedByQos),
  );
  writer.family(
    'outpost_publish_sent_payload_bytes_total',
    'counter',
    'Payload bytes of PUBLISH packets sent to network clients, by QoS.',
    byQos(messages.payloadBytesSentByQos),
  );
  writer.single('outpost_publish_dropped_total', 'counter', 'Messages dropped because a session queue was full or QoS 0 was not queued.', messages.dropped);
  writer.single('outpost_packets_received_total', 'counter', 'MQTT control packets of every type received.', messages.packetsReceived);
  writer.single('outpost_packets_sent_total', 'counter', 'MQTT control packets of every type sent.', messages.packetsSent);
  writer.single('outpost_network_received_bytes_total', 'counter', 'Bytes read from client connections.', messages.bytesReceived);
  writer.single('outpost_network_sent_bytes_total', 'counter', 'Bytes written to client connections.', messages.bytesSent);
}

function writeStoreMetrics(writer: MetricsWriter, status: GatewayStatus): void {
  const store = status.store;
  writer.single('outpost_store_enabled', 'gauge', '1 when persistence is on.', store === null ? 0 : 1);
  if (store === null) return;
  writer.single('outpost_store_writable', 'gauge', '0 while the state database is full and QoS 1/2 messages are refused.', store.writable ? 1 : 0);
  writer.single('outpost_store_size_bytes', 'gauge', 'Size of the state database file, without its WAL.', store.sizeBytes);
  writer.single('outpost_store_max_bytes', 'gauge', 'persistence.max_database_bytes; 0 means no bound.', store.maxBytes);
  writer.single(
    'outpost_process_written_bytes_total',
    'counter',
    'Bytes the process wrote to storage (Linux /proc/self/io write_bytes), mostly the state database.',
    store.processBytesWritten,
  );
  writer.single('outpost_store_messages_total', 'counter', 'Messages written to the state database since start.', store.messagesStored);
  writer.single('outpost_store_failed_commits_total', 'counter', 'Commits to the state database that failed.', store.failedCommits);
}

// Empty, and so left out, when no bridge is configured.
function writeBridgeMetrics(writer: MetricsWriter, status: GatewayStatus): void {
  const bridges = status.bridges;
  writer.family('outpost_bridge_connected', 'gauge', '1 while the bridge is connected to its remote broker.', bridges.map((bridge) => [{ bridge: bridge.name }, bridge.connected ? 1 : 0]));
  writer.family('outpost_bridge_backlog_messages', 'gauge', 'Messages waiting in the bridge outbox.', bridges.map((bridge) => [{ bridge: bridge.name }, bridge.backlogMessages]));
  writer.family('outpost_bridge_backlog_bytes', 'gauge', 'Payload bytes waiting in the bridge outbox.', bridges.map((bridge) => [{ bridge: bridge.name }, bridge.backlogBytes]));
  writer.family(
    'outpost_bridge_dropped_total',
    'counter',
    'Messages dropped from the bridge outbox because a bound was reached.',
    bridges.map((bridge) => [{ bridge: bridge.name }, bridge.droppedMessages]),
  );
  const perBridge = (read: (bridge: BridgeStatus) => number): Array<[Labels, number]> => bridges.map((bridge) => [{ bridge: bridge.name }, read(bridge)]);
  writer.family('outpost_bridge_oldest_message_age_seconds', 'gauge', 'Age of the oldest message in the bridge outbox, 0 when it is empty.', perBridge((bridge) => bridge.oldestAgeSeconds));
  writer.family('outpost_bridge_sent_total', 'counter', 'PUBLISH packets the bridge wrote to its remote broker, resends included.', perBridge((bridge) => bridge.sentMessages));
  writer.family('outpost_bridge_acknowledged_total', 'counter', 'Messages the remote broker acknowledged.', perBridge((bridge) => bridge.acknowledgedMessages));
  writer.family('outpost_bridge_rejected_total', 'counter', 'Messages the remote broker rejected with a reason code of 0x80 or above.', perBridge((bridge) => bridge.rejectedMessages));
  writer.family('outpost_bridge_received_total', 'counter', 'Messages received from the remote broker and routed locally.', perBridge((bridge) => bridge.receivedMessages));
  writer.family('outpost_bridge_reconnects_total', 'counter', 'Connections to the remote broker after the first one.', perBridge((bridge) => bridge.reconnects));
}

// Empty, and so left out, when no field device is configured.
function writeDeviceMetrics(writer: MetricsWriter, status: GatewayStatus): void {
  const devices = status.devices;
  writer.family('outpost_device_online', 'gauge', '1 while the field device answers its polls.', devices.map((device) => [{ device: device.name }, device.online ? 1 : 0]));
  writer.family('outpost_device_poll_errors_total', 'counter', 'Failed polls of the field device.', devices.map((device) => [{ device: device.name }, device.pollErrors]));
}

function writeProcessMetrics(writer: MetricsWriter, status: GatewayStatus): void {
  const proc = status.process;
  const lag = proc.eventLoopLag;
  writer.family('outpost_event_loop_lag_seconds', 'gauge', 'Event loop delay since the previous scrape, by quantile.', [
    [{ quantile: '0.5' }, lag.p50Seconds],
    [{ quantile: '0.99' }, lag.p99Seconds],
    [{ quantile: '1' }, lag.maxSeconds],
  ]);
  writer.single('process_resident_memory_bytes', 'gauge', 'Resident set size.', proc.residentBytes);
  writer.single('process_cpu_seconds_total', 'counter', 'User and system CPU time.', proc.cpuSeconds);
  writer.single('process_start_time_seconds', 'gauge', 'Start time of the broker in seconds since the Unix epoch.', proc.startTimeSeconds);
  writer.single('nodejs_heap_used_bytes', 'gauge', 'V8 heap in use.', proc.heapUsedBytes);
  writer.single('nodejs_heap_total_bytes', 'gauge', 'V8 heap reserved.', proc.heapTotalBytes);
  writer.single('nodejs_external_memory_bytes', 'gauge', 'Memory of C++ objects bound to JavaScript objects, including Buffers.', proc.externalBytes);
}

function byQos(values: PerQos): Array<[Labels, number]> {
  return values.map((value, qos) => [{ qos: String(qos) }, value]);
}

function formatLabels(labels: Labels): string {
  const keys = Object.keys(labels);
  if (keys.length === 0) return '';
  return `{${keys.map((key) => `${key}="${escapeLabelValue(labels[key] ?? '')}"`).join(',')}}`;
}

/** Escapes a label value as the text format requires: backslash, double quote and line feed. */
function escapeLabelValue(value: string): string {
  return value.replace(/[\\"\n]/g, (char) => (char === '\n' ? '\\n' : `\\${char}`));
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (!Number.isFinite(value)) return value > 0 ? '+Inf' : '-Inf';
  return String(value);
}
