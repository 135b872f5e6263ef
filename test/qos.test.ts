import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { IPublishPacket, MqttClient } from 'mqtt';
import { connectMqttJs, endMqttJs, startBroker, type TestBroker } from './helpers/broker.js';
import { RawClient } from './helpers/raw-client.js';
import { waitFor } from './helpers/wait.js';

type QoS = 0 | 1 | 2;

let tb: TestBroker;
const openRawClients: RawClient[] = [];
const openMqttJsClients: MqttClient[] = [];

async function rawClient(protocolVersion: 4 | 5 = 4): Promise<RawClient> {
  const client = await RawClient.connect(tb.port, { protocolVersion });
  openRawClients.push(client);
  return client;
}

async function mqttJsClient(clientId: string, protocolVersion: 4 | 5 = 4): Promise<MqttClient> {
  const client = await connectMqttJs(tb.url, { clientId, protocolVersion });
  openMqttJsClients.push(client);
  return client;
}

/** Collects every message an MQTT.js client receives, in arrival order. */
function collectMessages(client: MqttClient): IPublishPacket[] {
  const messages: IPublishPacket[] = [];
  client.on('message', (_topic, _payload, packet) => {
    messages.push(packet);
  });
  return messages;
}

/** Connects a raw 3.1.1 client and subscribes it to `topic` at `qos`. */
async function rawSubscriber(clientId: string, topic: string, qos: QoS, clean = true): Promise<RawClient> {
  const client = await rawClient(4);
  await client.connectMqtt({ clientId, clean });
  client.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic, qos }] });
  const suback = await client.expectPacket('suback');
  expect(suback.granted).toEqual([qos]);
  return client;
}

beforeEach(async () => {
  tb = await startBroker();
});

afterEach(async () => {
  for (const client of openRawClients.splice(0)) {
    client.close();
  }
  await Promise.all(openMqttJsClients.splice(0).map((client) => endMqttJs(client, true)));
  await tb.stop();
});

describe('QoS with MQTT.js', () => {
  const cases: Array<[4 | 5, QoS]> = [
    [4, 0],
    [4, 1],
    [4, 2],
    [5, 0],
    [5, 1],
    [5, 2],
  ];

  it.each(cases)('delivers at protocol level %i with QoS %i', async (protocolVersion, qos) => {
    const subscriber = await mqttJsClient(`qos-sub-${protocolVersion}-${qos}`, protocolVersion);
    const publisher = await mqttJsClient(`qos-pub-${protocolVersion}-${qos}`, protocolVersion);
    const messages = collectMessages(subscriber);
    const granted = await subscriber.subscribeAsync('qos/mqttjs', { qos: 2 });
    expect(granted[0]?.qos).toBe(2);

    // publishAsync resolves after PUBACK for QoS 1 and after PUBCOMP for QoS 2.
    await publisher.publishAsync('qos/mqttjs', `payload at ${qos}`, { qos });
    await waitFor(() => messages.length > 0, 2000, 'the subscriber to get the message');

    expect(messages).toHaveLength(1);
    expect(messages[0]?.qos).toBe(qos);
    expect(messages[0]?.payload.toString()).toBe(`payload at ${qos}`);
  });
});

describe('QoS packet flows', () => {
  it('acknowledges QoS 1 with PUBACK of the same id', async () => {
    const client = await rawClient(4);
    await client.connectMqtt({ clientId: 'flow-qos1' });

    client.send({ cmd: 'publish', topic: 'flow/qos1', payload: Buffer.from('x'), qos: 1, messageId: 4242, dup: false, retain: false });

    const puback = await client.expectPacket('puback');
    expect(puback.messageId).toBe(4242);
  });

  it('completes QoS 2 with PUBREC then PUBCOMP', async () => {
    const client = await rawClient(4);
    await client.connectMqtt({ clientId: 'flow-qos2' });

    client.send({ cmd: 'publish', topic: 'flow/qos2', payload: Buffer.from('x'), qos: 2, messageId: 77, dup: false, retain: false });
    const pubrec = await client.expectPacket('pubrec');
    client.send({ cmd: 'pubrel', messageId: 77 });
    const pubcomp = await client.expectPacket('pubcomp');

    expect(pubrec.messageId).toBe(77);
    expect(pubcomp.messageId).toBe(77);
  });

  it('uses distinct ids for unacknowledged QoS 1 deliveries [MQTT-2.3.1-2]', async () => {
    const subscriber = await rawSubscriber('flow-ids', 'flow/ids', 1);
    const publisher = await mqttJsClient('flow-ids-pub');

    await publisher.publishAsync('flow/ids', 'one', { qos: 1 });
    await publisher.publishAsync('flow/ids', 'two', { qos: 1 });
    const first = await subscriber.expectPacket('publish');
    const second = await subscriber.expectPacket('publish');

    // Packet identifiers of QoS > 0 PUBLISH packets are non-zero [MQTT-2.3.1-1].
    expect(first.messageId).toBeGreaterThan(0);
    expect(second.messageId).toBeGreaterThan(0);
    expect(second.messageId).not.toBe(first.messageId);
    expect(first.dup).toBe(false);
  });

  it('sends PUBREL after PUBREC for QoS 2 delivery', async () => {
    const subscriber = await rawSubscriber('flow-outgoing-qos2', 'flow/out2', 2);
    const publisher = await mqttJsClient('flow-outgoing-qos2-pub');

    await publisher.publishAsync('flow/out2', 'exactly once', { qos: 2 });
    const delivered = await subscriber.expectPacket('publish');
    subscriber.send({ cmd: 'pubrec', messageId: delivered.messageId });
    const pubrel = await subscriber.expectPacket('pubrel');
    subscriber.send({ cmd: 'pubcomp', messageId: delivered.messageId });

    expect(delivered.qos).toBe(2);
    expect(delivered.payload.toString()).toBe('exactly once');
    expect(pubrel.messageId).toBe(delivered.messageId);
    await subscriber.expectNoPacket(200);
  });

  it('delivers a resent QoS 2 PUBLISH once [MQTT-4.3.3-2]', async () => {
    const subscriber = await rawSubscriber('dup-qos2-sub', 'dup/qos2', 2);
    const publisher = await rawClient(4);
    await publisher.connectMqtt({ clientId: 'dup-qos2-pub' });

    publisher.send({ cmd: 'publish', topic: 'dup/qos2', payload: Buffer.from('once'), qos: 2, messageId: 9, dup: false, retain: false });
    expect((await publisher.expectPacket('pubrec')).messageId).toBe(9);
    publisher.send({ cmd: 'publish', topic: 'dup/qos2', payload: Buffer.from('once'), qos: 2, messageId: 9, dup: true, retain: false });
    // Until PUBREL, a PUBLISH with the same id is acknowledged again but not delivered again.
    expect((await publisher.expectPacket('pubrec')).messageId).toBe(9);
    publisher.send({ cmd: 'pubrel', messageId: 9 });
    expect((await publisher.expectPacket('pubcomp')).messageId).toBe(9);

    const delivered = await subscriber.expectPacket('publish');
    expect(delivered.payload.toString()).toBe('once');
    subscriber.send({ cmd: 'pubrec', messageId: delivered.messageId });
    await subscriber.expectPacket('pubrel');
    subscriber.send({ cmd: 'pubcomp', messageId: delivered.messageId });
    await subscriber.expectNoPacket(300);
  });

  it('treats a reused QoS 2 id after PUBCOMP as new [MQTT-4.3.3-2]', async () => {
    const subscriber = await rawSubscriber('reuse-qos2-sub', 'reuse/qos2', 0);
    const publisher = await rawClient(4);
    await publisher.connectMqtt({ clientId: 'reuse-qos2-pub' });

    for (const payload of ['first', 'second']) {
      publisher.send({ cmd: 'publish', topic: 'reuse/qos2', payload: Buffer.from(payload), qos: 2, messageId: 5, dup: false, retain: false });
      await publisher.expectPacket('pubrec');
      publisher.send({ cmd: 'pubrel', messageId: 5 });
      await publisher.expectPacket('pubcomp');
    }

    expect((await subscriber.expectPacket('publish')).payload.toString()).toBe('first');
    expect((await subscriber.expectPacket('publish')).payload.toString()).toBe('second');
  });

  it('answers PUBREL for an unknown id with PUBCOMP (3.1.1)', async () => {
    const client = await rawClient(4);
    await client.connectMqtt({ clientId: 'unknown-pubrel-v311' });

    client.send({ cmd: 'pubrel', messageId: 999 });

    const pubcomp = await client.expectPacket('pubcomp');
    expect(pubcomp.messageId).toBe(999);
    expect(pubcomp.length).toBe(2);
  });

  it('answers PUBREL for an unknown id with PUBCOMP 0x92 (v5)', async () => {
    const client = await rawClient(5);
    await client.connectMqtt({ clientId: 'unknown-pubrel-v5' });

    client.send({ cmd: 'pubrel', messageId: 999 });

    const pubcomp = await client.expectPacket('pubcomp');
    expect(pubcomp.messageId).toBe(999);
    expect(pubcomp.reasonCode).toBe(0x92);
  });
});

describe('redelivery on session resume', () => {
  it('resends unacknowledged QoS 1 with DUP=1 (3.1.1) [MQTT-4.4.0-1] [MQTT-3.3.1-1]', async () => {
    const subscriber = await rawSubscriber('resend-qos1', 'resend/qos1', 1, false);
    const publisher = await mqttJsClient('resend-qos1-pub');
    await publisher.publishAsync('resend/qos1', 'unacked', { qos: 1 });
    const original = await subscriber.expectPacket('publish');
    expect(original.dup).toBe(false);
    subscriber.close();
    await subscriber.waitClose();

    const resumed = await rawClient(4);
    const connack = await resumed.connectMqtt({ clientId: 'resend-qos1', clean: false });
    const resent = await resumed.expectPacket('publish');

    expect(connack.sessionPresent).toBe(true);
    expect(resent.messageId).toBe(original.messageId);
    expect(resent.dup).toBe(true);
    expect(resent.qos).toBe(1);
    expect(resent.payload.toString()).toBe('unacked');
    resumed.send({ cmd: 'puback', messageId: resent.messageId });
    await resumed.expectNoPacket(200);
  });

  it('resends unacknowledged QoS 1 with DUP=1 (v5) [MQTT-4.4.0-1]', async () => {
    const subscriber = await rawClient(5);
    await subscriber.connectMqtt({ clientId: 'resend-v5', clean: false, properties: { sessionExpiryInterval: 60 } });
    subscriber.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'resend/v5', qos: 1 }] });
    await subscriber.expectPacket('suback');
    const publisher = await mqttJsClient('resend-v5-pub', 5);
    await publisher.publishAsync('resend/v5', 'unacked', { qos: 1 });
    const original = await subscriber.expectPacket('publish');
    subscriber.close();
    await subscriber.waitClose();

    const resumed = await rawClient(5);
    const connack = await resumed.connectMqtt({ clientId: 'resend-v5', clean: false, properties: { sessionExpiryInterval: 60 } });
    const resent = await resumed.expectPacket('publish');

    expect(connack.sessionPresent).toBe(true);
    expect(resent.messageId).toBe(original.messageId);
    expect(resent.dup).toBe(true);
    expect(resent.payload.toString()).toBe('unacked');
  });

  it('resends unacknowledged QoS 2 with DUP=1 [MQTT-4.4.0-1] [MQTT-3.3.1-1]', async () => {
    const subscriber = await rawSubscriber('resend-qos2', 'resend/qos2', 2, false);
    const publisher = await mqttJsClient('resend-qos2-pub');
    await publisher.publishAsync('resend/qos2', 'no pubrec yet', { qos: 2 });
    const original = await subscriber.expectPacket('publish');
    subscriber.close();
    await subscriber.waitClose();

    const resumed = await rawClient(4);
    await resumed.connectMqtt({ clientId: 'resend-qos2', clean: false });
    const resent = await resumed.expectPacket('publish');

    expect(resent.messageId).toBe(original.messageId);
    expect(resent.dup).toBe(true);
    expect(resent.qos).toBe(2);
    expect(resent.payload.toString()).toBe('no pubrec yet');
    resumed.send({ cmd: 'pubrec', messageId: resent.messageId });
    expect((await resumed.expectPacket('pubrel')).messageId).toBe(resent.messageId);
    resumed.send({ cmd: 'pubcomp', messageId: resent.messageId });
    await resumed.expectNoPacket(200);
  });

  it('resends PUBREL, not PUBLISH, after PUBREC [MQTT-4.4.0-1]', async () => {
    const subscriber = await rawSubscriber('resend-pubrel', 'resend/pubrel', 2, false);
    const publisher = await mqttJsClient('resend-pubrel-pub');
    await publisher.publishAsync('resend/pubrel', 'received once', { qos: 2 });
    const delivered = await subscriber.expectPacket('publish');
    subscriber.send({ cmd: 'pubrec', messageId: delivered.messageId });
    await subscriber.expectPacket('pubrel');
    subscriber.close();
    await subscriber.waitClose();

    const resumed = await rawClient(4);
    await resumed.connectMqtt({ clientId: 'resend-pubrel', clean: false });
    const pubrel = await resumed.expectPacket('pubrel');

    expect(pubrel.messageId).toBe(delivered.messageId);
    resumed.send({ cmd: 'pubcomp', messageId: pubrel.messageId });
    await resumed.expectNoPacket(200);
  });
});

describe('ordering and downgrade', () => {
  it('keeps order of 1000 QoS 1 messages [MQTT-4.6.0-6]', async () => {
    const subscriber = await mqttJsClient('order-sub');
    const publisher = await mqttJsClient('order-pub');
    const messages = collectMessages(subscriber);
    await subscriber.subscribeAsync('order/topic', { qos: 1 });
    const count = 1000;

    await Promise.all(
      Array.from({ length: count }, (_, index) => publisher.publishAsync('order/topic', String(index), { qos: 1 })),
    );
    await waitFor(() => messages.length >= count, 10000, `${count} messages at the subscriber`);

    const payloads = messages.map((message) => Number(message.payload.toString()));
    expect(payloads).toEqual(Array.from({ length: count }, (_, index) => index));
  }, 15000);

  const downgrades: Array<[QoS, QoS, QoS]> = [
    [2, 0, 0],
    [2, 1, 1],
    [1, 0, 0],
    [0, 2, 0],
    [1, 2, 1],
  ];

  it.each(downgrades)(
    'delivers QoS %i published to QoS %i subscription at %i [MQTT-3.8.4-6]',
    async (publishedQos, subscribedQos, expectedQos) => {
      const subscriber = await rawSubscriber(`downgrade-${publishedQos}-${subscribedQos}`, 'downgrade/topic', subscribedQos);
      const publisher = await mqttJsClient(`downgrade-pub-${publishedQos}-${subscribedQos}`);

      await publisher.publishAsync('downgrade/topic', 'payload', { qos: publishedQos });
      const delivered = await subscriber.expectPacket('publish');

      expect(delivered.qos).toBe(expectedQos);
      expect(delivered.payload.toString()).toBe('payload');
    },
  );
});
