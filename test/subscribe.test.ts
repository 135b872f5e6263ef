import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { IClientOptions, MqttClient } from 'mqtt';
import type { IPublishPacket, ISubackPacket, IUnsubackPacket, Packet } from 'mqtt-packet';
import { connectMqttJs, endMqttJs, startBroker, type TestBroker } from './helpers/broker.js';
import { RawClient } from './helpers/raw-client.js';
import { delay, waitFor } from './helpers/wait.js';

interface ReceivedMessage {
  topic: string;
  payload: string;
  packet: IPublishPacket;
}

const openClients: MqttClient[] = [];
const rawClients: RawClient[] = [];

afterEach(async () => {
  await Promise.all(openClients.splice(0).map((client) => endMqttJs(client, true)));
  for (const raw of rawClients.splice(0)) {
    raw.close();
  }
});

/** Connects an MQTT.js client that records every message it receives from the start. */
async function connectRecording(
  url: string,
  options: IClientOptions = {},
): Promise<{ client: MqttClient; messages: ReceivedMessage[] }> {
  const client = await connectMqttJs(url, { protocolVersion: 5, ...options });
  openClients.push(client);
  const messages: ReceivedMessage[] = [];
  client.on('message', (topic, payload, packet) => {
    messages.push({ topic, payload: payload.toString(), packet });
  });
  return { client, messages };
}

async function connectRaw(port: number, protocolVersion: 4 | 5, clientId: string): Promise<RawClient> {
  const raw = await RawClient.connect(port, { protocolVersion });
  rawClients.push(raw);
  const connack = await raw.connectMqtt({ clientId });
  expect(connack.reasonCode ?? connack.returnCode).toBe(0);
  return raw;
}

async function nextOfType<T extends Packet>(raw: RawClient, cmd: T['cmd'], timeoutMs = 2000): Promise<T> {
  const packet = await raw.nextPacket(timeoutMs);
  expect(packet.cmd).toBe(cmd);
  return packet as T;
}

/** Returns the subscription identifiers of a PUBLISH, sorted. mqtt-packet gives a single id as a number. */
function subscriptionIds(packet: IPublishPacket): number[] {
  const ids = packet.properties?.subscriptionIdentifier;
  if (ids === undefined) {
    return [];
  }
  return (Array.isArray(ids) ? [...ids] : [ids]).sort((a, b) => a - b);
}

/**
 * Publishes `sentinelTopic` after earlier publishes and waits until `messages` contains it, so
 * that the messages published before it had their chance to arrive.
 */
async function flushWithSentinel(
  publisher: MqttClient,
  messages: ReceivedMessage[],
  sentinelTopic: string,
): Promise<void> {
  await publisher.publishAsync(sentinelTopic, 'sentinel', { qos: 1 });
  await waitFor(() => messages.some((m) => m.topic === sentinelTopic), 2000, `sentinel ${sentinelTopic}`);
  await delay(100);
}

describe('topic filter matching', () => {
  let broker: TestBroker;
  let publisher: MqttClient;

  beforeAll(async () => {
    broker = await startBroker();
    publisher = await connectMqttJs(broker.url, { protocolVersion: 5, clientId: 'match-publisher' });
  });

  afterAll(async () => {
    await endMqttJs(publisher, true);
    await broker.stop();
  });

  const cases: { filter: string; matches: string[]; nonMatches: string[] }[] = [
    { filter: 'sport/tennis/+', matches: ['sport/tennis/player1', 'sport/tennis/'], nonMatches: ['sport/tennis', 'sport/tennis/player1/ranking'] },
    { filter: 'sport/#', matches: ['sport', 'sport/', 'sport/tennis', 'sport/tennis/player1'], nonMatches: ['sports', 'sportx/tennis'] },
    { filter: 'sport/+', matches: ['sport/', 'sport/tennis'], nonMatches: ['sport', 'sport/tennis/player1'] },
    { filter: '+/+', matches: ['/finance', 'a/b', '/'], nonMatches: ['finance', 'a/b/c'] },
    { filter: '/+', matches: ['/finance', '/'], nonMatches: ['finance', 'a/b', '//x'] },
    { filter: '+', matches: ['finance'], nonMatches: ['/finance', 'finance/'] },
    { filter: 'a//c', matches: ['a//c'], nonMatches: ['a/c', 'a/b/c'] },
    { filter: 'a/+/c', matches: ['a//c', 'a/b/c'], nonMatches: ['a/c', 'a/b/d/c'] },
    { filter: 'a/b/', matches: ['a/b/'], nonMatches: ['a/b', 'a/b/c'] },
    { filter: 'a/+/#', matches: ['a/b', 'a/b/c', 'a//'], nonMatches: ['a', 'b/a/c'] },
    { filter: '#', matches: ['x', '/', 'x/y/z'], nonMatches: [] },
  ];

  // The multi-level wildcard also matches the parent level, so 'sport/#' matches 'sport'
  // [MQTT-4.7.1-2 of 3.1.1]. Empty levels ('a//c', a trailing '/') are levels like any other.
  it.each(cases)('filter $filter matches its topics only', async ({ filter, matches, nonMatches }) => {
    const { client, messages } = await connectRecording(broker.url, { clientId: 'match-subscriber' });
    const sentinel = 'sentinel/match';
    await client.subscribeAsync([filter, sentinel], { qos: 1 });

    for (const topic of [...nonMatches, ...matches]) {
      await publisher.publishAsync(topic, topic, { qos: 1 });
    }
    await flushWithSentinel(publisher, messages, sentinel);

    const delivered = messages.map((m) => m.topic).filter((topic) => topic !== sentinel);
    expect(delivered.sort()).toEqual([...matches].sort());
  });
});

describe('$ topics', () => {
  let broker: TestBroker;

  beforeAll(async () => {
    broker = await startBroker({ sys: { interval_seconds: 1 } });
  });

  afterAll(async () => {
    await broker.stop();
  });

  it('leading wildcard skips $SYS topics [MQTT-4.7.2-1]', async () => {
    const wildcard = await connectRecording(broker.url, { clientId: 'dollar-wildcard' });
    await wildcard.client.subscribeAsync(['#', '+/broker/uptime', '+/#'], { qos: 0 });
    const explicit = await connectRecording(broker.url, { clientId: 'dollar-explicit' });
    await explicit.client.subscribeAsync('$SYS/#', { qos: 0 });

    await waitFor(() => explicit.messages.length > 0, 3000, 'a $SYS message');
    await delay(1200);

    expect(explicit.messages.every((m) => m.topic.startsWith('$SYS/'))).toBe(true);
    expect(wildcard.messages.map((m) => m.topic)).toEqual([]);
  });
});

describe('subscriptions', () => {
  let broker: TestBroker;
  let publisher: MqttClient;

  beforeAll(async () => {
    broker = await startBroker();
    publisher = await connectMqttJs(broker.url, { protocolVersion: 5, clientId: 'sub-publisher' });
  });

  afterAll(async () => {
    await endMqttJs(publisher, true);
    await broker.stop();
  });

  it('overlapping filters deliver one copy [MQTT-3.3.4-2]', async () => {
    const { client, messages } = await connectRecording(broker.url, { clientId: 'overlap' });
    await client.subscribeAsync('ov/+', { qos: 0 });
    await client.subscribeAsync('ov/#', { qos: 1 });

    await publisher.publishAsync('ov/a', 'one', { qos: 1 });
    await flushWithSentinel(publisher, messages, 'ov/sentinel');

    const copies = messages.filter((m) => m.topic === 'ov/a');
    expect(copies).toHaveLength(1);
    expect(copies[0]?.packet.qos).toBe(1);
  });

  it('overlapping filters on 3.1.1 deliver one copy', async () => {
    const { client, messages } = await connectRecording(broker.url, { clientId: 'overlap-311', protocolVersion: 4 });
    await client.subscribeAsync('ov311/#', { qos: 1 });
    await client.subscribeAsync('ov311/+', { qos: 0 });

    await publisher.publishAsync('ov311/a', 'one', { qos: 1 });
    await flushWithSentinel(publisher, messages, 'ov311/sentinel');

    const copies = messages.filter((m) => m.topic === 'ov311/a');
    expect(copies).toHaveLength(1);
    expect(copies[0]?.packet.qos).toBe(1);
  });

  it('replaced subscription uses new QoS [MQTT-3.8.4-3]', async () => {
    const { client, messages } = await connectRecording(broker.url, { clientId: 'replace' });
    await client.subscribeAsync('rep/t', { qos: 0 });
    await client.subscribeAsync('rep/t', { qos: 1 });

    await publisher.publishAsync('rep/t', 'one', { qos: 1 });
    await waitFor(() => messages.length >= 1, 2000, 'message on rep/t');
    await delay(150);

    expect(messages).toHaveLength(1);
    expect(messages[0]?.packet.qos).toBe(1);
  });

  it('replaced subscription resends retained [MQTT-3.8.4-3]', async () => {
    await publisher.publishAsync('rep/retained', 'kept', { qos: 1, retain: true });
    const { client, messages } = await connectRecording(broker.url, { clientId: 'replace-retained' });
    await client.subscribeAsync('rep/retained', { qos: 0 });
    await waitFor(() => messages.length === 1, 2000, 'first retained copy');

    await client.subscribeAsync('rep/retained', { qos: 1 });
    await waitFor(() => messages.length === 2, 2000, 'retained copy after the replacement');

    expect(messages[1]?.payload).toBe('kept');
    expect(messages[1]?.packet.retain).toBe(true);
    await publisher.publishAsync('rep/retained', '', { qos: 1, retain: true });
  });

  it('no local skips own messages [MQTT-3.8.3-3]', async () => {
    const self = await connectRecording(broker.url, { clientId: 'nl-self' });
    await self.client.subscribeAsync('nl/t', { qos: 1, nl: true });
    const other = await connectRecording(broker.url, { clientId: 'nl-other' });
    await other.client.subscribeAsync('nl/t', { qos: 1 });

    await self.client.publishAsync('nl/t', 'from self', { qos: 1 });
    await waitFor(() => other.messages.length === 1, 2000, 'the message at the other subscriber');
    await publisher.publishAsync('nl/t', 'from publisher', { qos: 1 });
    await waitFor(() => self.messages.length >= 1, 2000, "the publisher's message at nl-self");
    await delay(100);

    expect(self.messages.map((m) => m.payload)).toEqual(['from publisher']);
  });

  it('retain as published keeps the flag [MQTT-3.3.1-12] [MQTT-3.3.1-13]', async () => {
    const keep = await connectRecording(broker.url, { clientId: 'rap-keep' });
    await keep.client.subscribeAsync('rap/t', { qos: 1, rap: true });
    const clear = await connectRecording(broker.url, { clientId: 'rap-clear' });
    await clear.client.subscribeAsync('rap/t', { qos: 1, rap: false });

    await publisher.publishAsync('rap/t', 'live retained', { qos: 1, retain: true });
    await waitFor(() => keep.messages.length === 1 && clear.messages.length === 1, 2000, 'both copies');

    expect(keep.messages[0]?.packet.retain).toBe(true);
    expect(clear.messages[0]?.packet.retain).toBe(false);
    await publisher.publishAsync('rap/t', '', { qos: 1, retain: true });
  });

  it('retain handling 0, 1 and 2 [MQTT-3.3.1-9] [MQTT-3.3.1-10] [MQTT-3.3.1-11]', async () => {
    await publisher.publishAsync('rh/t', 'retained', { qos: 1, retain: true });
    const always = await connectRecording(broker.url, { clientId: 'rh-0' });
    const newOnly = await connectRecording(broker.url, { clientId: 'rh-1' });
    const never = await connectRecording(broker.url, { clientId: 'rh-2' });

    await always.client.subscribeAsync('rh/t', { qos: 1, rh: 0 });
    await newOnly.client.subscribeAsync('rh/t', { qos: 1, rh: 1 });
    await never.client.subscribeAsync('rh/t', { qos: 1, rh: 2 });
    await waitFor(() => always.messages.length === 1 && newOnly.messages.length === 1, 2000, 'retained copies');

    // Subscribing again: rh 0 sends the retained message again, rh 1 does not (the subscription exists).
    await always.client.subscribeAsync('rh/t', { qos: 1, rh: 0 });
    await newOnly.client.subscribeAsync('rh/t', { qos: 1, rh: 1 });
    await waitFor(() => always.messages.length === 2, 2000, 'second retained copy for rh 0');
    await delay(150);

    expect(always.messages.map((m) => m.payload)).toEqual(['retained', 'retained']);
    expect(newOnly.messages.map((m) => m.payload)).toEqual(['retained']);
    expect(never.messages).toEqual([]);
    await publisher.publishAsync('rh/t', '', { qos: 1, retain: true });
  });

  it('subscription identifier on PUBLISH', async () => {
    const { client, messages } = await connectRecording(broker.url, { clientId: 'sid-one' });
    await client.subscribeAsync('sid1/+', { qos: 1, properties: { subscriptionIdentifier: 7 } });
    await client.subscribeAsync('sid1/plain', { qos: 1 });

    await publisher.publishAsync('sid1/a', 'x', { qos: 1 });
    await publisher.publishAsync('sid1/b/c', 'not matched', { qos: 1 });
    await waitFor(() => messages.length >= 1, 2000, 'message on sid1/a');

    expect(messages[0]?.topic).toBe('sid1/a');
    expect(subscriptionIds(messages[0]!.packet)).toEqual([7]);
  });

  it('subscription without identifier sends none', async () => {
    const { client, messages } = await connectRecording(broker.url, { clientId: 'sid-none' });
    await client.subscribeAsync('sid0/a', { qos: 1 });

    await publisher.publishAsync('sid0/a', 'x', { qos: 1 });
    await waitFor(() => messages.length >= 1, 2000, 'message on sid0/a');

    expect(subscriptionIds(messages[0]!.packet)).toEqual([]);
  });

  it('overlapping identifiers all sent [MQTT-3.3.4-3] [MQTT-3.3.4-4]', async () => {
    const { client, messages } = await connectRecording(broker.url, { clientId: 'sid-many' });
    await client.subscribeAsync('sid2/+', { qos: 1, properties: { subscriptionIdentifier: 7 } });
    await client.subscribeAsync('sid2/#', { qos: 1, properties: { subscriptionIdentifier: 300 } });
    await client.subscribeAsync('sid2/a', { qos: 0 });

    await publisher.publishAsync('sid2/a', 'x', { qos: 1 });
    await flushWithSentinel(publisher, messages, 'sid2/sentinel/z');

    const copies = messages.filter((m) => m.topic === 'sid2/a');
    const idsAcrossCopies = copies.flatMap((m) => subscriptionIds(m.packet)).sort((a, b) => a - b);
    expect(copies).toHaveLength(1);
    expect(idsAcrossCopies).toEqual([7, 300]);
  });

  it('unsubscribe stops delivery', async () => {
    const { client, messages } = await connectRecording(broker.url, { clientId: 'unsub-stop' });
    await client.subscribeAsync(['uns/a', 'uns/sentinel'], { qos: 1 });
    await client.unsubscribeAsync('uns/a');

    await publisher.publishAsync('uns/a', 'x', { qos: 1 });
    await flushWithSentinel(publisher, messages, 'uns/sentinel');

    expect(messages.map((m) => m.topic)).toEqual(['uns/sentinel']);
  });

  it('v5 UNSUBACK reason codes per filter', async () => {
    const raw = await connectRaw(broker.port, 5, 'unsub-codes');
    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'un/a', qos: 1 }] });
    await nextOfType<ISubackPacket>(raw, 'suback');

    raw.send({ cmd: 'unsubscribe', messageId: 2, unsubscriptions: ['un/a', 'un/b'] });
    const unsuback = await nextOfType<IUnsubackPacket>(raw, 'unsuback');

    expect(unsuback.messageId).toBe(2);
    // 0x00 Success for the existing subscription, 0x11 No subscription existed for the other.
    expect(unsuback.granted).toEqual([0x00, 0x11]);
  });

  it('v5 invalid filters get SUBACK 0x8F [MQTT-4.7.1-1] [MQTT-4.7.1-2]', async () => {
    const raw = await connectRaw(broker.port, 5, 'invalid-filters-5');
    raw.send({
      cmd: 'subscribe',
      messageId: 3,
      subscriptions: [
        { topic: 'valid/one', qos: 1 },
        { topic: 'a/#/b', qos: 0 },
        { topic: 'a+', qos: 0 },
        { topic: '#a', qos: 0 },
      ],
    });
    const suback = await nextOfType<ISubackPacket>(raw, 'suback');

    expect(suback.messageId).toBe(3);
    expect(suback.granted).toEqual([1, 0x8f, 0x8f, 0x8f]);
  });

  it('3.1.1 invalid filters get SUBACK 0x80 [MQTT-4.7.1-2] [MQTT-4.7.1-3]', async () => {
    const raw = await connectRaw(broker.port, 4, 'invalid-filters-4');
    raw.send({
      cmd: 'subscribe',
      messageId: 4,
      subscriptions: [
        { topic: 'valid/two', qos: 1 },
        { topic: 'a/#/b', qos: 0 },
        { topic: 'a+', qos: 0 },
        { topic: '#a', qos: 0 },
      ],
    });
    const suback = await nextOfType<ISubackPacket>(raw, 'suback');

    expect(suback.messageId).toBe(4);
    expect(suback.granted).toEqual([1, 0x80, 0x80, 0x80]);
  });

  it('valid filter still works next to invalid ones', async () => {
    const raw = await connectRaw(broker.port, 5, 'invalid-filters-mixed');
    raw.send({
      cmd: 'subscribe',
      messageId: 5,
      subscriptions: [
        { topic: 'mixed/+', qos: 0 },
        { topic: 'mixed/#/x', qos: 0 },
      ],
    });
    await nextOfType<ISubackPacket>(raw, 'suback');

    await publisher.publishAsync('mixed/a', 'x', { qos: 1 });
    const publish = await nextOfType<IPublishPacket>(raw, 'publish');

    expect(publish.topic).toBe('mixed/a');
  });
});

describe('shared subscriptions', () => {
  let broker: TestBroker;
  let publisher: MqttClient;

  beforeAll(async () => {
    broker = await startBroker();
    publisher = await connectMqttJs(broker.url, { protocolVersion: 5, clientId: 'share-publisher' });
  });

  afterAll(async () => {
    await endMqttJs(publisher, true);
    await broker.stop();
  });

  it('round robin between 5.0 and 3.1.1 members', async () => {
    const v5Member = await connectRecording(broker.url, { clientId: 'share-v5' });
    const v311Member = await connectRecording(broker.url, { clientId: 'share-v311', protocolVersion: 4 });
    const otherGroup = await connectRecording(broker.url, { clientId: 'share-other-group' });
    await v5Member.client.subscribeAsync('$share/g1/rr/+', { qos: 1 });
    await v311Member.client.subscribeAsync('$share/g1/rr/+', { qos: 1 });
    await otherGroup.client.subscribeAsync('$share/g2/rr/#', { qos: 1 });

    const payloads = Array.from({ length: 10 }, (_, index) => `m${index}`);
    for (const payload of payloads) {
      await publisher.publishAsync('rr/x', payload, { qos: 1 });
    }
    await waitFor(
      () => v5Member.messages.length + v311Member.messages.length >= 10 && otherGroup.messages.length >= 10,
      3000,
      'ten messages in each share group',
    );
    await delay(100);

    const group1 = [...v5Member.messages, ...v311Member.messages].map((m) => m.payload).sort();
    expect(group1).toEqual([...payloads].sort());
    expect(v5Member.messages).toHaveLength(5);
    expect(v311Member.messages).toHaveLength(5);
    expect(otherGroup.messages.map((m) => m.payload)).toEqual(payloads);
    expect(v5Member.messages.every((m) => m.topic === 'rr/x')).toBe(true);
    expect(v311Member.messages.every((m) => m.topic === 'rr/x')).toBe(true);
  });

  it('round robin between 3.1.1 members', async () => {
    const first = await connectRecording(broker.url, { clientId: 'share311-a', protocolVersion: 4 });
    const second = await connectRecording(broker.url, { clientId: 'share311-b', protocolVersion: 4 });
    await first.client.subscribeAsync('$share/g311/rr311', { qos: 0 });
    await second.client.subscribeAsync('$share/g311/rr311', { qos: 0 });

    for (let index = 0; index < 6; index++) {
      await publisher.publishAsync('rr311', `m${index}`, { qos: 1 });
    }
    await waitFor(() => first.messages.length + second.messages.length >= 6, 2000, 'six shared messages');
    await delay(100);

    expect(first.messages).toHaveLength(3);
    expect(second.messages).toHaveLength(3);
  });

  it('shared subscription gets no retained messages', async () => {
    await publisher.publishAsync('shret/a', 'retained', { qos: 1, retain: true });
    const member = await connectRecording(broker.url, { clientId: 'share-retained' });
    await member.client.subscribeAsync('$share/g3/shret/#', { qos: 1 });
    await delay(300);

    expect(member.messages).toEqual([]);

    await publisher.publishAsync('shret/a', 'live', { qos: 1 });
    await waitFor(() => member.messages.length === 1, 2000, 'live message on the shared subscription');
    expect(member.messages[0]?.payload).toBe('live');
    await publisher.publishAsync('shret/a', '', { qos: 1, retain: true });
  });

  it('shared subscription with no local is a protocol error [MQTT-3.8.3-4]', async () => {
    const raw = await connectRaw(broker.port, 5, 'share-nl');
    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: '$share/g4/nl/t', qos: 0, nl: true }] });

    const disconnect = await raw.nextPacket(2000);
    expect(disconnect.cmd).toBe('disconnect');
    expect((disconnect as { reasonCode?: number }).reasonCode).toBe(0x82);
    await raw.waitClose(2000);
  });
});
