// The operations endpoints over real HTTP on 127.0.0.1: /metrics in Prometheus text format,
// /healthz with its reasons, /status as JSON, against a broker with real MQTT clients.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { Broker } from '../src/broker/broker.js';
import type { OutpostConfig } from '../src/config/schema.js';
import type { GatewayStatus } from '../src/service/gateway-status.js';
import { formatStatus } from '../src/cli/status.js';
import { OpsListenError, OpsServer } from '../src/service/http.js';
import { silentLogger } from '../src/service/logger.js';
import { buildTestConfig, connectMqttJs, endMqttJs } from './helpers/broker.js';
import { RawClient } from './helpers/raw-client.js';
import { waitFor } from './helpers/wait.js';

const QUOTA_EXCEEDED = 0x97;

let directory = '';
let broker: Broker | null = null;
let ops: OpsServer | null = null;
const rawClients: RawClient[] = [];

beforeEach(() => {
  directory = mkdtempSync(join(tmpdir(), 'outpost-ops-'));
});

afterEach(async () => {
  for (const client of rawClients.splice(0)) client.close();
  await ops?.close();
  ops = null;
  await broker?.stop();
  broker = null;
  rmSync(directory, { recursive: true, force: true });
});

/** Starts a broker and its operations endpoint, both on 127.0.0.1 with ports chosen by the system. */
async function startGateway(adjust: (config: OutpostConfig) => void = () => undefined): Promise<{ mqttPort: number; baseUrl: string }> {
  const config = buildTestConfig({ data_dir: join(directory, 'data') });
  config.http = { enabled: true, host: '127.0.0.1', port: 0 };
  adjust(config);
  broker = new Broker(config, silentLogger());
  await broker.start();
  ops = new OpsServer(config.http, broker, silentLogger());
  await ops.listen();
  return { mqttPort: broker.listenerAddresses()[0].port, baseUrl: `http://127.0.0.1:${ops.address().port}` };
}

/** Returns the value of one sample, e.g. `sample(text, 'outpost_publish_received_total{qos="1"}')`. */
function sample(metrics: string, series: string): number | undefined {
  for (const line of metrics.split('\n')) {
    if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1));
  }
  return undefined;
}

async function getText(url: string): Promise<{ status: number; type: string | null; body: string }> {
  const response = await fetch(url);
  return { status: response.status, type: response.headers.get('content-type'), body: await response.text() };
}

describe('/metrics', () => {
  it('counts messages by QoS', async () => {
    const { mqttPort, baseUrl } = await startGateway();
    const url = `mqtt://127.0.0.1:${mqttPort}`;
    const subscriber = await connectMqttJs(url, { clientId: 'metrics-sub' });
    await subscriber.subscribeAsync('m/#', { qos: 1 });
    const publisher = await connectMqttJs(url, { clientId: 'metrics-pub' });
    let received = 0;
    subscriber.on('message', () => received++);
    await publisher.publishAsync('m/a', Buffer.alloc(10), { qos: 0 });
    await publisher.publishAsync('m/a', Buffer.alloc(10), { qos: 0 });
    await publisher.publishAsync('m/b', Buffer.alloc(20), { qos: 1 });
    await waitFor(() => received === 3, 2000, 'three deliveries');

    const { status, type, body } = await getText(`${baseUrl}/metrics`);
    expect(status).toBe(200);
    expect(type).toBe('text/plain; version=0.0.4; charset=utf-8');
    expect(sample(body, 'outpost_publish_received_total{qos="0"}')).toBe(2);
    expect(sample(body, 'outpost_publish_received_total{qos="1"}')).toBe(1);
    expect(sample(body, 'outpost_publish_received_total{qos="2"}')).toBe(0);
    expect(sample(body, 'outpost_publish_received_payload_bytes_total{qos="0"}')).toBe(20);
    expect(sample(body, 'outpost_publish_received_payload_bytes_total{qos="1"}')).toBe(20);
    expect(sample(body, 'outpost_publish_sent_total{qos="0"}')).toBe(2);
    expect(sample(body, 'outpost_publish_sent_total{qos="1"}')).toBe(1);
    expect(sample(body, 'outpost_publish_sent_payload_bytes_total{qos="1"}')).toBe(20);
    expect(sample(body, 'outpost_clients_connected')).toBe(2);
    expect(sample(body, 'outpost_subscriptions')).toBe(1);
    expect(sample(body, 'outpost_listener_connections{listener="default",protocol="mqtt"}')).toBe(2);
    expect(sample(body, 'outpost_listener_up{listener="default",protocol="mqtt"}')).toBe(1);
    expect(sample(body, 'outpost_store_writable')).toBe(1);
    expect(sample(body, 'outpost_healthy')).toBe(1);
    expect(sample(body, 'process_resident_memory_bytes')).toBeGreaterThan(0);
    expect(body).toContain('# TYPE outpost_publish_received_total counter\n');
    expect(body).toMatch(/^outpost_event_loop_lag_seconds\{quantile="0.99"\} [0-9.e-]+$/m);

    await endMqttJs(publisher);
    await endMqttJs(subscriber);
  });

  it('writes every sample line in the text format', async () => {
    const { baseUrl } = await startGateway();
    const { body } = await getText(`${baseUrl}/metrics`);
    const lines = body.trimEnd().split('\n');
    for (const line of lines) {
      expect(line).toMatch(/^(# (HELP|TYPE) [a-z_]+ .+|[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+-]+)$/);
    }
    // Each family is declared once.
    const types = lines.filter((line) => line.startsWith('# TYPE '));
    expect(new Set(types).size).toBe(types.length);
  });

  it('reports store metrics only with persistence on', async () => {
    const { baseUrl } = await startGateway((config) => {
      config.persistence.enabled = false;
    });
    const { body } = await getText(`${baseUrl}/metrics`);
    expect(sample(body, 'outpost_store_enabled')).toBe(0);
    expect(sample(body, 'outpost_store_size_bytes')).toBeUndefined();
  });
});

describe('/healthz', () => {
  it('returns 200 ok when healthy', async () => {
    const { baseUrl } = await startGateway();
    const { status, body } = await getText(`${baseUrl}/healthz`);
    expect(status).toBe(200);
    expect(body).toBe('ok\n');
  });

  it('returns 503 while the store is full', async () => {
    const { mqttPort, baseUrl } = await startGateway((config) => {
      config.persistence.max_database_bytes = 256 * 1024;
    });
    const client = await RawClient.connect(mqttPort, { protocolVersion: 5 });
    rawClients.push(client);
    await client.connectMqtt({ clientId: 'filler', clean: true });
    // Retained messages are stored; 256 KiB has room for far fewer than 200 of 4 KiB.
    let reasonCode = 0;
    for (let packetId = 1; packetId <= 200 && reasonCode !== QUOTA_EXCEEDED; packetId++) {
      client.send({ cmd: 'publish', topic: `fill/${packetId}`, payload: Buffer.alloc(4096, 1), qos: 1, messageId: packetId, retain: true, dup: false });
      reasonCode = (await client.expectPacket('puback', 5000)).reasonCode ?? 0;
    }
    expect(reasonCode).toBe(QUOTA_EXCEEDED);

    const { status, body } = await getText(`${baseUrl}/healthz`);
    expect(status).toBe(503);
    expect(body).toContain('the state database is full');
    expect(body).toContain('persistence.max_database_bytes is 262144');
    const metrics = await getText(`${baseUrl}/metrics`);
    expect(sample(metrics.body, 'outpost_store_writable')).toBe(0);
    expect(sample(metrics.body, 'outpost_healthy')).toBe(0);
  });

  it('returns 503 once the listeners are closed', async () => {
    const { baseUrl } = await startGateway();
    await broker?.stop();
    const { status, body } = await getText(`${baseUrl}/healthz`);
    expect(status).toBe(503);
    expect(body).toContain('the broker is not running');
    expect(body).toContain('listener default (mqtt on 127.0.0.1:0) is not listening');
  });
});

describe('/status', () => {
  it('returns the snapshot as JSON', async () => {
    const { mqttPort, baseUrl } = await startGateway();
    const client = await connectMqttJs(`mqtt://127.0.0.1:${mqttPort}`, { clientId: 'status-client' });
    const response = await fetch(`${baseUrl}/status`);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe('application/json');
    const status = (await response.json()) as GatewayStatus;
    expect(status.pid).toBe(process.pid);
    expect(status.running).toBe(true);
    expect(status.health).toEqual({ ok: true, problems: [] });
    expect(status.listeners).toEqual([{ name: 'default', protocol: 'mqtt', host: '127.0.0.1', port: mqttPort, bound: true, connections: 1 }]);
    expect(status.clients.connected).toBe(1);
    expect(status.store?.writable).toBe(true);
    expect(status.bridges).toEqual([]);
    expect(status.devices).toEqual([]);
    await endMqttJs(client);
  });

  it('includes registered bridge and device sources', async () => {
    const { baseUrl } = await startGateway();
    ops?.setBridgeSource(() => [
      {
        name: 'cloud',
        connected: false,
        backlogMessages: 12,
        backlogBytes: 3400,
        droppedMessages: 1,
        oldestAgeSeconds: 30,
        sentMessages: 500,
        acknowledgedMessages: 488,
        rejectedMessages: 2,
        receivedMessages: 7,
        reconnects: 3,
        lastError: 'ECONNREFUSED',
      },
    ]);
    ops?.setDeviceSource(() => [{ name: 'pump-1', online: false, pollErrors: 4, lastError: 'timeout' }]);
    const status = (await (await fetch(`${baseUrl}/status`)).json()) as GatewayStatus;
    expect(status.bridges[0]?.backlogMessages).toBe(12);
    expect(status.devices[0]?.online).toBe(false);
    const { body } = await getText(`${baseUrl}/metrics`);
    expect(sample(body, 'outpost_bridge_backlog_messages{bridge="cloud"}')).toBe(12);
    expect(sample(body, 'outpost_bridge_connected{bridge="cloud"}')).toBe(0);
    expect(sample(body, 'outpost_bridge_oldest_message_age_seconds{bridge="cloud"}')).toBe(30);
    expect(sample(body, 'outpost_bridge_sent_total{bridge="cloud"}')).toBe(500);
    expect(sample(body, 'outpost_bridge_acknowledged_total{bridge="cloud"}')).toBe(488);
    expect(sample(body, 'outpost_bridge_rejected_total{bridge="cloud"}')).toBe(2);
    expect(sample(body, 'outpost_bridge_received_total{bridge="cloud"}')).toBe(7);
    expect(sample(body, 'outpost_bridge_reconnects_total{bridge="cloud"}')).toBe(3);
    expect(sample(body, 'outpost_device_online{device="pump-1"}')).toBe(0);
    expect(sample(body, 'outpost_device_poll_errors_total{device="pump-1"}')).toBe(4);

    const text = formatStatus(status);
    expect(text).toContain('  cloud        DISCONNECTED, backlog 12 messages (3.3 KiB), dropped 1, last error: ECONNREFUSED\n');
    expect(text).toContain('Devices:   0 online, 1 offline\n');
    expect(text).toContain('  pump-1       offline, 4 poll errors, last error: timeout\n');
  });
});

describe('operations endpoint', () => {
  it('answers unknown paths with 404', async () => {
    const { baseUrl } = await startGateway();
    const { status, body } = await getText(`${baseUrl}/nothing`);
    expect(status).toBe(404);
    expect(body).toContain('/metrics, /healthz, /status');
  });

  it('rejects methods other than GET', async () => {
    const { baseUrl } = await startGateway();
    const response = await fetch(`${baseUrl}/metrics`, { method: 'POST', body: 'x' });
    expect(response.status).toBe(405);
    expect(response.headers.get('allow')).toBe('GET, HEAD');
  });

  it('names the setting when its port is taken', async () => {
    const { baseUrl } = await startGateway();
    const second = new OpsServer({ enabled: true, host: '127.0.0.1', port: Number(new URL(baseUrl).port) }, broker as Broker, silentLogger());
    const error = await second.listen().then(
      () => null,
      (caught: unknown) => caught,
    );
    expect(error).toBeInstanceOf(OpsListenError);
    expect((error as Error).message).toContain('choose another http.port');
  });
});
