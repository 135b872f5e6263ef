/**
 * Decoding and encoding of the packets a busy broker handles most: PUBLISH without properties
 * (MQTT 3.1 and 3.1.1) and the four-byte acknowledgements PUBACK, PUBREC, PUBREL and PUBCOMP.
 * mqtt-packet's general parser runs each packet through a stream with debug calls per field. Its
 * generator builds an event emitter per packet. A profile of QoS 1 traffic put a fifth of the
 * broker's CPU time in the two. Every other packet, and any of these that is not in the common shape,
 * still goes to mqtt-packet, so its checks and error messages stay the ones clients see.
 */

import type { IPublishPacket, IPubackPacket, IPubcompPacket, IPubrecPacket, IPubrelPacket, Packet } from 'mqtt-packet';

/** Packet type numbers (MQTT 5.0 section 2.1.2). */
const PUBLISH = 3;
const PUBACK = 4;
const PUBREC = 5;
const PUBREL = 6;
const PUBCOMP = 7;

type Acknowledgement = IPubackPacket | IPubrecPacket | IPubrelPacket | IPubcompPacket;
const ACK_COMMANDS = [null, null, null, null, 'puback', 'pubrec', 'pubrel', 'pubcomp'] as const;

/**
 * Decodes `frame`, one whole packet, when it is a PUBLISH of MQTT 3.1 or 3.1.1 or a four-byte
 * acknowledgement. Returns null for every other packet, and for one of these with anything
 * unusual (QoS 3, fields longer than the packet, flags the specification reserves), which the
 * caller hands to mqtt-packet instead.
 */
export function decodeCommonPacket(frame: Buffer, protocolVersion: number): Packet | null {
  const type = (frame[0] ?? 0) >> 4;
  if (type >= PUBACK && type <= PUBCOMP) return decodeAcknowledgement(frame, type, protocolVersion);
  if (type === PUBLISH && protocolVersion !== 5) return decodePublish(frame);
  return null;
}

function decodeAcknowledgement(frame: Buffer, type: number, protocolVersion: number): Acknowledgement | null {
  const first = frame[0] ?? 0;
  // The fixed header flags are 0010 for PUBREL and 0000 for the others [MQTT-2.2.2-1].
  if (frame.length !== 4 || (first & 0x0f) !== (type === PUBREL ? 0x02 : 0)) return null;
  const packet = {
    cmd: ACK_COMMANDS[type],
    retain: false,
    qos: type === PUBREL ? 1 : 0,
    dup: false,
    length: 2,
    topic: null,
    payload: null,
    messageId: frame.readUInt16BE(2),
  } as unknown as Acknowledgement;
  // MQTT 5.0 leaves out the reason code when it is 0x00 (section 3.4.2.1).
  if (protocolVersion === 5) packet.reasonCode = 0;
  return packet;
}

function decodePublish(frame: Buffer): IPublishPacket | null {
  const first = frame[0] ?? 0;
  const qos = (first >> 1) & 0x03;
  if (qos === 3) return null;
  // The frame reader has checked the Remaining Length; skip its one to four bytes.
  let offset = 1;
  while ((frame[offset] ?? 0) & 0x80) offset++;
  offset++;
  const remainingLength = frame.length - offset;

  if (offset + 2 > frame.length) return null;
  const topicLength = frame.readUInt16BE(offset);
  offset += 2;
  const topicEnd = offset + topicLength;
  if (topicEnd > frame.length) return null;
  const topic = frame.toString('utf8', offset, topicEnd);
  offset = topicEnd;

  let messageId: number | undefined;
  if (qos > 0) {
    if (offset + 2 > frame.length) return null;
    messageId = frame.readUInt16BE(offset);
    offset += 2;
  }

  const packet = {
    cmd: 'publish',
    retain: (first & 0x01) !== 0,
    qos,
    dup: (first & 0x08) !== 0,
    length: remainingLength,
    topic,
    payload: frame.subarray(offset),
  } as IPublishPacket;
  if (messageId !== undefined) packet.messageId = messageId;
  return packet;
}

/**
 * Encodes PUBACK, PUBREC, PUBREL or PUBCOMP with reason code 0x00 and no properties as its four
 * bytes, the same for every protocol level (MQTT 5.0 leaves out a 0x00 reason code). Returns null
 * for any other packet.
 */
export function encodeSimpleAcknowledgement(packet: Packet): Buffer | null {
  let first: number;
  switch (packet.cmd) {
    case 'puback':
      first = PUBACK << 4;
      break;
    case 'pubrec':
      first = PUBREC << 4;
      break;
    case 'pubrel':
      first = (PUBREL << 4) | 0x02;
      break;
    case 'pubcomp':
      first = PUBCOMP << 4;
      break;
    default:
      return null;
  }
  if ((packet.reasonCode ?? 0) !== 0 || packet.properties !== undefined) return null;
  const messageId = packet.messageId ?? 0;
  return Buffer.from([first, 2, messageId >> 8, messageId & 0xff]);
}
