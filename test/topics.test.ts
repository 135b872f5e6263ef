import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { MqttClient } from 'mqtt';
import type { Packet } from 'mqtt-packet';
import { connectMqttJs, endMqttJs, startBroker, type TestBroker } from './helpers/broker.js';
import { RawClient, describePacket } from './helpers/raw-client.js';
import { delay, waitFor } from './helpers/wait.js';

const MAX_TOPIC_LEVELS = 4;

const rawClients: RawClient[] = [];

afterEach(() => {
  for (const raw of rawClients.splice(0)) {
    raw.close();
  }
});

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

/**
 * Encodes a PUBLISH whose topic is given as raw bytes, so the topic can hold what no client
 * library would encode. `properties` (without its length) makes it a 5.0 packet.
 */
function publishBytes(topic: Buffer, options: { qos?: 0 | 1; properties?: Buffer; payload?: Buffer } = {}): Buffer {
  const qos = options.qos ?? 0;
  const topicLength = Buffer.alloc(2);
  topicLength.writeUInt16BE(topic.length);
  const parts = [topicLength, topic];
  if (qos > 0) {
    parts.push(Buffer.from([0x00, 0x01]));
  }
  if (options.properties !== undefined) {
    parts.push(encodeVarint(options.properties.length), options.properties);
  }
  parts.push(options.payload ?? Buffer.from('payload'));
  const body = Buffer.concat(parts);
  return Buffer.concat([Buffer.from([0x30 | (qos << 1)]), encodeVarint(body.length), body]);
}

async function connectRaw(port: number, protocolVersion: 4 | 5, clientId: string): Promise<RawClient> {
  const raw = await RawClient.connect(port, { protocolVersion });
  rawClients.push(raw);
  const connack = await raw.connectMqtt({ clientId });
  expect(connack.reasonCode ?? connack.returnCode).toBe(0);
  return raw;
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

function disconnectCodes(packets: Packet[]): (number | undefined)[] {
  return packets.filter((p) => p.cmd === 'disconnect').map((p) => (p as { reasonCode?: number }).reasonCode);
}

describe('topic names in PUBLISH', () => {
  let broker: TestBroker;
  let watcher: MqttClient;
  let sentinelPublisher: MqttClient;
  const watched: string[] = [];
  let sentinelCount = 0;

  beforeAll(async () => {
    broker = await startBroker({ limits: { max_topic_levels: MAX_TOPIC_LEVELS } });
    watcher = await connectMqttJs(broker.url, { protocolVersion: 5, clientId: 'topic-watcher' });
    watcher.on('message', (topic) => {
      watched.push(topic);
    });
    await watcher.subscribeAsync('#', { qos: 1 });
    sentinelPublisher = await connectMqttJs(broker.url, { protocolVersion: 5, clientId: 'topic-sentinel' });
  });

  afterAll(async () => {
    await endMqttJs(watcher, true);
    await endMqttJs(sentinelPublisher, true);
    await broker.stop();
  });

  /**
   * Checks that the watcher on '#' got nothing since the last check except a fresh sentinel, which
   * shows that the rejected PUBLISH was not delivered and that other connections still work.
   */
  async function expectNothingDeliveredButSentinel(): Promise<void> {
    sentinelCount += 1;
    const sentinel = `sentinel/${sentinelCount}`;
    await sentinelPublisher.publishAsync(sentinel, 'ok', { qos: 1 });
    await waitFor(() => watched.includes(sentinel), 2000, `sentinel ${sentinel} at the watcher`);
    await delay(50);

    expect(watched.splice(0)).toEqual([sentinel]);
    expect(watcher.connected).toBe(true);
  }

  it('v5 wildcard in topic name closes with 0x90 [MQTT-3.3.2-2]', async () => {
    const raw = await connectRaw(broker.port, 5, 'wildcard-5');
    raw.sendBytes(publishBytes(Buffer.from('a/+'), { properties: Buffer.alloc(0) }));
    raw.sendBytes(publishBytes(Buffer.from('a/#'), { properties: Buffer.alloc(0) }));

    const packets = await packetsUntilClose(raw);

    expect(disconnectCodes(packets)).toEqual([0x90]);
    await expectNothingDeliveredButSentinel();
  });

  it('3.1.1 wildcard in topic name closes [MQTT-3.3.2-2]', async () => {
    const raw = await connectRaw(broker.port, 4, 'wildcard-4');
    raw.sendBytes(publishBytes(Buffer.from('a/#')));

    const packets = await packetsUntilClose(raw);

    expect(packets).toEqual([]);
    await expectNothingDeliveredButSentinel();
  });

  const malformedTopics: { name: string; topic: Buffer }[] = [
    { name: 'U+0000 [MQTT-1.5.4-2]', topic: Buffer.from('a\u0000b', 'utf8') },
    { name: 'overlong C0 AF [MQTT-1.5.4-1]', topic: Buffer.from([0x61, 0x2f, 0xc0, 0xaf]) },
    { name: 'surrogate ED A0 80 [MQTT-1.5.4-1]', topic: Buffer.from([0x61, 0x2f, 0xed, 0xa0, 0x80]) },
  ];

  for (const { name, topic } of malformedTopics) {
    it(`v5 topic with ${name} closes`, async () => {
      const raw = await connectRaw(broker.port, 5, 'bad-utf8-5');
      raw.sendBytes(publishBytes(topic, { properties: Buffer.alloc(0) }));

      const packets = await packetsUntilClose(raw);

      // The broker may close without DISCONNECT, but a DISCONNECT it sends carries Malformed Packet (0x81).
      for (const code of disconnectCodes(packets)) {
        expect(code).toBe(0x81);
      }
      expect(packets.filter((p) => p.cmd !== 'disconnect')).toEqual([]);
      await expectNothingDeliveredButSentinel();
    });

    it(`3.1.1 topic with ${name} closes`, async () => {
      const raw = await connectRaw(broker.port, 4, 'bad-utf8-4');
      raw.sendBytes(publishBytes(topic, { qos: 1 }));

      const packets = await packetsUntilClose(raw);

      expect(packets).toEqual([]);
      await expectNothingDeliveredButSentinel();
    });
  }

  it('v5 empty topic without alias closes [MQTT-4.7.3-1]', async () => {
    const raw = await connectRaw(broker.port, 5, 'empty-topic-5');
    raw.sendBytes(publishBytes(Buffer.alloc(0), { properties: Buffer.alloc(0) }));

    const packets = await packetsUntilClose(raw);

    // A zero-length topic without a Topic Alias is a Protocol Error (0x82).
    for (const code of disconnectCodes(packets)) {
      expect(code).toBe(0x82);
    }
    expect(packets.filter((p) => p.cmd !== 'disconnect')).toEqual([]);
    await expectNothingDeliveredButSentinel();
  });

  it('3.1.1 empty topic closes [MQTT-4.7.3-1]', async () => {
    const raw = await connectRaw(broker.port, 4, 'empty-topic-4');
    raw.sendBytes(publishBytes(Buffer.alloc(0)));

    const packets = await packetsUntilClose(raw);

    expect(packets).toEqual([]);
    await expectNothingDeliveredButSentinel();
  });

  it('topic at the level limit is delivered', async () => {
    const publisher = await connectRaw(broker.port, 5, 'levels-ok');
    publisher.send({ cmd: 'publish', topic: 'l/2/3/4', qos: 1, messageId: 1, dup: false, retain: false, payload: 'x' });

    const puback = await publisher.nextPacket(2000);
    expect(puback.cmd).toBe('puback');
    await waitFor(() => watched.includes('l/2/3/4'), 2000, 'message on l/2/3/4');
    watched.splice(0);
  });

  it('v5 topic over max_topic_levels is rejected', async () => {
    const raw = await connectRaw(broker.port, 5, 'levels-5');
    raw.send({ cmd: 'publish', topic: 'l/2/3/4/5', qos: 1, messageId: 7, dup: false, retain: false, payload: 'x' });

    const reply = await raw.nextPacket(2000);

    // The broker either sends PUBACK 0x90 (Topic Name invalid) or disconnects with 0x90.
    expect(['puback', 'disconnect']).toContain(reply.cmd);
    expect((reply as { reasonCode?: number }).reasonCode).toBe(0x90);
    if (reply.cmd === 'disconnect') {
      await raw.waitClose(2000);
    }
    await expectNothingDeliveredButSentinel();
  });

  it('3.1.1 topic over max_topic_levels is not delivered', async () => {
    const raw = await connectRaw(broker.port, 4, 'levels-4');
    raw.send({ cmd: 'publish', topic: 'l/2/3/4/5/6', qos: 0, dup: false, retain: false, payload: 'x' });
    await delay(100);

    await expectNothingDeliveredButSentinel();
  });
});
