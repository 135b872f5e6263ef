import { isUtf8 } from 'node:buffer';
import type { Packet } from 'mqtt-packet';

/**
 * mqtt-packet decodes strings leniently, turning invalid UTF-8 into U+FFFD. Strings in MQTT must be
 * well-formed UTF-8 [MQTT-1.5.4-1] (3.1.1: [MQTT-1.5.3-1]), so when a decoded topic, filter or
 * client id contains U+FFFD, the raw bytes of those fields are checked again here.
 */

const REPLACEMENT = '\ufffd';

/** Returns true when a string field of the packet that must be UTF-8 is not well-formed. */
export function hasMalformedUtf8(packet: Packet, frame: Buffer, protocolVersion: number): boolean {
  switch (packet.cmd) {
    case 'publish':
      return packet.topic.includes(REPLACEMENT) && !publishTopicIsUtf8(frame);
    case 'subscribe':
      return packet.subscriptions.some((s) => s.topic.includes(REPLACEMENT)) && !filtersAreUtf8(frame, protocolVersion, 1);
    case 'unsubscribe':
      return packet.unsubscriptions.some((t) => t.includes(REPLACEMENT)) && !filtersAreUtf8(frame, protocolVersion, 0);
    case 'connect':
      return (
        (packet.clientId.includes(REPLACEMENT) ||
          (packet.will?.topic.includes(REPLACEMENT) ?? false) ||
          (packet.username?.includes(REPLACEMENT) ?? false)) &&
        !connectStringsAreUtf8(frame)
      );
    default:
      return false;
  }
}

function fixedHeaderLength(frame: Buffer): number {
  let i = 1;
  while (i < 5 && (frame[i] & 0x80) !== 0) i++;
  return i + 1;
}

function readVarint(frame: Buffer, offset: number): { value: number; next: number } {
  let value = 0;
  let multiplier = 1;
  let i = offset;
  for (; i < offset + 4 && i < frame.length; i++) {
    value += (frame[i] & 0x7f) * multiplier;
    multiplier *= 128;
    if ((frame[i] & 0x80) === 0) return { value, next: i + 1 };
  }
  return { value, next: i };
}

/** Checks the length-prefixed string at `offset`; returns the offset after it, or -1 when invalid. */
function checkString(frame: Buffer, offset: number): number {
  if (offset + 2 > frame.length) return -1;
  const length = frame.readUInt16BE(offset);
  const end = offset + 2 + length;
  if (end > frame.length) return -1;
  return isUtf8(frame.subarray(offset + 2, end)) ? end : -1;
}

function skipBinary(frame: Buffer, offset: number): number {
  if (offset + 2 > frame.length) return -1;
  return offset + 2 + frame.readUInt16BE(offset);
}

function publishTopicIsUtf8(frame: Buffer): boolean {
  return checkString(frame, fixedHeaderLength(frame)) >= 0;
}

function filtersAreUtf8(frame: Buffer, protocolVersion: number, optionBytes: number): boolean {
  let offset = fixedHeaderLength(frame) + 2;
  if (protocolVersion === 5) {
    const properties = readVarint(frame, offset);
    offset = properties.next + properties.value;
  }
  while (offset < frame.length) {
    offset = checkString(frame, offset);
    if (offset < 0) return false;
    offset += optionBytes;
  }
  return true;
}

function connectStringsAreUtf8(frame: Buffer): boolean {
  let offset = skipBinary(frame, fixedHeaderLength(frame)); // protocol name
  const level = frame[offset] & 0x7f;
  const flags = frame[offset + 1];
  offset += 4; // level, flags, keep alive
  if (level === 5) {
    const properties = readVarint(frame, offset);
    offset = properties.next + properties.value;
  }
  offset = checkString(frame, offset); // client id
  if (offset < 0) return false;
  if ((flags & 0x04) !== 0) {
    if (level === 5) {
      const willProperties = readVarint(frame, offset);
      offset = willProperties.next + willProperties.value;
    }
    offset = checkString(frame, offset); // will topic
    if (offset < 0) return false;
    offset = skipBinary(frame, offset); // will payload
  }
  if ((flags & 0x80) !== 0) return checkString(frame, offset) >= 0; // user name
  return true;
}
