import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { MqttClient } from 'mqtt';
import { connectMqttJs, endMqttJs, startBroker, type TestBroker } from './helpers/broker.js';
import { delay, waitFor } from './helpers/wait.js';

const COUNTER_TOPICS = [
  '$SYS/broker/uptime',
  '$SYS/broker/clients/connected',
  '$SYS/broker/clients/total',
  '$SYS/broker/clients/maximum',
  '$SYS/broker/messages/received',
  '$SYS/broker/messages/sent',
  '$SYS/broker/bytes/received',
  '$SYS/broker/bytes/sent',
  '$SYS/broker/subscriptions/count',
  '$SYS/broker/retained messages/count',
];

const openClients: MqttClient[] = [];

afterEach(async () => {
  await Promise.all(openClients.splice(0).map((client) => endMqttJs(client, true)));
});

async function connectClient(url: string, clientId: string): Promise<MqttClient> {
  const client = await connectMqttJs(url, { protocolVersion: 5, clientId });
  openClients.push(client);
  return client;
}

/** Records the latest payload of every $SYS topic, and every payload ever seen. */
async function watchSys(url: string, clientId: string): Promise<{ latest: Map<string, string>; all: [string, string][] }> {
  const client = await connectClient(url, clientId);
  const latest = new Map<string, string>();
  const all: [string, string][] = [];
  client.on('message', (topic, payload) => {
    latest.set(topic, payload.toString());
    all.push([topic, payload.toString()]);
  });
  await client.subscribeAsync('$SYS/#', { qos: 0 });
  return { latest, all };
}

/** Reads a counter such as "12" or "12 seconds"; NaN when the payload does not start with digits. */
function counter(latest: Map<string, string>, topic: string): number {
  const text = latest.get(topic) ?? '';
  return /^\d+/.test(text) ? Number.parseInt(text, 10) : Number.NaN;
}

describe('$SYS topics', () => {
  let broker: TestBroker;

  beforeAll(async () => {
    broker = await startBroker({ sys: { interval_seconds: 1 } });
  });

  afterAll(async () => {
    await broker.stop();
  });

  it('broker statistics have plausible values', async () => {
    const publisher = await connectClient(broker.url, 'sys-publisher');
    const listener = await connectClient(broker.url, 'sys-listener');
    const received: string[] = [];
    listener.on('message', (topic) => {
      received.push(topic);
    });
    await listener.subscribeAsync('stats/#', { qos: 1 });
    const { latest } = await watchSys(broker.url, 'sys-watcher');

    for (let index = 0; index < 3; index++) {
      await publisher.publishAsync(`stats/retained/${index}`, 'kept', { qos: 1, retain: true });
    }
    for (let index = 0; index < 5; index++) {
      await publisher.publishAsync('stats/live', `m${index}`, { qos: 1 });
    }
    await waitFor(() => received.length === 8, 2000, 'eight messages at the listener');

    // Values from before the publishes may still be the latest, so wait for an update.
    await waitFor(
      () =>
        COUNTER_TOPICS.every((topic) => latest.has(topic)) &&
        counter(latest, '$SYS/broker/clients/connected') === 3 &&
        counter(latest, '$SYS/broker/messages/received') >= 8 &&
        counter(latest, '$SYS/broker/retained messages/count') >= 3,
      4000,
      'all $SYS topics with the values after the publishes',
    );

    expect(latest.get('$SYS/broker/version')).toMatch(/\S/);
    expect(counter(latest, '$SYS/broker/uptime')).toBeGreaterThanOrEqual(0);
    expect(counter(latest, '$SYS/broker/clients/connected')).toBe(3);
    expect(counter(latest, '$SYS/broker/clients/total')).toBeGreaterThanOrEqual(3);
    expect(counter(latest, '$SYS/broker/clients/maximum')).toBeGreaterThanOrEqual(3);
    expect(counter(latest, '$SYS/broker/messages/received')).toBeGreaterThanOrEqual(8);
    expect(counter(latest, '$SYS/broker/messages/sent')).toBeGreaterThanOrEqual(8);
    expect(counter(latest, '$SYS/broker/bytes/received')).toBeGreaterThan(0);
    expect(counter(latest, '$SYS/broker/bytes/sent')).toBeGreaterThan(0);
    expect(counter(latest, '$SYS/broker/subscriptions/count')).toBeGreaterThanOrEqual(2);
    expect(counter(latest, '$SYS/broker/retained messages/count')).toBeGreaterThanOrEqual(3);

    for (let index = 0; index < 3; index++) {
      await publisher.publishAsync(`stats/retained/${index}`, '', { qos: 1, retain: true });
    }
  });

  it('clients/connected follows disconnects', async () => {
    const leaving = await connectClient(broker.url, 'sys-leaving');
    const { latest } = await watchSys(broker.url, 'sys-counting');
    await waitFor(() => counter(latest, '$SYS/broker/clients/connected') === 2, 3000, 'two connected clients');

    await endMqttJs(leaving);
    await waitFor(() => counter(latest, '$SYS/broker/clients/connected') === 1, 3000, 'one connected client');

    expect(counter(latest, '$SYS/broker/clients/maximum')).toBeGreaterThanOrEqual(2);
  });

  it('uptime increases', async () => {
    const { all } = await watchSys(broker.url, 'sys-uptime');
    const uptimes = (): number[] =>
      all.filter(([topic]) => topic === '$SYS/broker/uptime').map(([, payload]) => Number.parseInt(payload, 10));
    await waitFor(() => uptimes().length >= 2, 3500, 'two uptime updates');

    const [first, second] = uptimes();
    expect(second).toBeGreaterThan(first!);
  });

  it('clients cannot publish to $SYS', async () => {
    const spoofer = await connectClient(broker.url, 'sys-spoofer');
    const { all } = await watchSys(broker.url, 'sys-spoof-watcher');

    await spoofer.publishAsync('$SYS/broker/version', 'spoofed', { qos: 1 }).catch(() => undefined);
    await spoofer.publishAsync('$SYS/test/fake', 'spoofed', { qos: 1, retain: true }).catch(() => undefined);
    await delay(1500);
    const late = await watchSys(broker.url, 'sys-late-watcher');
    await delay(1200);

    expect(all.filter(([, payload]) => payload === 'spoofed')).toEqual([]);
    expect(all.filter(([topic]) => topic === '$SYS/test/fake')).toEqual([]);
    expect(late.all.filter(([, payload]) => payload === 'spoofed')).toEqual([]);
    expect(late.all.length).toBeGreaterThan(0);
  });
});
