import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import mqtt from 'mqtt';
import type { IClientOptions, MqttClient } from 'mqtt';
import type { IConnectPacket, IPublishPacket, ISubackPacket, IUnsubackPacket, Packet } from 'mqtt-packet';
import { connectMqttJs, endMqttJs, startBroker, type TestBroker } from './helpers/broker.js';
import { RawClient, describePacket } from './helpers/raw-client.js';
import { delay, onceWithTimeout, waitFor } from './helpers/wait.js';

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

/**
 * Connects MQTT.js (5.0) with a message recorder attached before CONNECT is sent, so messages
 * queued in a persistent session and sent right after CONNACK are recorded too.
 */
async function connectRecording(
  url: string,
  options: IClientOptions,
): Promise<{ client: MqttClient; messages: ReceivedMessage[] }> {
  const client = mqtt.connect(url, { protocolVersion: 5, reconnectPeriod: 0, ...options });
  openClients.push(client);
  const messages: ReceivedMessage[] = [];
  client.on('message', (topic, payload, packet) => {
    messages.push({ topic, payload: payload.toString(), packet });
  });
  await onceWithTimeout(client, 'connect', 3000);
  return { client, messages };
}

async function connectRaw(
  port: number,
  clientId: string,
  properties: IConnectPacket['properties'] = {},
): Promise<RawClient> {
  const raw = await RawClient.connect(port, { protocolVersion: 5 });
  rawClients.push(raw);
  const connack = await raw.connectMqtt({ clientId, properties });
  expect(connack.reasonCode).toBe(0);
  return raw;
}

async function nextOfType<T extends Packet>(raw: RawClient, cmd: T['cmd'], timeoutMs = 2000): Promise<T> {
  const packet = await raw.nextPacket(timeoutMs);
  expect(packet.cmd).toBe(cmd);
  return packet as T;
}

/** Returns every packet the server sends within `ms`. */
async function packetsWithin(raw: RawClient, ms: number): Promise<Packet[]> {
  const deadline = Date.now() + ms;
  const packets: Packet[] = [];
  for (;;) {
    const remaining = deadline - Date.now();
    if (remaining <= 0) {
      return packets;
    }
    try {
      packets.push(await raw.nextPacket(remaining));
    } catch {
      return packets;
    }
  }
}

/** Collects packets until the server closes the connection, failing when it is still open after `timeoutMs`. */
async function packetsUntilClose(raw: RawClient, timeoutMs = 2000): Promise<Packet[]> {
  const deadline = Date.now() + timeoutMs;
  const packets: Packet[] = [];
  for (;;) {
    try {
      packets.push(await raw.nextPacket(Math.max(1, deadline - Date.now())));
    } catch {
      break;
    }
  }
  if (!raw.isSocketClosed) {
    const seen = packets.length === 0 ? 'no packet' : packets.map(describePacket).join(', ');
    throw new Error(`the server kept the connection open for ${timeoutMs} ms (it sent ${seen})`);
  }
  return packets;
}

function reasonCodeOf(packet: Packet | undefined): number | undefined {
  return packet === undefined ? undefined : (packet as { reasonCode?: number }).reasonCode;
}

function publishes(packets: Packet[]): IPublishPacket[] {
  return packets.filter((p): p is IPublishPacket => p.cmd === 'publish');
}

function encodeVarint(value: number): Buffer {
  const bytes: number[] = [];
  let rest = value;
  do {
    let byte = rest % 128;
    rest = Math.floor(rest / 128);
    if (rest > 0) byte |= 0x80;
    bytes.push(byte);
  } while (rest > 0);
  return Buffer.from(bytes);
}

function encodeString(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const length = Buffer.alloc(2);
  length.writeUInt16BE(bytes.length);
  return Buffer.concat([length, bytes]);
}

/** Encodes a 5.0 QoS 0 PUBLISH with the given property bytes (without the property length). */
function publishBytes(topic: string, properties: Buffer, payload: string): Buffer {
  const body = Buffer.concat([encodeString(topic), encodeVarint(properties.length), properties, Buffer.from(payload)]);
  return Buffer.concat([Buffer.from([0x30]), encodeVarint(body.length), body]);
}

function userPropertyBytes(pairs: [string, string][]): Buffer {
  return Buffer.concat(pairs.map(([key, value]) => Buffer.concat([Buffer.from([0x26]), encodeString(key), encodeString(value)])));
}

function topicAliasBytes(alias: number): Buffer {
  const bytes = Buffer.alloc(3);
  bytes[0] = 0x23;
  bytes.writeUInt16BE(alias, 1);
  return bytes;
}

function readVarint(buffer: Buffer, offset: number): { value: number; next: number } {
  let value = 0;
  let multiplier = 1;
  let position = offset;
  for (;;) {
    const byte = buffer[position];
    if (byte === undefined) throw new Error('variable byte integer runs past the end of the buffer');
    value += (byte & 0x7f) * multiplier;
    position += 1;
    if ((byte & 0x80) === 0) return { value, next: position };
    multiplier *= 128;
  }
}

/**
 * Returns the user properties of every PUBLISH in a raw 5.0 byte stream from the server, in wire
 * order. mqtt-packet folds repeated keys into one array per key, which hides the order.
 */
function userPropertiesOnWire(stream: Buffer): [string, string][][] {
  const result: [string, string][][] = [];
  let offset = 0;
  while (offset < stream.length) {
    const first = stream[offset]!;
    const length = readVarint(stream, offset + 1);
    const end = length.next + length.value;
    if ((first >> 4) === 3) {
      const qos = (first >> 1) & 0x03;
      let position = length.next;
      position += 2 + stream.readUInt16BE(position);
      if (qos > 0) position += 2;
      const propertyLength = readVarint(stream, position);
      result.push(readUserProperties(stream.subarray(propertyLength.next, propertyLength.next + propertyLength.value)));
    }
    offset = end;
  }
  return result;
}

function readUserProperties(properties: Buffer): [string, string][] {
  const pairs: [string, string][] = [];
  let position = 0;
  const readString = (): string => {
    const size = properties.readUInt16BE(position);
    const text = properties.subarray(position + 2, position + 2 + size).toString('utf8');
    position += 2 + size;
    return text;
  };
  while (position < properties.length) {
    const id = properties[position]!;
    position += 1;
    switch (id) {
      case 0x01: // payload format indicator
        position += 1;
        break;
      case 0x02: // message expiry interval
        position += 4;
        break;
      case 0x03: // content type
      case 0x08: // response topic
      case 0x09: // correlation data (binary, same layout)
        readString();
        break;
      case 0x0b: // subscription identifier
        position = readVarint(properties, position).next;
        break;
      case 0x23: // topic alias
        position += 2;
        break;
      case 0x26: {
        const key = readString();
        const value = readString();
        pairs.push([key, value]);
        break;
      }
      default:
        throw new Error(`unexpected property 0x${id.toString(16)} in PUBLISH from the server`);
    }
  }
  return pairs;
}

describe('topic aliases', () => {
  let broker: TestBroker;
  let publisher: MqttClient;

  beforeAll(async () => {
    broker = await startBroker();
    publisher = await connectMqttJs(broker.url, { protocolVersion: 5, clientId: 'alias-publisher' });
  });

  afterAll(async () => {
    await endMqttJs(publisher, true);
    await broker.stop();
  });

  it('inbound alias maps topic-less PUBLISH', async () => {
    const subscriber = await connectRecording(broker.url, { clientId: 'alias-in-sub' });
    await subscriber.client.subscribeAsync('al/#', { qos: 1 });
    const raw = await RawClient.connect(broker.port, { protocolVersion: 5 });
    rawClients.push(raw);
    const connack = await raw.connectMqtt({ clientId: 'alias-in-pub' });
    expect(connack.properties?.topicAliasMaximum).toBe(10);

    const steps: [string, string][] = [
      ['al/a', 'one'],
      ['', 'two'],
      ['al/b', 'three'],
      ['', 'four'],
    ];
    let messageId = 1;
    for (const [topic, payload] of steps) {
      raw.send({ cmd: 'publish', topic, payload, qos: 1, messageId, dup: false, retain: false, properties: { topicAlias: 1 } });
      const puback = await nextOfType(raw, 'puback');
      expect(reasonCodeOf(puback) ?? 0).toBe(0);
      messageId += 1;
    }
    await waitFor(() => subscriber.messages.length >= 4, 2000, 'four aliased messages');

    expect(subscriber.messages.map((m) => `${m.topic} ${m.payload}`)).toEqual([
      'al/a one',
      'al/a two',
      'al/b three',
      'al/b four',
    ]);
  });

  it('alias 0 disconnects with 0x94 [MQTT-3.3.2-8]', async () => {
    const raw = await connectRaw(broker.port, 'alias-zero');
    raw.sendBytes(publishBytes('al/zero', topicAliasBytes(0), 'x'));

    const packets = await packetsUntilClose(raw);

    expect(packets.map((p) => p.cmd)).toEqual(['disconnect']);
    expect(reasonCodeOf(packets[0])).toBe(0x94);
  });

  it('alias above the maximum disconnects with 0x94 [MQTT-3.3.2-9]', async () => {
    const raw = await connectRaw(broker.port, 'alias-too-big');
    raw.sendBytes(publishBytes('al/big', topicAliasBytes(11), 'x'));

    const packets = await packetsUntilClose(raw);

    expect(packets.map((p) => p.cmd)).toEqual(['disconnect']);
    expect(reasonCodeOf(packets[0])).toBe(0x94);
  });

  it('unknown alias with empty topic disconnects with 0x82', async () => {
    const raw = await connectRaw(broker.port, 'alias-unknown');
    raw.sendBytes(publishBytes('', topicAliasBytes(3), 'x'));

    const packets = await packetsUntilClose(raw);

    expect(packets.map((p) => p.cmd)).toEqual(['disconnect']);
    expect(reasonCodeOf(packets[0])).toBe(0x82);
  });

  it('outbound aliases stay within the client maximum [MQTT-3.1.2-26]', async () => {
    const raw = await connectRaw(broker.port, 'alias-out', { topicAliasMaximum: 2 });
    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'oa/+', qos: 0 }] });
    await nextOfType<ISubackPacket>(raw, 'suback');

    const sent = ['oa/t', 'oa/t', 'oa/u', 'oa/u', 'oa/v', 'oa/t', 'oa/v', 'oa/w'];
    for (const topic of sent) {
      await publisher.publishAsync(topic, topic, { qos: 1 });
    }
    const received = publishes(await packetsWithin(raw, 500));

    expect(received).toHaveLength(sent.length);
    // The second message on 'oa/t' reuses the alias set by the first one.
    expect(received[0]?.topic).toBe('oa/t');
    const firstAlias = received[0]?.properties?.topicAlias;
    expect(firstAlias).toBeGreaterThanOrEqual(1);
    expect(firstAlias).toBeLessThanOrEqual(2);
    expect(received[1]?.topic).toBe('');
    expect(received[1]?.properties?.topicAlias).toBe(firstAlias);

    // Resolve every message the way the client must, and compare with what was published.
    const aliases = new Map<number, string>();
    const resolved: string[] = [];
    for (const packet of received) {
      const alias = packet.properties?.topicAlias;
      if (alias !== undefined) {
        expect(alias).toBeGreaterThanOrEqual(1);
        expect(alias).toBeLessThanOrEqual(2);
        if (packet.topic !== '') aliases.set(alias, packet.topic);
      }
      resolved.push(packet.topic !== '' ? packet.topic : (aliases.get(alias ?? -1) ?? '<unknown alias>'));
    }
    expect(resolved).toEqual(sent);
    expect(received.map((p) => p.payload.toString())).toEqual(sent);
  });

  it('no outbound alias without client maximum [MQTT-3.1.2-27]', async () => {
    const raw = await connectRaw(broker.port, 'alias-out-none');
    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'oan/t', qos: 0 }] });
    await nextOfType<ISubackPacket>(raw, 'suback');

    for (let index = 0; index < 3; index++) {
      await publisher.publishAsync('oan/t', `m${index}`, { qos: 1 });
    }
    const received = publishes(await packetsWithin(raw, 300));

    expect(received.map((p) => p.topic)).toEqual(['oan/t', 'oan/t', 'oan/t']);
    expect(received.map((p) => p.properties?.topicAlias)).toEqual([undefined, undefined, undefined]);
  });
});

describe('message expiry', () => {
  let broker: TestBroker;
  let publisher: MqttClient;

  beforeAll(async () => {
    broker = await startBroker();
    publisher = await connectMqttJs(broker.url, { protocolVersion: 5, clientId: 'expiry-publisher' });
  });

  afterAll(async () => {
    await endMqttJs(publisher, true);
    await broker.stop();
  });

  /** Creates a persistent session subscribed to `topic` and leaves it offline. */
  async function offlineSession(clientId: string, topic: string): Promise<void> {
    const { client } = await connectRecording(broker.url, {
      clientId,
      clean: false,
      properties: { sessionExpiryInterval: 60 },
    });
    await client.subscribeAsync(topic, { qos: 1 });
    await endMqttJs(client);
  }

  function reconnect(clientId: string): Promise<{ client: MqttClient; messages: ReceivedMessage[] }> {
    return connectRecording(broker.url, { clientId, clean: false, properties: { sessionExpiryInterval: 60 } });
  }

  it('expiry counts down while queued [MQTT-3.3.2-6]', async () => {
    await offlineSession('expiry-countdown', 'exp/countdown');
    await publisher.publishAsync('exp/countdown', 'short-lived', { qos: 1, properties: { messageExpiryInterval: 2 } });
    await delay(1100);

    const { messages } = await reconnect('expiry-countdown');
    await waitFor(() => messages.length >= 1, 2000, 'the queued message');

    expect(messages[0]?.payload).toBe('short-lived');
    const remaining = messages[0]?.packet.properties?.messageExpiryInterval;
    expect(remaining).toBeDefined();
    expect(remaining).toBeLessThanOrEqual(1);
  });

  it('expired message is not delivered [MQTT-3.3.2-5]', async () => {
    await offlineSession('expiry-drop', 'exp/drop');
    await publisher.publishAsync('exp/drop', 'expires', { qos: 1, properties: { messageExpiryInterval: 2 } });
    await publisher.publishAsync('exp/drop', 'no expiry', { qos: 1 });
    await delay(3000);

    const { messages } = await reconnect('expiry-drop');
    await waitFor(() => messages.length >= 1, 2000, 'the message without expiry');
    await delay(200);

    expect(messages.map((m) => m.payload)).toEqual(['no expiry']);
  });
});

describe('flow control and sizes', () => {
  let broker: TestBroker;
  let publisher: MqttClient;

  beforeAll(async () => {
    broker = await startBroker();
    publisher = await connectMqttJs(broker.url, { protocolVersion: 5, clientId: 'flow-publisher' });
  });

  afterAll(async () => {
    await endMqttJs(publisher, true);
    await broker.stop();
  });

  it('client receive maximum bounds unacked QoS 1 [MQTT-3.3.4-9]', async () => {
    const raw = await connectRaw(broker.port, 'recv-max', { receiveMaximum: 2 });
    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'rmax/t', qos: 1 }] });
    await nextOfType<ISubackPacket>(raw, 'suback');

    for (let index = 0; index < 6; index++) {
      await publisher.publishAsync('rmax/t', `m${index}`, { qos: 1 });
    }
    const firstBatch = publishes(await packetsWithin(raw, 500));
    expect(firstBatch.map((p) => p.payload.toString())).toEqual(['m0', 'm1']);

    raw.send({ cmd: 'puback', messageId: firstBatch[0]!.messageId! });
    const secondBatch = publishes(await packetsWithin(raw, 500));
    expect(secondBatch.map((p) => p.payload.toString())).toEqual(['m2']);

    // Acknowledging everything lets the rest through, still at most two at a time.
    const delivered = [...firstBatch, ...secondBatch];
    const unacked = [firstBatch[1]!, secondBatch[0]!];
    while (unacked.length > 0) {
      const next = unacked.shift()!;
      raw.send({ cmd: 'puback', messageId: next.messageId! });
      const more = publishes(await packetsWithin(raw, 300));
      expect(unacked.length + more.length).toBeLessThanOrEqual(2);
      delivered.push(...more);
      unacked.push(...more);
    }
    expect(delivered.map((p) => p.payload.toString())).toEqual(['m0', 'm1', 'm2', 'm3', 'm4', 'm5']);
  });

  it('client maximum packet size drops larger messages [MQTT-3.1.2-24] [MQTT-3.1.2-25]', async () => {
    const raw = await connectRaw(broker.port, 'max-packet', { maximumPacketSize: 200 });
    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'mps/#', qos: 1 }] });
    await nextOfType<ISubackPacket>(raw, 'suback');
    const unlimited = await connectRecording(broker.url, { clientId: 'max-packet-control' });
    await unlimited.client.subscribeAsync('mps/#', { qos: 1 });

    await publisher.publishAsync('mps/big', Buffer.alloc(300, 0x61), { qos: 1 });
    await publisher.publishAsync('mps/small', 'small', { qos: 1 });
    const received = publishes(await packetsWithin(raw, 500));

    expect(received.map((p) => p.payload.toString())).toEqual(['small']);
    expect(received[0]?.topic).toBe('mps/small');
    await waitFor(() => unlimited.messages.length >= 2, 2000, 'both messages at the control subscriber');
    expect(unlimited.messages.map((m) => m.topic)).toEqual(['mps/big', 'mps/small']);
  });

  it('properties forwarded unchanged [MQTT-3.3.2-4] [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-20]', async () => {
    const { client, messages } = await connectRecording(broker.url, { clientId: 'props-sub' });
    await client.subscribeAsync('props/t', { qos: 1 });

    await publisher.publishAsync('props/t', '{"v":1}', {
      qos: 1,
      properties: {
        payloadFormatIndicator: true,
        contentType: 'application/json',
        responseTopic: 'props/reply',
        correlationData: Buffer.from([0x00, 0x01, 0xfe, 0xff]),
        userProperties: { site: 'north', tag: ['a', 'b', 'a'] },
      },
    });
    await waitFor(() => messages.length >= 1, 2000, 'message on props/t');

    const properties = messages[0]?.packet.properties;
    expect(messages[0]?.payload).toBe('{"v":1}');
    expect(properties?.payloadFormatIndicator).toBe(true);
    expect(properties?.contentType).toBe('application/json');
    expect(properties?.responseTopic).toBe('props/reply');
    expect(properties?.correlationData).toEqual(Buffer.from([0x00, 0x01, 0xfe, 0xff]));
    expect(properties?.userProperties).toEqual({ site: 'north', tag: ['a', 'b', 'a'] });
  });

  it('user property order and duplicates kept [MQTT-3.3.2-17] [MQTT-3.3.2-18]', async () => {
    const subscriber = await connectRaw(broker.port, 'order-sub');
    const wire: Buffer[] = [];
    subscriber.socket.on('data', (chunk: Buffer) => {
      wire.push(chunk);
    });
    subscriber.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'order/t', qos: 0 }] });
    await nextOfType<ISubackPacket>(subscriber, 'suback');
    const sender = await connectRaw(broker.port, 'order-pub');

    const pairs: [string, string][] = [
      ['a', '1'],
      ['b', '2'],
      ['a', '3'],
      ['a', '3'],
      ['c', ''],
      ['b', '2'],
    ];
    sender.sendBytes(publishBytes('order/t', userPropertyBytes(pairs), 'ordered'));
    await nextOfType<IPublishPacket>(subscriber, 'publish');

    expect(userPropertiesOnWire(Buffer.concat(wire))).toEqual([pairs]);
  });

  it('request problem information 0 omits reason strings [MQTT-3.1.2-29]', async () => {
    const raw = await connectRaw(broker.port, 'no-problem-info', { requestProblemInformation: false });

    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'a/#/b', qos: 0 }] });
    const suback = await nextOfType<ISubackPacket>(raw, 'suback');
    expect(suback.granted).toEqual([0x8f]);
    expect(suback.properties?.reasonString).toBeUndefined();
    expect(suback.properties?.userProperties).toBeUndefined();

    raw.send({ cmd: 'unsubscribe', messageId: 2, unsubscriptions: ['never/subscribed'] });
    const unsuback = await nextOfType<IUnsubackPacket>(raw, 'unsuback');
    expect(unsuback.granted).toEqual([0x11]);
    expect(unsuback.properties?.reasonString).toBeUndefined();
    expect(unsuback.properties?.userProperties).toBeUndefined();
  });

  it('AUTH without authentication method disconnects with 0x82', async () => {
    const raw = await connectRaw(broker.port, 'auth-without-method');
    raw.send({ cmd: 'auth', reasonCode: 0x18 });

    const packets = await packetsUntilClose(raw);

    expect(packets.map((p) => p.cmd)).toEqual(['disconnect']);
    expect(reasonCodeOf(packets[0])).toBe(0x82);
  });
});

describe('broker receive maximum', () => {
  let broker: TestBroker;

  beforeAll(async () => {
    broker = await startBroker({ limits: { receive_maximum: 2 } });
  });

  afterAll(async () => {
    await broker.stop();
  });

  it('client over receive maximum gets 0x93 [MQTT-3.3.4-7]', async () => {
    const raw = await RawClient.connect(broker.port, { protocolVersion: 5 });
    rawClients.push(raw);
    const connack = await raw.connectMqtt({ clientId: 'recv-max-exceeded' });
    expect(connack.properties?.receiveMaximum).toBe(2);

    // QoS 2 messages stay incomplete until PUBREL, which this client never sends.
    for (let messageId = 1; messageId <= 3; messageId++) {
      raw.send({ cmd: 'publish', topic: 'rm/t', payload: 'x', qos: 2, messageId, dup: false, retain: false });
    }
    const packets = await packetsUntilClose(raw);

    expect(packets.map((p) => p.cmd)).toEqual(['pubrec', 'pubrec', 'disconnect']);
    expect(reasonCodeOf(packets[2])).toBe(0x93);
  });
});
