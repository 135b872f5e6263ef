import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { IClientOptions, MqttClient } from 'mqtt';
import { connectMqttJs, endMqttJs } from './helpers/broker.js';
import { createTestCertificates, type TestCertificates } from './helpers/certs.js';
import { RemoteCounter, RemoteMosquitto, startBridgedBroker, type BridgedBroker } from './helpers/remote-mosquitto.js';
import { delay, waitFor } from './helpers/wait.js';

const cleanups: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function remote(options: Parameters<typeof RemoteMosquitto.start>[0] = {}): Promise<RemoteMosquitto> {
  const instance = await RemoteMosquitto.start(options);
  cleanups.push(() => instance.remove());
  return instance;
}

async function counter(url: string, filter: string, options: IClientOptions = {}): Promise<RemoteCounter> {
  const instance = await RemoteCounter.connect(url, filter, options);
  cleanups.push(() => instance.close());
  return instance;
}

async function bridged(itemYaml: string): Promise<BridgedBroker> {
  const instance = await startBridgedBroker(itemYaml);
  cleanups.push(() => instance.stop());
  return instance;
}

async function client(url: string, options: IClientOptions = {}): Promise<MqttClient> {
  const instance = await connectMqttJs(url, options);
  cleanups.push(() => endMqttJs(instance, true));
  return instance;
}

function numbered(prefix: string, count: number): string[] {
  return Array.from({ length: count }, (_, index) => `${prefix}-${index}`);
}

/** Collects the payloads a client receives on `filter`. */
async function collect(target: MqttClient, filter: string): Promise<string[]> {
  const payloads: string[] = [];
  target.on('message', (_topic, payload) => payloads.push(payload.toString()));
  await target.subscribeAsync(filter, { qos: 1 });
  return payloads;
}

const FAST_RECONNECT = `reconnect:
  base_ms: 50
  max_ms: 200`;

describe('bridge outbox bounds', () => {
  it('drop_oldest keeps the newest', async () => {
    const cloud = await remote({ persistence: true });
    const subscriber = await counter(cloud.url, 'b/#');
    await cloud.stop();
    const outpost = await bridged(`name: cloud
addresses: ["${cloud.address}"]
topics:
  - pattern: "b/#"
outbox:
  max_messages: 100
${FAST_RECONNECT}`);
    const publisher = await client(outpost.test.url);
    const payloads = numbered('d', 150);
    await Promise.all(payloads.map((payload) => publisher.publishAsync('b/1', payload, { qos: 1 })));
    await waitFor(() => outpost.bridge.metrics().dropped === 50, 2000, '50 dropped messages');
    expect(outpost.bridge.metrics().backlogMessages).toBe(100);

    await cloud.start();
    const newest = payloads.slice(50);
    await subscriber.waitForAll(newest, 10_000);
    await delay(100);
    const report = subscriber.report(newest);
    expect(report).toMatchObject({ missing: [], duplicates: 0, outOfOrder: 0 });
    expect(subscriber.payloads).not.toContain('d-0');
    expect(subscriber.payloads).not.toContain('d-49');
  });

  it('reject_new answers v5 publishers with 0x97', async () => {
    const outpost = await bridged(`name: cloud
addresses: ["127.0.0.1:1"]
topics:
  - pattern: "r/#"
outbox:
  max_messages: 100
  when_full: reject_new
${FAST_RECONNECT}`);
    const publisher = await client(outpost.test.url, { protocolVersion: 5 });
    const outcomes = await Promise.all(
      numbered('r', 120).map(
        (payload) =>
          new Promise<number>((resolve) => {
            publisher.publish('r/1', payload, { qos: 1 }, (error) => {
              resolve(error === undefined || error === null ? 0 : Number((error as { code?: number }).code));
            });
          }),
      ),
    );
    expect(outcomes.filter((code) => code === 0)).toHaveLength(100);
    expect(outcomes.filter((code) => code === 0x97)).toHaveLength(20);
    expect(outpost.bridge.metrics().dropped).toBe(20);
    expect(outpost.bridge.metrics().backlogMessages).toBe(100);
  });
});

describe('bridge drain settings', () => {
  it('max_rate caps the messages per second', async () => {
    const cloud = await remote();
    const subscriber = await counter(cloud.url, 'rate/#');
    const outpost = await bridged(`name: cloud
addresses: ["${cloud.address}"]
topics:
  - pattern: "rate/#"
drain:
  max_rate: 100
${FAST_RECONNECT}`);
    await waitFor(() => outpost.bridge.metrics().connected, 3000, 'the bridge to connect');
    const publisher = await client(outpost.test.url);
    const payloads = numbered('rate', 150);
    const started = Date.now();
    await Promise.all(payloads.map((payload) => publisher.publishAsync('rate/1', payload, { qos: 1 })));
    await subscriber.waitForAll(payloads, 5000);
    // 100 messages of burst allowance at most, then 100 per second: at least 0.5 s for 150.
    expect(Date.now() - started).toBeGreaterThanOrEqual(450);
    expect(subscriber.report(payloads)).toMatchObject({ missing: [], outOfOrder: 0 });
  });

  it('live_first overtakes the backlog', async () => {
    const cloud = await remote({ persistence: true });
    const subscriber = await counter(cloud.url, 'lf/#');
    await cloud.stop();
    const outpost = await bridged(`name: cloud
addresses: ["${cloud.address}"]
topics:
  - pattern: "lf/#"
drain:
  order: live_first
  max_rate: 200
  batch_size: 50
${FAST_RECONNECT}`);
    const publisher = await client(outpost.test.url);
    const backlog = numbered('old', 600);
    await Promise.all(backlog.map((payload) => publisher.publishAsync('lf/1', payload, { qos: 1 })));
    await cloud.start();
    await waitFor(() => subscriber.payloads.length >= 10, 5000, 'the drain to start');
    await publisher.publishAsync('lf/1', 'live', { qos: 1 });
    await subscriber.waitForAll(['live'], 3000);
    // The live message overtook most of the backlog, which still arrives complete and in order.
    expect(subscriber.payloads.indexOf('live')).toBeLessThan(300);
    await subscriber.waitForAll(backlog, 10_000);
    const report = subscriber.report(backlog);
    expect(report).toMatchObject({ missing: [], duplicates: 0, outOfOrder: 0 });
  });
});

describe('bridge topics', () => {
  it('inbound topics with prefixes', async () => {
    const cloud = await remote();
    const outpost = await bridged(`name: cloud
addresses: ["${cloud.address}"]
topics:
  - pattern: "cmd/#"
    direction: in
    qos: 1
    local_prefix: site/
    remote_prefix: fleet/gw-1/
  - pattern: "#"
    direction: out
    local_prefix: up/
${FAST_RECONNECT}`);
    await waitFor(() => outpost.bridge.metrics().connected, 3000, 'the bridge to connect');
    const local = await client(outpost.test.url);
    const received = await collect(local, 'site/#');
    const cloudClient = await client(cloud.url);
    await cloudClient.publishAsync('fleet/gw-1/cmd/valve', 'open', { qos: 1 });
    await cloudClient.publishAsync('fleet/gw-2/cmd/valve', 'not for us', { qos: 1 });
    await cloudClient.publishAsync('fleet/gw-1/cmd/setpoint', '21.5', { qos: 1, retain: true });
    await waitFor(() => received.length >= 2, 3000, 'two inbound messages');
    await delay(100);
    expect(received).toEqual(['open', '21.5']);

    // The retained flag survives the link (Retain As Published), so late local subscribers get it.
    const late = await client(outpost.test.url);
    const retained = await collect(late, 'site/cmd/setpoint');
    await waitFor(() => retained.length === 1, 2000, 'the retained inbound message');
    expect(retained).toEqual(['21.5']);
    expect(outpost.bridge.metrics().received).toBe(2);
  });

  it('refuses a client with the bridge id', async () => {
    const cloud = await remote();
    const outpost = await bridged(`name: cloud
addresses: ["${cloud.address}"]
topics:
  - pattern: "id/#"
${FAST_RECONNECT}`);
    await waitFor(() => outpost.bridge.metrics().connected, 3000, 'the bridge to connect');
    await expect(connectMqttJs(outpost.test.url, { protocolVersion: 5, clientId: '$bridge/cloud' })).rejects.toThrow(/Client Identifier not valid|0x85|133/i);

    // The bridge kept its session and still forwards.
    const publisher = await client(outpost.test.url);
    await publisher.publishAsync('id/after', 'still bridged', { qos: 1 });
    await waitFor(() => outpost.bridge.metrics().acknowledged === 1, 3000, 'the message to be forwarded');
  });

  it('RETAIN crosses the link outward', async () => {
    const cloud = await remote();
    const outpost = await bridged(`name: cloud
addresses: ["${cloud.address}"]
topics:
  - pattern: "ret/#"
${FAST_RECONNECT}`);
    await waitFor(() => outpost.bridge.metrics().connected, 3000, 'the bridge to connect');
    const publisher = await client(outpost.test.url);
    await publisher.publishAsync('ret/state', 'on', { qos: 1, retain: true });
    await publisher.publishAsync('ret/event', 'click', { qos: 1 });
    await waitFor(() => outpost.bridge.metrics().acknowledged === 2, 3000, 'two acknowledged messages');

    // A subscriber that arrives later gets only the retained one.
    const late = await client(cloud.url);
    const received = await collect(late, 'ret/#');
    await waitFor(() => received.length === 1, 2000, 'the retained message');
    await delay(100);
    expect(received).toEqual(['on']);
  });

  it('inbound QoS 2 arrives exactly once', async () => {
    const cloud = await remote();
    const outpost = await bridged(`name: cloud
addresses: ["${cloud.address}"]
topics:
  - pattern: "q/#"
    direction: in
    qos: 2
${FAST_RECONNECT}`);
    await waitFor(() => outpost.bridge.metrics().connected, 3000, 'the bridge to connect');
    const received = await collect(await client(outpost.test.url), 'q/#');
    const cloudClient = await client(cloud.url);
    const payloads = numbered('in', 50);
    for (const payload of payloads) await cloudClient.publishAsync('q/1', payload, { qos: 2 });
    await waitFor(() => received.length >= 50, 3000, '50 inbound messages');
    await delay(100);
    expect(received).toEqual(payloads);
  });

  it('inbound QoS 2 id survives a restart', async () => {
    // A hand-driven remote broker, so the test decides when PUBREL comes: only after a restart.
    const remote = await ScriptedRemote.start();
    cleanups.push(() => remote.close());
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'outpost-bridge-qos2-'));
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    const itemYaml = `name: cloud
addresses: ["127.0.0.1:${remote.port}"]
topics:
  - pattern: "q/#"
    direction: in
    qos: 2
${FAST_RECONNECT}`;

    const first = await startBridgedBroker(itemYaml, { data_dir: dataDir });
    const firstReceived = await collect(await client(first.test.url), 'q/#');
    await remote.waitFor('subscribe');
    remote.publish(7, 'q/1', 'once', false);
    await remote.waitFor('pubrec');
    await waitFor(() => firstReceived.length === 1, 2000, 'the message at the first run');
    // The gateway stops before PUBREL arrives.
    await first.stop();

    const second = await startBridgedBroker(itemYaml, { data_dir: dataDir });
    cleanups.push(() => second.stop());
    const secondReceived = await collect(await client(second.test.url), 'q/#');
    await remote.waitFor('subscribe');
    // The remote resends the PUBLISH it has no PUBREC for in this session, then goes on.
    remote.publish(7, 'q/1', 'once', true);
    await remote.waitFor('pubrec');
    remote.send({ cmd: 'pubrel', messageId: 7 });
    await remote.waitFor('pubcomp');
    remote.publish(8, 'q/1', 'next', false);
    await waitFor(() => secondReceived.length >= 1, 2000, 'the next message');
    await delay(100);
    expect(secondReceived).toEqual(['next']);
  });

  it('message id user property', async () => {
    const cloud = await remote();
    const ids: string[] = [];
    const subscriber = await client(cloud.url, { protocolVersion: 5 });
    subscriber.on('message', (_topic, _payload, packet) => {
      const value = packet.properties?.userProperties?.['outpost-message-id'];
      ids.push(typeof value === 'string' ? value : JSON.stringify(value));
    });
    await subscriber.subscribeAsync('m/#', { qos: 1 });
    const outpost = await bridged(`name: cloud
addresses: ["${cloud.address}"]
topics:
  - pattern: "m/#"
message_id:
  enabled: true
  gateway_id: gw-7
${FAST_RECONNECT}`);
    await waitFor(() => outpost.bridge.metrics().connected, 3000, 'the bridge to connect');
    const publisher = await client(outpost.test.url);
    for (const payload of numbered('m', 3)) await publisher.publishAsync('m/1', payload, { qos: 1 });
    await waitFor(() => ids.length === 3, 3000, 'three messages');
    expect(ids).toEqual(['gw-7:1', 'gw-7:2', 'gw-7:3']);
  });

  it.each(['5', '3.1.1'])('two-way bridges do not loop (MQTT %s)', async (version) => {
    const cloud = await remote();
    const rule = `protocol_version: "${version}"
topics:
  - pattern: "shared/#"
    direction: both
    qos: 1
${FAST_RECONNECT}`;
    const first = await bridged(`name: cloud
client_id: gw-a
addresses: ["${cloud.address}"]
${rule}`);
    const second = await bridged(`name: cloud
client_id: gw-b
addresses: ["${cloud.address}"]
${rule}`);
    await waitFor(() => first.bridge.metrics().connected && second.bridge.metrics().connected, 3000, 'both bridges to connect');
    const atCloud = await counter(cloud.url, 'shared/#');
    const atFirst = await collect(await client(first.test.url), 'shared/#');
    const atSecond = await collect(await client(second.test.url), 'shared/#');

    const publisher = await client(first.test.url);
    await publisher.publishAsync('shared/x', 'from-a', { qos: 1 });
    await waitFor(() => atSecond.length >= 1, 3000, 'the message at the second gateway');
    await delay(300);
    expect(atCloud.payloads).toEqual(['from-a']);
    expect(atFirst).toEqual(['from-a']);
    expect(atSecond).toEqual(['from-a']);
    expect(first.bridge.metrics().sent).toBe(1);
    expect(second.bridge.metrics().sent).toBe(0);
  });
});

describe('bridge connection', () => {
  it('failover and return to the primary', async () => {
    const primary = await RemoteMosquitto.create();
    cleanups.push(() => primary.remove());
    const secondary = await remote();
    const outpost = await bridged(`name: cloud
addresses: ["${primary.address}", "${secondary.address}"]
topics:
  - pattern: "f/#"
${FAST_RECONNECT}`);
    await waitFor(() => outpost.bridge.metrics().remote === secondary.address, 3000, 'a connection to the secondary');
    const atSecondary = await counter(secondary.url, 'f/#');
    const publisher = await client(outpost.test.url);
    await publisher.publishAsync('f/1', 'one', { qos: 1 });
    await atSecondary.waitForAll(['one'], 3000);

    await primary.start();
    const atPrimary = await counter(primary.url, 'f/#');
    await secondary.stop();
    await waitFor(() => outpost.bridge.metrics().remote === primary.address, 5000, 'a connection back to the primary');
    await publisher.publishAsync('f/1', 'two', { qos: 1 });
    await atPrimary.waitForAll(['two'], 3000);
    expect(outpost.bridge.metrics().reconnects).toBeGreaterThanOrEqual(1);
  });

  it('probe moves back to the primary', async () => {
    const primary = await RemoteMosquitto.create();
    cleanups.push(() => primary.remove());
    const secondary = await remote();
    const outpost = await bridged(`name: cloud
addresses: ["${primary.address}", "${secondary.address}"]
topics:
  - pattern: "p/#"
reconnect:
  base_ms: 50
  max_ms: 200
  primary_probe_seconds: 1`);
    await waitFor(() => outpost.bridge.metrics().remote === secondary.address, 3000, 'a connection to the secondary');
    await primary.start();
    // The secondary stays up: only the probe can move the bridge back.
    await waitFor(() => outpost.bridge.metrics().remote === primary.address, 4000, 'a connection back to the primary');
    const atPrimary = await counter(primary.url, 'p/#');
    const publisher = await client(outpost.test.url);
    await publisher.publishAsync('p/1', 'back', { qos: 1 });
    await atPrimary.waitForAll(['back'], 3000);
  });

  it('retries after a rejected CONNECT', async () => {
    // With allow_anonymous false and no password file, mosquitto rejects every login.
    const rejecting = await remote({ extraLines: ['allow_anonymous false'] });
    const outpost = await bridged(`name: cloud
addresses: ["${rejecting.address}"]
topics:
  - pattern: "#"
${FAST_RECONNECT}`);
    await waitFor(() => (outpost.bridge.metrics().lastError ?? '').includes('rejected CONNECT'), 3000, 'a rejected CONNECT');
    expect(outpost.bridge.metrics().lastError).toMatch(/not authorized|bad user name/);
    expect(outpost.bridge.metrics().connected).toBe(false);
    const attempts = outpost.bridge.metrics().connectAttempts;
    await waitFor(() => outpost.bridge.metrics().connectAttempts >= attempts + 2, 3000, 'two more attempts');
  });
});

describe('bridge TLS', () => {
  let certificates: TestCertificates;

  beforeAll(async () => {
    certificates = await createTestCertificates();
  }, 30_000);

  afterAll(async () => {
    await certificates.remove();
  });

  it('TLS with a client certificate', async () => {
    const cloud = await remote({
      tls: { caFile: certificates.ca.cert, certFile: certificates.server.cert, keyFile: certificates.server.key, requireCertificate: true },
    });
    const subscriber = await counter(`mqtts://127.0.0.1:${cloud.port}`, 't/#', {
      ca: [await readText(certificates.ca.cert)],
      cert: await readText(certificates.client.cert),
      key: await readText(certificates.client.key),
      rejectUnauthorized: true,
    });
    const outpost = await bridged(`name: cloud
addresses: ["localhost:${cloud.port}"]
tls:
  enabled: true
  ca_file: ${certificates.ca.cert}
  cert_file: ${certificates.client.cert}
  key_file: ${certificates.client.key}
topics:
  - pattern: "t/#"
${FAST_RECONNECT}`);
    await waitFor(() => outpost.bridge.metrics().connected, 5000, 'the TLS bridge to connect');
    const publisher = await client(outpost.test.url);
    await publisher.publishAsync('t/1', 'secure', { qos: 1 });
    await subscriber.waitForAll(['secure'], 3000);
  });

  it('TLS rejects an unknown server CA', async () => {
    const cloud = await remote({
      tls: { caFile: certificates.ca.cert, certFile: certificates.server.cert, keyFile: certificates.server.key, requireCertificate: false },
    });
    const outpost = await bridged(`name: cloud
addresses: ["localhost:${cloud.port}"]
tls:
  enabled: true
topics:
  - pattern: "t/#"
${FAST_RECONNECT}`);
    await waitFor(() => outpost.bridge.metrics().lastError !== null, 3000, 'a failed TLS handshake');
    expect(outpost.bridge.metrics().lastError).toMatch(/certificate/i);
    expect(outpost.bridge.metrics().connected).toBe(false);
  });
});

async function readText(file: string): Promise<string> {
  const { readFile } = await import('node:fs/promises');
  return readFile(file, 'utf8');
}

describe('bridge state', () => {
  it('link state locally and remotely', async () => {
    const cloud = await remote();
    const atCloud = await counter(cloud.url, 'gw/+/state');
    const outpost = await bridged(`name: cloud
addresses: ["${cloud.address}"]
notification_topic: gw/gw-1/state
topics:
  - pattern: "#"
${FAST_RECONNECT}`);
    const local = await client(outpost.test.url);
    const states = await collect(local, '$SYS/broker/connection/cloud/state');
    await waitFor(() => states.includes('1'), 3000, 'state 1 on the local $SYS topic');
    await atCloud.waitForAll(['1'], 3000);

    await cloud.stop();
    await waitFor(() => states[states.length - 1] === '0', 3000, 'state 0 after the remote stopped');
    expect(outpost.bridge.metrics().connected).toBe(false);

    await cloud.start();
    await waitFor(() => states[states.length - 1] === '1', 3000, 'state 1 after the remote returned');
    outpost.bridge.stop();
    await waitFor(() => atCloud.payloads[atCloud.payloads.length - 1] === '0', 3000, 'state 0 on the remote after the bridge stopped');
  });

  it('backoff when the remote closes at once', async () => {
    const sockets = new Set<import('node:net').Socket>();
    const { createServer } = await import('node:net');
    const server = createServer((socket) => {
      sockets.add(socket);
      socket.destroy();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const port = (server.address() as import('node:net').AddressInfo).port;
    const outpost = await bridged(`name: cloud
addresses: ["127.0.0.1:${port}"]
topics:
  - pattern: "#"
reconnect:
  base_ms: 100
  max_ms: 400`);
    await delay(1500);
    const attempts = outpost.bridge.metrics().connectAttempts;
    // Waits of 50..100, 100..200, 200..400 and then 200..400 ms: 5 to 8 attempts in 1.5 s,
    // where a loop without backoff would make hundreds.
    expect(attempts).toBeGreaterThanOrEqual(4);
    expect(attempts).toBeLessThanOrEqual(10);
    expect(outpost.bridge.metrics().lastError).toBe('connection closed by the remote broker');
    expect(sockets.size).toBe(attempts);
  });

  it('max_age_seconds drops old messages', async () => {
    const cloud = await remote({ persistence: true });
    const subscriber = await counter(cloud.url, 'age/#');
    await cloud.stop();
    const outpost = await bridged(`name: cloud
addresses: ["${cloud.address}"]
topics:
  - pattern: "age/#"
outbox:
  max_age_seconds: 1
${FAST_RECONNECT}`);
    const publisher = await client(outpost.test.url);
    const old = numbered('old', 5);
    await Promise.all(old.map((payload) => publisher.publishAsync('age/1', payload, { qos: 1 })));
    await delay(1100);
    const fresh = numbered('fresh', 5);
    await Promise.all(fresh.map((payload) => publisher.publishAsync('age/1', payload, { qos: 1 })));
    await cloud.start();
    await subscriber.waitForAll(fresh, 5000);
    expect(subscriber.payloads).toEqual(fresh);
    expect(outpost.bridge.metrics().dropped).toBe(5);
  });
});

/**
 * A remote broker whose packets the test sends itself: it accepts any CONNECT with Session
 * Present set, grants every subscription QoS 2, sends PINGRESP for PINGREQ, and records the packet types it
 * receives. One connection at a time (the newest).
 */
class ScriptedRemote {
  private socket: net.Socket | null = null;
  private readonly received: string[] = [];

  private constructor(private readonly server: net.Server) {
    server.on('connection', (socket) => this.accept(socket));
  }

  static async start(): Promise<ScriptedRemote> {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return new ScriptedRemote(server);
  }

  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  private accept(socket: net.Socket): void {
    this.socket?.destroy();
    this.socket = socket;
    socket.on('error', () => undefined);
    const parser = mqttPacket.parser({ protocolVersion: 5 });
    parser.on('packet', (packet: Packet) => {
      this.received.push(packet.cmd);
      if (packet.cmd === 'connect') this.send({ cmd: 'connack', sessionPresent: true, reasonCode: 0 });
      if (packet.cmd === 'subscribe') this.send({ cmd: 'suback', messageId: packet.messageId, granted: packet.subscriptions.map(() => 2) });
      if (packet.cmd === 'pingreq') this.send({ cmd: 'pingresp' });
    });
    socket.on('data', (chunk: Buffer) => parser.parse(chunk));
  }

  send(packet: Packet): void {
    this.socket?.write(mqttPacket.generate(packet, { protocolVersion: 5 }));
  }

  publish(messageId: number, topic: string, payload: string, dup: boolean): void {
    this.send({ cmd: 'publish', messageId, topic, payload: Buffer.from(payload), qos: 2, dup, retain: false });
  }

  /** Resolves when a packet of type `cmd` arrives, counting only those not waited for before. */
  async waitFor(cmd: string): Promise<void> {
    await waitFor(() => this.received.includes(cmd), 5000, `${cmd} at the scripted remote`);
    this.received.splice(this.received.indexOf(cmd), 1);
  }

  async close(): Promise<void> {
    this.socket?.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
