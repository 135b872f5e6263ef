import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Packet } from 'mqtt-packet';
import { connectMqttJs, endMqttJs, startBroker, type TestBroker } from './helpers/broker.js';
import { RawClient, describePacket } from './helpers/raw-client.js';
import { waitFor } from './helpers/wait.js';

const MAX_PACKET_SIZE = 200;
const MALFORMED = 0x81;
const PROTOCOL_ERROR = 0x82;
const PACKET_TOO_LARGE = 0x95;

type Version = 4 | 5;

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

function encodeString(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const length = Buffer.alloc(2);
  length.writeUInt16BE(bytes.length);
  return Buffer.concat([length, bytes]);
}

/** Builds a packet from its first byte and body, with a correct remaining length. */
function frame(firstByte: number, ...body: Buffer[]): Buffer {
  const joined = Buffer.concat(body);
  return Buffer.concat([Buffer.from([firstByte]), encodeVarint(joined.length), joined]);
}

/** Encodes the property section of a 5.0 packet (length, then `properties`), or nothing for 3.1.1. */
function propertySection(version: Version, properties: Buffer = Buffer.alloc(0)): Buffer {
  return version === 5 ? Buffer.concat([encodeVarint(properties.length), properties]) : Buffer.alloc(0);
}

const PACKET_ID = Buffer.from([0x00, 0x01]);

function subscribeBody(version: Version): Buffer {
  return Buffer.concat([PACKET_ID, propertySection(version), encodeString('ok/filter'), Buffer.from([0x00])]);
}

async function connectRaw(port: number, version: Version, clientId: string): Promise<RawClient> {
  const raw = await RawClient.connect(port, { protocolVersion: version });
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

interface MalformedCase {
  name: string;
  /** Bytes sent after a successful CONNECT. */
  bytes: (version: Version) => Buffer;
  versions: Version[];
  /** DISCONNECT reason codes a 5.0 client may get; the first is the one the specification names. */
  v5Codes: number[];
}

const cases: MalformedCase[] = [
  {
    name: 'remaining length of 5 bytes',
    bytes: () => Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x7f]),
    versions: [4, 5],
    v5Codes: [MALFORMED],
  },
  {
    name: 'topic length past packet end',
    // Remaining length 5, but the topic claims 16 bytes.
    bytes: () => Buffer.from([0x30, 0x05, 0x00, 0x10, 0x61, 0x62, 0x63]),
    versions: [4, 5],
    v5Codes: [MALFORMED],
  },
  {
    name: 'property length past packet end',
    bytes: () => frame(0x30, encodeString('a'), Buffer.from([0x20, 0x01, 0x00]), Buffer.from('x')),
    versions: [5],
    v5Codes: [MALFORMED],
  },
  {
    name: 'SUBSCRIBE flags 0x80 [MQTT-3.8.1-1]',
    bytes: (version) => frame(0x80, subscribeBody(version)),
    versions: [4, 5],
    v5Codes: [MALFORMED],
  },
  {
    name: 'SUBSCRIBE flags 0x8A [MQTT-3.8.1-1]',
    bytes: (version) => frame(0x8a, subscribeBody(version)),
    versions: [4, 5],
    v5Codes: [MALFORMED],
  },
  {
    name: 'UNSUBSCRIBE flags 0xA0 [MQTT-3.10.1-1]',
    bytes: (version) => frame(0xa0, PACKET_ID, propertySection(version), encodeString('ok/filter')),
    versions: [4, 5],
    v5Codes: [MALFORMED],
  },
  {
    name: 'PINGREQ flags 0xC2 [MQTT-2.2.2-2]',
    bytes: () => Buffer.from([0xc2, 0x00]),
    versions: [4, 5],
    v5Codes: [MALFORMED],
  },
  {
    name: 'PUBLISH QoS 3 [MQTT-3.3.1-4]',
    bytes: (version) => frame(0x36, encodeString('q/3'), PACKET_ID, propertySection(version), Buffer.from('x')),
    versions: [4, 5],
    v5Codes: [MALFORMED],
  },
  {
    name: 'SUBSCRIBE without filters [MQTT-3.8.3-3 of 3.1.1] [MQTT-3.8.3-2]',
    bytes: (version) => frame(0x82, PACKET_ID, propertySection(version)),
    versions: [4, 5],
    // 5.0 calls a SUBSCRIBE without payload a Protocol Error; Malformed Packet is accepted too.
    v5Codes: [PROTOCOL_ERROR, MALFORMED],
  },
  {
    name: 'Session Expiry property in PUBLISH',
    bytes: (version) =>
      frame(0x30, encodeString('p/t'), propertySection(version, Buffer.from([0x11, 0x00, 0x00, 0x00, 0x0a])), Buffer.from('x')),
    versions: [5],
    v5Codes: [MALFORMED, PROTOCOL_ERROR],
  },
  {
    name: 'Subscription Identifier in client PUBLISH [MQTT-3.3.4-6]',
    bytes: (version) => frame(0x30, encodeString('p/t'), propertySection(version, Buffer.from([0x0b, 0x05])), Buffer.from('x')),
    versions: [5],
    v5Codes: [PROTOCOL_ERROR, MALFORMED],
  },
  {
    name: 'Payload Format Indicator 1 twice in PUBLISH',
    bytes: (version) =>
      frame(0x30, encodeString('p/t'), propertySection(version, Buffer.from([0x01, 0x01, 0x01, 0x01])), Buffer.from('x')),
    versions: [5],
    v5Codes: [PROTOCOL_ERROR, MALFORMED],
  },
  {
    // A repeated property is a Protocol Error whatever its value, 0 included.
    name: 'Payload Format Indicator 0 twice in PUBLISH',
    bytes: (version) =>
      frame(0x30, encodeString('p/t'), propertySection(version, Buffer.from([0x01, 0x00, 0x01, 0x00])), Buffer.from('x')),
    versions: [5],
    v5Codes: [PROTOCOL_ERROR, MALFORMED],
  },
  {
    name: 'Message Expiry Interval 0 twice in PUBLISH',
    bytes: (version) =>
      frame(
        0x30,
        encodeString('p/t'),
        propertySection(version, Buffer.from([0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00])),
        Buffer.from('x'),
      ),
    versions: [5],
    v5Codes: [PROTOCOL_ERROR, MALFORMED],
  },
  {
    name: 'second CONNECT [MQTT-3.1.0-2]',
    bytes: (version) =>
      frame(
        0x10,
        encodeString('MQTT'),
        Buffer.from([version, 0x02, 0x00, 0x3c]),
        propertySection(version),
        encodeString('again'),
      ),
    versions: [4, 5],
    v5Codes: [PROTOCOL_ERROR],
  },
  {
    name: 'reserved packet type 0',
    bytes: () => Buffer.from([0x00, 0x00]),
    versions: [4, 5],
    v5Codes: [MALFORMED, PROTOCOL_ERROR],
  },
];

describe('malformed packets', () => {
  let broker: TestBroker;

  beforeAll(async () => {
    broker = await startBroker({ limits: { max_packet_size: MAX_PACKET_SIZE } });
  });

  afterAll(async () => {
    await broker.stop();
  });

  /** Shows that a new, well-behaved MQTT.js client can still subscribe, publish and receive. */
  async function expectBrokerServes(label: string): Promise<void> {
    const client = await connectMqttJs(broker.url, { protocolVersion: 5, clientId: `healthy-${label}` });
    try {
      const received: string[] = [];
      client.on('message', (_topic, payload) => {
        received.push(payload.toString());
      });
      await client.subscribeAsync('health/check', { qos: 1 });
      await client.publishAsync('health/check', label, { qos: 1 });
      await waitFor(() => received.length > 0, 2000, 'the health check message');
      expect(received).toEqual([label]);
    } finally {
      await endMqttJs(client, true);
    }
  }

  for (const testCase of cases) {
    for (const version of testCase.versions) {
      it(`${version === 5 ? 'v5' : '3.1.1'} ${testCase.name}`, async () => {
        const raw = await connectRaw(broker.port, version, `malformed-${version}`);
        raw.sendBytes(testCase.bytes(version));

        const packets = await packetsUntilClose(raw);

        if (version === 5) {
          expect(packets.map((p) => p.cmd)).toEqual(['disconnect']);
          expect(testCase.v5Codes).toContain((packets[0] as { reasonCode?: number }).reasonCode);
        } else {
          expect(packets).toEqual([]);
        }
        await expectBrokerServes(`${version}-${testCase.name.replace(/\W+/g, '-')}`);
      });
    }
  }

  it('CONNACK announces max_packet_size', async () => {
    const raw = await RawClient.connect(broker.port, { protocolVersion: 5 });
    rawClients.push(raw);
    const connack = await raw.connectMqtt({ clientId: 'announce-size' });

    expect(connack.properties?.maximumPacketSize).toBe(MAX_PACKET_SIZE);
  });

  for (const version of [4, 5] as const) {
    it(`${version === 5 ? 'v5' : '3.1.1'} packet over max_packet_size closes`, async () => {
      const raw = await connectRaw(broker.port, version, `too-large-${version}`);
      raw.send({
        cmd: 'publish',
        topic: 'big/t',
        payload: Buffer.alloc(MAX_PACKET_SIZE + 100, 0x61),
        qos: 0,
        dup: false,
        retain: false,
      });

      const packets = await packetsUntilClose(raw);

      if (version === 5) {
        expect(packets.map((p) => p.cmd)).toEqual(['disconnect']);
        expect((packets[0] as { reasonCode?: number }).reasonCode).toBe(PACKET_TOO_LARGE);
      } else {
        expect(packets).toEqual([]);
      }
      await expectBrokerServes(`too-large-${version}`);
    });

    it(`${version === 5 ? 'v5' : '3.1.1'} huge remaining length closes before the body`, async () => {
      const raw = await connectRaw(broker.port, version, `huge-length-${version}`);
      // Remaining length 268,435,455, the largest MQTT allows; no body follows.
      raw.sendBytes(Buffer.from([0x30, 0xff, 0xff, 0xff, 0x7f]));

      const packets = await packetsUntilClose(raw);

      if (version === 5) {
        expect(packets.map((p) => p.cmd)).toEqual(['disconnect']);
        expect((packets[0] as { reasonCode?: number }).reasonCode).toBe(PACKET_TOO_LARGE);
      } else {
        expect(packets).toEqual([]);
      }
      await expectBrokerServes(`huge-length-${version}`);
    });
  }

  it('PUBLISH before CONNECT closes [MQTT-3.1.0-1]', async () => {
    const raw = await RawClient.connect(broker.port, { protocolVersion: 4 });
    rawClients.push(raw);
    raw.sendBytes(frame(0x30, encodeString('early/t'), Buffer.from('x')));

    const packets = await packetsUntilClose(raw);

    expect(packets).toEqual([]);
    await expectBrokerServes('before-connect');
  });
});
