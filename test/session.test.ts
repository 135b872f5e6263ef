import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { MqttClient } from 'mqtt';
import { connectMqttJs, endMqttJs, startBroker, type TestBroker } from './helpers/broker.js';
import { RawClient } from './helpers/raw-client.js';
import { delay } from './helpers/wait.js';

let tb: TestBroker;
const openRawClients: RawClient[] = [];
const openMqttJsClients: MqttClient[] = [];

async function rawClient(protocolVersion: 4 | 5 = 4): Promise<RawClient> {
  const client = await RawClient.connect(tb.port, { protocolVersion });
  openRawClients.push(client);
  return client;
}

async function publisher(): Promise<MqttClient> {
  const client = await connectMqttJs(tb.url, { clientId: `publisher-${openMqttJsClients.length}` });
  openMqttJsClients.push(client);
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

describe('session takeover', () => {
  it('closes the old 3.1.1 connection [MQTT-3.1.4-2]', async () => {
    const first = await rawClient(4);
    await first.connectMqtt({ clientId: 'takeover-v311' });
    const second = await rawClient(4);

    const connack = await second.connectMqtt({ clientId: 'takeover-v311' });

    expect(connack.returnCode).toBe(0);
    await first.waitClose();
    // 3.1.1 has no server DISCONNECT, so the old connection gets nothing before the close.
    await expect(first.nextPacket(10)).rejects.toThrow(/closed the connection/);
    second.send({ cmd: 'pingreq' });
    expect((await second.nextPacket()).cmd).toBe('pingresp');
  });

  it('sends DISCONNECT 0x8E to the old v5 connection [MQTT-3.1.4-3]', async () => {
    const first = await rawClient(5);
    await first.connectMqtt({ clientId: 'takeover-v5' });
    const second = await rawClient(5);

    const connack = await second.connectMqtt({ clientId: 'takeover-v5' });

    expect(connack.reasonCode).toBe(0);
    const disconnect = await first.expectPacket('disconnect');
    expect(disconnect.reasonCode).toBe(0x8e);
    await first.waitClose();
  });

  it('hands the subscriptions to the new connection', async () => {
    const first = await rawClient(4);
    await first.connectMqtt({ clientId: 'takeover-state', clean: false });
    first.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'takeover/state', qos: 1 }] });
    await first.expectPacket('suback');
    const second = await rawClient(4);

    const connack = await second.connectMqtt({ clientId: 'takeover-state', clean: false });
    await (await publisher()).publishAsync('takeover/state', 'after takeover', { qos: 1 });

    expect(connack.sessionPresent).toBe(true);
    const delivered = await second.expectPacket('publish');
    expect(delivered.payload.toString()).toBe('after takeover');
  });
});

describe('clean session and session present', () => {
  it('sets Session Present 0 for a new persistent session [MQTT-3.2.2-3]', async () => {
    const client = await rawClient(4);

    const connack = await client.connectMqtt({ clientId: 'present-new', clean: false });

    expect(connack.returnCode).toBe(0);
    expect(connack.sessionPresent).toBe(false);
  });

  it('sets Session Present 1 for a stored session [MQTT-3.2.2-2]', async () => {
    const first = await rawClient(4);
    await first.connectMqtt({ clientId: 'present-stored', clean: false });
    await first.disconnect();
    const second = await rawClient(4);

    const connack = await second.connectMqtt({ clientId: 'present-stored', clean: false });

    expect(connack.sessionPresent).toBe(true);
  });

  it('discards the stored session on clean session 1 [MQTT-3.1.2-4]', async () => {
    const persistent = await rawClient(4);
    await persistent.connectMqtt({ clientId: 'clean-discards', clean: false });
    persistent.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'clean/discards', qos: 1 }] });
    await persistent.expectPacket('suback');
    await persistent.disconnect();

    const clean = await rawClient(4);
    const cleanConnack = await clean.connectMqtt({ clientId: 'clean-discards', clean: true });
    await (await publisher()).publishAsync('clean/discards', 'for the old session', { qos: 1 });

    // A clean session 1 CONNACK has Session Present 0 [MQTT-3.2.2-1], and the old subscription is gone.
    expect(cleanConnack.sessionPresent).toBe(false);
    await clean.expectNoPacket(300);
    await clean.disconnect();

    // A clean session ends with its connection, so nothing is left to resume [MQTT-3.1.2-6].
    const resumed = await rawClient(4);
    const resumedConnack = await resumed.connectMqtt({ clientId: 'clean-discards', clean: false });
    expect(resumedConnack.sessionPresent).toBe(false);
    await resumed.expectNoPacket(200);
  });

  it('discards the stored v5 session on Clean Start 1 [MQTT-3.1.2-4]', async () => {
    const persistent = await rawClient(5);
    await persistent.connectMqtt({ clientId: 'clean-start', clean: false, properties: { sessionExpiryInterval: 60 } });
    persistent.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'clean/start', qos: 1 }] });
    await persistent.expectPacket('suback');
    await persistent.disconnect();

    const clean = await rawClient(5);
    const connack = await clean.connectMqtt({ clientId: 'clean-start', clean: true, properties: { sessionExpiryInterval: 60 } });
    await (await publisher()).publishAsync('clean/start', 'for the old session', { qos: 1 });

    expect(connack.sessionPresent).toBe(false);
    await clean.expectNoPacket(300);
  });
});

describe('persistent 3.1.1 session', () => {
  it('keeps subscriptions and queues QoS 1 messages while offline', async () => {
    const subscriber = await rawClient(4);
    await subscriber.connectMqtt({ clientId: 'offline-queue', clean: false });
    subscriber.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'offline/#', qos: 1 }] });
    await subscriber.expectPacket('suback');
    await subscriber.disconnect();

    const source = await publisher();
    await source.publishAsync('offline/a', 'first', { qos: 1 });
    await source.publishAsync('offline/b', 'qos 0 is not queued', { qos: 0 });
    await source.publishAsync('offline/a', 'second', { qos: 1 });
    await source.publishAsync('offline/c', 'third', { qos: 2 });

    const resumed = await rawClient(4);
    const connack = await resumed.connectMqtt({ clientId: 'offline-queue', clean: false });
    expect(connack.sessionPresent).toBe(true);
    const received: string[] = [];
    for (let index = 0; index < 3; index += 1) {
      const message = await resumed.expectPacket('publish');
      expect(message.qos).toBe(1);
      received.push(message.payload.toString());
      resumed.send({ cmd: 'puback', messageId: message.messageId });
    }
    expect(received).toEqual(['first', 'second', 'third']);
    await resumed.expectNoPacket(200);

    // The subscription survived the offline period and still routes live messages.
    await source.publishAsync('offline/live', 'live', { qos: 1 });
    const live = await resumed.expectPacket('publish');
    expect(live.payload.toString()).toBe('live');
  });

  it('queues QoS 0 messages when queue_qos0_messages is on', async () => {
    await tb.stop();
    tb = await startBroker({ limits: { queue_qos0_messages: true } });
    const subscriber = await rawClient(4);
    await subscriber.connectMqtt({ clientId: 'offline-qos0', clean: false });
    subscriber.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'offline/qos0', qos: 1 }] });
    await subscriber.expectPacket('suback');
    await subscriber.disconnect();

    await (await publisher()).publishAsync('offline/qos0', 'kept', { qos: 0 });
    // A QoS 0 publish has no acknowledgement, so give the broker a moment to route it.
    await delay(100);

    const resumed = await rawClient(4);
    await resumed.connectMqtt({ clientId: 'offline-qos0', clean: false });
    const message = await resumed.expectPacket('publish');
    expect(message.payload.toString()).toBe('kept');
    expect(message.qos).toBe(0);
  });
});

describe('v5 session expiry', () => {
  it('ends the session when Session Expiry Interval passes', async () => {
    const first = await rawClient(5);
    await first.connectMqtt({ clientId: 'expiry-2s', clean: false, properties: { sessionExpiryInterval: 2 } });
    await first.disconnect();

    await delay(500);
    const early = await rawClient(5);
    const earlyConnack = await early.connectMqtt({ clientId: 'expiry-2s', clean: false, properties: { sessionExpiryInterval: 2 } });
    expect(earlyConnack.sessionPresent).toBe(true);
    await early.disconnect();

    await delay(2500);
    const late = await rawClient(5);
    const lateConnack = await late.connectMqtt({ clientId: 'expiry-2s', clean: false, properties: { sessionExpiryInterval: 2 } });
    expect(lateConnack.sessionPresent).toBe(false);
  });

  it('queues messages for an offline v5 session', async () => {
    const subscriber = await rawClient(5);
    await subscriber.connectMqtt({ clientId: 'expiry-queue', clean: false, properties: { sessionExpiryInterval: 60 } });
    subscriber.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'expiry/queue', qos: 1 }] });
    await subscriber.expectPacket('suback');
    await subscriber.disconnect();

    await (await publisher()).publishAsync('expiry/queue', 'while away', { qos: 1 });
    const resumed = await rawClient(5);
    const connack = await resumed.connectMqtt({ clientId: 'expiry-queue', clean: false, properties: { sessionExpiryInterval: 60 } });

    expect(connack.sessionPresent).toBe(true);
    const message = await resumed.expectPacket('publish');
    expect(message.payload.toString()).toBe('while away');
    expect(message.qos).toBe(1);
  });

  it('ends the session at disconnect when expiry is absent', async () => {
    const first = await rawClient(5);
    await first.connectMqtt({ clientId: 'expiry-absent', clean: false });
    await first.disconnect();

    const second = await rawClient(5);
    const connack = await second.connectMqtt({ clientId: 'expiry-absent', clean: false });

    expect(connack.sessionPresent).toBe(false);
  });

  it('caps expiry at max_session_expiry_seconds', async () => {
    await tb.stop();
    tb = await startBroker({ limits: { max_session_expiry_seconds: 1 } });
    const first = await rawClient(5);

    const connack = await first.connectMqtt({ clientId: 'expiry-capped', clean: false, properties: { sessionExpiryInterval: 3600 } });
    await first.disconnect();
    await delay(1500);
    const second = await rawClient(5);
    const resumed = await second.connectMqtt({ clientId: 'expiry-capped', clean: false, properties: { sessionExpiryInterval: 3600 } });

    // The server must tell the client when it uses another expiry than the one requested.
    expect(connack.properties?.sessionExpiryInterval).toBe(1);
    expect(resumed.sessionPresent).toBe(false);
  });

  it('applies a new expiry sent in DISCONNECT', async () => {
    const first = await rawClient(5);
    await first.connectMqtt({ clientId: 'expiry-shortened', clean: false, properties: { sessionExpiryInterval: 60 } });
    await first.disconnect({ reasonCode: 0, properties: { sessionExpiryInterval: 1 } });

    await delay(1500);
    const second = await rawClient(5);
    const connack = await second.connectMqtt({ clientId: 'expiry-shortened', clean: false, properties: { sessionExpiryInterval: 60 } });

    expect(connack.sessionPresent).toBe(false);
  });

  it('rejects DISCONNECT raising expiry from 0 with 0x82 [MQTT-3.14.2-2]', async () => {
    const client = await rawClient(5);
    await client.connectMqtt({ clientId: 'expiry-raised', clean: false });

    client.send({ cmd: 'disconnect', reasonCode: 0, properties: { sessionExpiryInterval: 60 } });

    const reply = await client.expectPacket('disconnect');
    expect(reply.reasonCode).toBe(0x82);
    await client.waitClose();
    const second = await rawClient(5);
    const connack = await second.connectMqtt({ clientId: 'expiry-raised', clean: false });
    expect(connack.sessionPresent).toBe(false);
  });
});
