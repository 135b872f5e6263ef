/**
 * The hand-written decoder and encoder of src/mqtt/fast-path.ts against mqtt-packet, which the
 * broker uses for every other packet. For the packets the fast path takes, both must give the
 * same result. The fast path must decline every packet it does not take.
 */

import mqttPacket, { type Packet } from 'mqtt-packet';
import { describe, expect, it } from 'vitest';

import { decodeCommonPacket, encodeSimpleAcknowledgement } from '../src/mqtt/fast-path.js';

/** Parses one whole packet with mqtt-packet, as the broker's general path does. */
function referenceParse(frame: Buffer, protocolVersion: number): Packet | Error {
  const parser = mqttPacket.parser({ protocolVersion });
  let result: Packet | Error = new Error('no packet');
  parser.on('packet', (packet: Packet) => (result = packet));
  parser.on('error', (error: Error) => (result = error));
  parser.parse(frame);
  return result;
}

/** Returns the defined fields as a plain object, so that class instances compare with object literals. */
function fields(packet: Packet): Record<string, unknown> {
  return Object.fromEntries(Object.entries(packet).filter(([, value]) => value !== undefined));
}

describe('fast path decoder', () => {
  const payloads = [Buffer.alloc(0), Buffer.from('21.5'), Buffer.alloc(300, 7), Buffer.alloc(20_000, 1)];
  const topics = ['a', 'plant/meter-1/counter', 'ü/温度/€', 'x'.repeat(200)];

  for (const protocolVersion of [3, 4]) {
    it(`decodes v${protocolVersion} PUBLISH like mqtt-packet`, () => {
      let checked = 0;
      for (const topic of topics) {
        for (const payload of payloads) {
          for (const qos of [0, 1, 2] as const) {
            for (const flags of [{ retain: false, dup: false }, { retain: true, dup: qos > 0 }]) {
              const packet = { cmd: 'publish' as const, topic, payload, qos, messageId: qos > 0 ? 4242 : undefined, ...flags };
              const frame = mqttPacket.generate(packet, { protocolVersion });
              const fast = decodeCommonPacket(frame, protocolVersion);
              expect(fast).not.toBeNull();
              expect(fields(fast as Packet)).toEqual(fields(referenceParse(frame, protocolVersion) as Packet));
              checked++;
            }
          }
        }
      }
      expect(checked).toBe(topics.length * payloads.length * 3 * 2);
    });
  }

  for (const protocolVersion of [3, 4, 5]) {
    it(`decodes v${protocolVersion} acknowledgements like mqtt-packet`, () => {
      for (const cmd of ['puback', 'pubrec', 'pubrel', 'pubcomp'] as const) {
        for (const messageId of [1, 255, 256, 65535]) {
          // mqtt-packet writes a v5 acknowledgement with its 0x00 reason code; the short form leaves it out.
          const frame = encodeSimpleAcknowledgement({ cmd, messageId }) as Buffer;
          expect(fields(decodeCommonPacket(frame, protocolVersion) as Packet)).toEqual(fields(referenceParse(frame, protocolVersion) as Packet));
        }
      }
    });
  }

  it('declines MQTT 5 PUBLISH', () => {
    const frame = mqttPacket.generate({ cmd: 'publish', topic: 't', payload: Buffer.from('x'), qos: 1, messageId: 1, retain: false, dup: false }, { protocolVersion: 5 });
    expect(decodeCommonPacket(frame, 5)).toBeNull();
  });

  it('declines v5 acknowledgements with a reason code', () => {
    const frame = mqttPacket.generate({ cmd: 'puback', messageId: 7, reasonCode: 0x10 }, { protocolVersion: 5 });
    expect(frame.length).toBeGreaterThan(4);
    expect(decodeCommonPacket(frame, 5)).toBeNull();
  });

  it('declines malformed PUBLISH and acknowledgements', () => {
    const cases: Record<string, Buffer> = {
      'QoS 3': Buffer.from([0x36, 5, 0, 1, 0x61, 0, 1]),
      'topic longer than the packet': Buffer.from([0x30, 3, 0, 9, 0x61]),
      'missing packet id': Buffer.from([0x32, 3, 0, 1, 0x61]),
      'only part of the topic length': Buffer.from([0x30, 1, 0]),
      'PUBREL with flags 0000': Buffer.from([0x60, 2, 0, 1]),
      'PUBACK with flags 0010': Buffer.from([0x42, 2, 0, 1]),
      'PUBACK of 5 bytes': Buffer.from([0x40, 3, 0, 1, 0]),
      'SUBSCRIBE': mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 't', qos: 0 }] }),
      'PINGREQ': Buffer.from([0xc0, 0]),
    };
    for (const [name, frame] of Object.entries(cases)) expect(decodeCommonPacket(frame, 4), name).toBeNull();
  });
});

describe('fast path encoder', () => {
  for (const protocolVersion of [3, 4]) {
    it(`encodes v${protocolVersion} acknowledgements like mqtt-packet`, () => {
      for (const cmd of ['puback', 'pubrec', 'pubrel', 'pubcomp'] as const) {
        for (const messageId of [1, 256, 65535]) {
          const packet = { cmd, messageId };
          expect(encodeSimpleAcknowledgement(packet)).toEqual(mqttPacket.generate(packet, { protocolVersion }));
        }
      }
    });
  }

  it('encodes v5 acknowledgements in the short form', () => {
    for (const cmd of ['puback', 'pubrec', 'pubrel', 'pubcomp'] as const) {
      const bytes = encodeSimpleAcknowledgement({ cmd, messageId: 300 }) as Buffer;
      // Remaining Length 2 means reason code 0x00 without properties (MQTT 5.0 section 3.4.2.1).
      expect(bytes).toHaveLength(4);
      expect(fields(referenceParse(bytes, 5) as Packet)).toMatchObject({ cmd, messageId: 300, reasonCode: 0 });
    }
  });

  it('declines reason codes, properties and other packets', () => {
    expect(encodeSimpleAcknowledgement({ cmd: 'puback', messageId: 1, reasonCode: 0x10 })).toBeNull();
    expect(encodeSimpleAcknowledgement({ cmd: 'pubrec', messageId: 1, properties: { reasonString: 'x' } })).toBeNull();
    expect(encodeSimpleAcknowledgement({ cmd: 'pingresp' })).toBeNull();
  });
});
