import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { MqttClient } from 'mqtt';
import { BridgeManager } from '../src/bridge/index.js';
import { Broker } from '../src/broker/broker.js';
import { silentLogger } from '../src/service/logger.js';
import { buildTestConfig, connectMqttJs, endMqttJs } from './helpers/broker.js';
import { parseBridgeConfig, RemoteCounter, RemoteMosquitto, startBridgedBroker, type BridgedBroker } from './helpers/remote-mosquitto.js';
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

async function counter(url: string, filter: string): Promise<RemoteCounter> {
  const instance = await RemoteCounter.connect(url, filter);
  cleanups.push(() => instance.close());
  return instance;
}

async function bridged(itemYaml: string): Promise<BridgedBroker> {
  const instance = await startBridgedBroker(itemYaml);
  cleanups.push(() => instance.stop());
  return instance;
}

async function publisher(url: string, options: Parameters<typeof connectMqttJs>[1] = {}): Promise<MqttClient> {
  const client = await connectMqttJs(url, options);
  cleanups.push(() => endMqttJs(client, true));
  return client;
}

/** Registers a persistent counting subscriber on a persistent remote, then stops the remote. */
async function remoteWithOfflineCounter(filter: string): Promise<{ remote: RemoteMosquitto; counter: RemoteCounter }> {
  const instance = await remote({ persistence: true });
  const subscriber = await counter(instance.url, filter);
  await instance.stop();
  return { remote: instance, counter: subscriber };
}

function numbered(prefix: string, count: number): string[] {
  return Array.from({ length: count }, (_, index) => `${prefix}-${index}`);
}

/** Publishes in chunks of 50, below the broker's receive maximum for QoS 2. */
async function publishAll(client: MqttClient, topic: string, payloads: readonly string[], qos: 0 | 1 | 2 = 1): Promise<void> {
  for (let start = 0; start < payloads.length; start += 50) {
    await Promise.all(payloads.slice(start, start + 50).map((payload) => client.publishAsync(topic, payload, { qos })));
  }
}

const FAST_RECONNECT = `reconnect:
  base_ms: 50
  max_ms: 200`;

describe('bridge drain', () => {
  it('remote down at start', async () => {
    const { remote: cloud, counter: subscriber } = await remoteWithOfflineCounter('remote/#');
    const outpost = await bridged(`name: cloud
addresses: ["${cloud.address}"]
topics:
  - pattern: "#"
    direction: out
    qos: 1
    local_prefix: local/
    remote_prefix: remote/
${FAST_RECONNECT}`);
    const client = await publisher(outpost.test.url);
    const payloads = numbered('a', 500);
    await publishAll(client, 'local/sensor/1', payloads);
    await delay(100);
    expect(outpost.bridge.metrics().backlogMessages).toBe(500);
    expect(outpost.bridge.metrics().connected).toBe(false);

    await cloud.start();
    await subscriber.waitForAll(payloads, 10_000);
    const report = subscriber.report(payloads);
    expect(report.missing).toEqual([]);
    expect(report.outOfOrder).toBe(0);
    expect(report.duplicates).toBe(0);
    expect(new Set(subscriber.topics)).toEqual(new Set(['remote/sensor/1']));
    await waitFor(() => outpost.bridge.metrics().backlogMessages === 0, 2000, 'an empty outbox');
    expect(outpost.bridge.metrics().acknowledged).toBe(500);
  });

  it.each([1, 2] as const)('remote restart mid-stream (QoS %i)', async (qos) => {
    const cloud = await remote({ persistence: true });
    const subscriber = await counter(cloud.url, 'remote/#');
    const outpost = await bridged(`name: cloud
addresses: ["${cloud.address}"]
topics:
  - pattern: "#"
    direction: out
    qos: ${qos}
    remote_prefix: remote/
${FAST_RECONNECT}`);
    await waitFor(() => outpost.bridge.metrics().connected, 3000, 'the bridge to connect');
    const client = await publisher(outpost.test.url);
    const payloads = numbered('s', 1500);
    let published = 0;
    const stream = (async () => {
      for (let start = 0; start < payloads.length; start += 25) {
        const chunk = payloads.slice(start, start + 25);
        await Promise.all(chunk.map((payload) => client.publishAsync('stream', payload, { qos })));
        published += chunk.length;
        await delay(2);
      }
    })();
    await waitFor(() => published >= 400, 5000, '400 messages published');
    await cloud.stop();
    await waitFor(() => published >= 900, 5000, '900 messages published');
    await cloud.start();
    await stream;

    await subscriber.waitForAll(payloads, 15_000);
    const report = subscriber.report(payloads);
    expect(report.missing).toEqual([]);
    expect(report.outOfOrder).toBe(0);
    // Messages in flight when the remote stopped may arrive twice: those the bridge sent again,
    // and those mosquitto sends again to the counter (its in-flight window is 20 by default).
    const resent = outpost.bridge.metrics().sent - payloads.length;
    expect(report.duplicates).toBeLessThanOrEqual(resent + 20);
    expect(outpost.bridge.metrics().reconnects).toBeGreaterThanOrEqual(1);
  });

  it('QoS 2 link delivers every message', async () => {
    const cloud = await remote();
    const subscriber = await counter(cloud.url, 'q2/#');
    const outpost = await bridged(`name: cloud
addresses: ["${cloud.address}"]
topics:
  - pattern: "q2/#"
    qos: 2
${FAST_RECONNECT}`);
    await waitFor(() => outpost.bridge.metrics().connected, 3000, 'the bridge to connect');
    const client = await publisher(outpost.test.url);
    const payloads = numbered('q', 300);
    await publishAll(client, 'q2/x', payloads, 2);
    await subscriber.waitForAll(payloads, 10_000);
    expect(subscriber.report(payloads)).toMatchObject({ missing: [], duplicates: 0, outOfOrder: 0 });
    await waitFor(() => outpost.bridge.metrics().backlogMessages === 0, 2000, 'an empty outbox');
  });
});

describe('bridge without persistence', () => {
  it('keeps the outbox in memory', async () => {
    const { remote: cloud, counter: subscriber } = await remoteWithOfflineCounter('mem/#');
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'outpost-bridge-mem-'));
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    const config = buildTestConfig({ data_dir: dataDir });
    config.persistence = { ...config.persistence, enabled: false };
    config.bridges = [parseBridgeConfig(`name: cloud
addresses: ["${cloud.address}"]
topics:
  - pattern: "mem/#"
${FAST_RECONNECT}`)];
    const broker = new Broker(config, silentLogger());
    const bridges = new BridgeManager(broker, config.bridges, broker.logger);
    bridges.attach();
    await broker.start();
    bridges.start();
    cleanups.push(async () => {
      bridges.stop();
      await broker.stop();
      bridges.close();
    });
    const port = broker.listenerAddresses()[0]?.port ?? 0;
    const client = await publisher(`mqtt://127.0.0.1:${port}`);
    const payloads = numbered('mem', 100);
    await publishAll(client, 'mem/1', payloads);
    expect(bridges.bridges[0]?.metrics().backlogMessages).toBe(100);
    await cloud.start();
    await subscriber.waitForAll(payloads, 5000);
    expect(subscriber.report(payloads)).toMatchObject({ missing: [], duplicates: 0, outOfOrder: 0 });
  });
});
