import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ISubscription } from 'mqtt-packet';
import type { MqttClient } from 'mqtt';
import { connectMqttJs, endMqttJs, startBroker, type TestBroker } from './helpers/broker.js';
import { RawClient } from './helpers/raw-client.js';

type QoS = 0 | 1 | 2;

let tb: TestBroker;
let publisher: MqttClient;
const openRawClients: RawClient[] = [];

/** Connects a raw client, subscribes it with `subscription`, and checks the granted QoS. */
async function subscribedClient(
  clientId: string,
  subscription: ISubscription,
  protocolVersion: 4 | 5 = 4,
): Promise<RawClient> {
  const client = await RawClient.connect(tb.port, { protocolVersion });
  openRawClients.push(client);
  await client.connectMqtt({ clientId });
  client.send({ cmd: 'subscribe', messageId: 1, subscriptions: [subscription] });
  const suback = await client.expectPacket('suback');
  expect(suback.granted).toEqual([subscription.qos]);
  return client;
}

/** Publishes with MQTT.js at QoS 1 (unless given), which resolves once the broker acknowledged it. */
async function publish(topic: string, payload: string, options: { qos?: QoS; retain?: boolean } = {}): Promise<void> {
  await publisher.publishAsync(topic, payload, { qos: options.qos ?? 1, retain: options.retain ?? false });
}

/** Acknowledges a QoS 1 or QoS 2 delivery so it does not linger in the session. */
function acknowledge(client: RawClient, qos: number, messageId: number | undefined): void {
  if (qos === 1) {
    client.send({ cmd: 'puback', messageId });
  } else if (qos === 2) {
    client.send({ cmd: 'pubrec', messageId });
  }
}

beforeEach(async () => {
  tb = await startBroker();
  publisher = await connectMqttJs(tb.url, { clientId: 'retained-publisher' });
});

afterEach(async () => {
  for (const client of openRawClients.splice(0)) {
    client.close();
  }
  await endMqttJs(publisher, true);
  await tb.stop();
});

describe('retained messages (3.1.1)', () => {
  it('stores and sends on subscribe with RETAIN=1 [MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-8]', async () => {
    await publish('retained/store', 'stored', { retain: true });

    const subscriber = await subscribedClient('retained-store', { topic: 'retained/store', qos: 1 });
    const delivered = await subscriber.expectPacket('publish');

    expect(delivered.topic).toBe('retained/store');
    expect(delivered.payload.toString()).toBe('stored');
    expect(delivered.retain).toBe(true);
  });

  it('replaces the stored message', async () => {
    await publish('retained/replace', 'old', { retain: true });
    await publish('retained/replace', 'new', { retain: true });

    const subscriber = await subscribedClient('retained-replace', { topic: 'retained/replace', qos: 0 });

    expect((await subscriber.expectPacket('publish')).payload.toString()).toBe('new');
    await subscriber.expectNoPacket(200);
  });

  it('replaces the stored message with a QoS 0 one [MQTT-3.3.1-7]', async () => {
    await publish('retained/qos0', 'qos 1 original', { retain: true, qos: 1 });
    await publish('retained/qos0', 'qos 0 replacement', { retain: true, qos: 0 });
    // A QoS 0 publish has no acknowledgement. The broker handles a connection's packets in order,
    // so the PUBACK of a later QoS 1 publish shows that the replacement was processed.
    await publish('retained/other', 'barrier', { qos: 1 });

    const subscriber = await subscribedClient('retained-qos0', { topic: 'retained/qos0', qos: 1 });
    const delivered = await subscriber.nextPacket(500).catch(() => null);

    // The server may discard a retained QoS 0 message, but must never keep the older one.
    if (delivered !== null) {
      expect(delivered.cmd === 'publish' ? delivered.payload.toString() : delivered.cmd).toBe('qos 0 replacement');
    }
  });

  it('clears the stored message with an empty payload [MQTT-3.3.1-10] [MQTT-3.3.1-11]', async () => {
    await publish('retained/clear', 'to be cleared', { retain: true });
    const existing = await subscribedClient('retained-clear-existing', { topic: 'retained/clear', qos: 0 });
    expect((await existing.expectPacket('publish')).payload.toString()).toBe('to be cleared');

    await publish('retained/clear', '', { retain: true });

    // Existing subscribers get the empty message as a normal message, with RETAIN=0.
    const cleared = await existing.expectPacket('publish');
    expect(cleared.payload.length).toBe(0);
    expect(cleared.retain).toBe(false);
    const later = await subscribedClient('retained-clear-later', { topic: 'retained/clear', qos: 0 });
    await later.expectNoPacket(300);
  });

  it('keeps the stored message on a RETAIN=0 publish [MQTT-3.3.1-12]', async () => {
    await publish('retained/keep', 'retained', { retain: true });
    await publish('retained/keep', 'not retained', { retain: false });

    const subscriber = await subscribedClient('retained-keep', { topic: 'retained/keep', qos: 0 });

    expect((await subscriber.expectPacket('publish')).payload.toString()).toBe('retained');
    await subscriber.expectNoPacket(200);
  });

  it('sends every matching retained message to a wildcard subscription', async () => {
    await publish('retained/wild/a', 'a', { retain: true });
    await publish('retained/wild/b', 'b', { retain: true });
    await publish('retained/other/c', 'c', { retain: true });

    const subscriber = await subscribedClient('retained-wild', { topic: 'retained/wild/+', qos: 0 });
    const first = await subscriber.expectPacket('publish');
    const second = await subscriber.expectPacket('publish');

    expect([first.topic, second.topic].sort()).toEqual(['retained/wild/a', 'retained/wild/b']);
    expect(first.retain).toBe(true);
    expect(second.retain).toBe(true);
    await subscriber.expectNoPacket(200);
  });

  it('forwards live messages with RETAIN=0 [MQTT-3.3.1-9]', async () => {
    const subscriber = await subscribedClient('retained-live', { topic: 'retained/live', qos: 1 });

    await publish('retained/live', 'live and retained', { retain: true });

    const delivered = await subscriber.expectPacket('publish');
    expect(delivered.payload.toString()).toBe('live and retained');
    expect(delivered.retain).toBe(false);
  });

  it('resends retained messages when a subscription is replaced [MQTT-3.8.4-3]', async () => {
    await publish('retained/resubscribe', 'again', { retain: true });
    const subscriber = await subscribedClient('retained-resubscribe', { topic: 'retained/resubscribe', qos: 0 });
    expect((await subscriber.expectPacket('publish')).retain).toBe(true);

    subscriber.send({ cmd: 'subscribe', messageId: 2, subscriptions: [{ topic: 'retained/resubscribe', qos: 0 }] });

    await subscriber.expectPacket('suback');
    const resent = await subscriber.expectPacket('publish');
    expect(resent.payload.toString()).toBe('again');
    expect(resent.retain).toBe(true);
  });

  const qosCases: Array<[QoS, QoS, QoS]> = [
    [2, 1, 1],
    [2, 0, 0],
    [1, 2, 1],
    [2, 2, 2],
  ];

  it.each(qosCases)('delivers retained QoS %i to QoS %i subscription at %i', async (storedQos, grantedQos, expectedQos) => {
    await publish('retained/qos', 'qos', { retain: true, qos: storedQos });

    const subscriber = await subscribedClient(`retained-qos-${storedQos}-${grantedQos}`, { topic: 'retained/qos', qos: grantedQos });
    const delivered = await subscriber.expectPacket('publish');

    expect(delivered.qos).toBe(expectedQos);
    expect(delivered.retain).toBe(true);
    acknowledge(subscriber, delivered.qos, delivered.messageId);
  });
});

describe('retained messages (v5 subscription options)', () => {
  it('keeps RETAIN=1 with Retain As Published 1 [MQTT-3.3.1-13]', async () => {
    const subscriber = await subscribedClient('rap-on', { topic: 'rap/on', qos: 1, rap: true }, 5);

    await publish('rap/on', 'retained', { retain: true });
    await publish('rap/on', 'not retained', { retain: false });

    const first = await subscriber.expectPacket('publish');
    const second = await subscriber.expectPacket('publish');
    expect(first.payload.toString()).toBe('retained');
    expect(first.retain).toBe(true);
    expect(second.retain).toBe(false);
  });

  it('clears RETAIN with Retain As Published 0 [MQTT-3.3.1-12]', async () => {
    const subscriber = await subscribedClient('rap-off', { topic: 'rap/off', qos: 1, rap: false }, 5);

    await publish('rap/off', 'retained', { retain: true });

    const delivered = await subscriber.expectPacket('publish');
    expect(delivered.payload.toString()).toBe('retained');
    expect(delivered.retain).toBe(false);
  });

  it('sends retained on every subscribe with Retain Handling 0 [MQTT-3.3.1-9]', async () => {
    await publish('rh/zero', 'stored', { retain: true });
    const subscriber = await subscribedClient('rh-zero', { topic: 'rh/zero', qos: 0, rh: 0 }, 5);
    const first = await subscriber.expectPacket('publish');

    subscriber.send({ cmd: 'subscribe', messageId: 2, subscriptions: [{ topic: 'rh/zero', qos: 0, rh: 0 }] });
    await subscriber.expectPacket('suback');
    const second = await subscriber.expectPacket('publish');

    expect(first.retain).toBe(true);
    expect(second.payload.toString()).toBe('stored');
    expect(second.retain).toBe(true);
  });

  it('sends retained only for a new subscription with Retain Handling 1 [MQTT-3.3.1-10]', async () => {
    await publish('rh/one', 'stored', { retain: true });
    const subscriber = await subscribedClient('rh-one', { topic: 'rh/one', qos: 0, rh: 1 }, 5);
    const first = await subscriber.expectPacket('publish');

    subscriber.send({ cmd: 'subscribe', messageId: 2, subscriptions: [{ topic: 'rh/one', qos: 0, rh: 1 }] });
    await subscriber.expectPacket('suback');

    expect(first.payload.toString()).toBe('stored');
    expect(first.retain).toBe(true);
    await subscriber.expectNoPacket(300);
  });

  it('never sends retained with Retain Handling 2 [MQTT-3.3.1-11]', async () => {
    await publish('rh/two', 'stored', { retain: true });

    const subscriber = await subscribedClient('rh-two', { topic: 'rh/two', qos: 0, rh: 2 }, 5);
    await subscriber.expectNoPacket(300);
    await publish('rh/two', 'live', { retain: false });

    // Retain Handling only concerns retained messages; live ones still arrive.
    expect((await subscriber.expectPacket('publish')).payload.toString()).toBe('live');
  });

  it('sends retained messages with RETAIN=1 to v5 subscribers', async () => {
    await publish('rap/retained-on-subscribe', 'stored', { retain: true });

    const subscriber = await subscribedClient('rap-retained', { topic: 'rap/retained-on-subscribe', qos: 0, rap: false }, 5);

    expect((await subscriber.expectPacket('publish')).retain).toBe(true);
  });
});
