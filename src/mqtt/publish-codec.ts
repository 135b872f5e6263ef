/**
 * PUBLISH properties read and written in wire order. mqtt-packet keeps user properties in an
 * object keyed by name, which loses the order of interleaved names and cannot tell a repeated
 * single-valued property whose first value was 0. A server must forward user properties in
 * order [MQTT-3.3.2-18] and treat a repeated property as a Protocol Error (MQTT 5.0 section
 * 2.2.2.2), so Outpost reads the PUBLISH property section itself and encodes PUBLISH itself.
 */

export type UserProperty = readonly [name: string, value: string];

const PAYLOAD_FORMAT_INDICATOR = 0x01;
const MESSAGE_EXPIRY_INTERVAL = 0x02;
const CONTENT_TYPE = 0x03;
const RESPONSE_TOPIC = 0x08;
const CORRELATION_DATA = 0x09;
const SUBSCRIPTION_IDENTIFIER = 0x0b;
const TOPIC_ALIAS = 0x23;
const USER_PROPERTY = 0x26;

/** Byte length of each property value type, or a reader for variable-length ones. */
const FIXED_SIZES: Record<number, number> = {
  [PAYLOAD_FORMAT_INDICATOR]: 1,
  [MESSAGE_EXPIRY_INTERVAL]: 4,
  [TOPIC_ALIAS]: 2,
};
const LENGTH_PREFIXED = new Set([CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION_DATA]);

export interface PublishPropertyScan {
  userProperties: UserProperty[];
  /** Id of a property that appears more than once but may appear only once, or 0. */
  repeatedPropertyId: number;
}

/**
 * Reads the property section of an MQTT 5.0 PUBLISH; returns null when its layout is invalid
 * (mqtt-packet has parsed the packet already, so this happens only for inconsistent lengths).
 */
export function scanPublishProperties(frame: Buffer, qos: number): PublishPropertyScan | null {
  let offset = 1;
  while ((frame[offset] & 0x80) !== 0) offset++;
  offset++;
  offset += 2 + frame.readUInt16BE(offset);
  if (qos > 0) offset += 2;
  const length = readVarint(frame, offset);
  if (length === null) return null;
  offset = length.next;
  const end = offset + length.value;
  if (end > frame.length) return null;

  const seen = new Set<number>();
  const result: PublishPropertyScan = { userProperties: [], repeatedPropertyId: 0 };
  while (offset < end) {
    const id = frame[offset++];
    if (id === USER_PROPERTY) {
      const name = readString(frame, offset, end);
      if (name === null) return null;
      const value = readString(frame, name.next, end);
      if (value === null) return null;
      result.userProperties.push([name.text, value.text]);
      offset = value.next;
      continue;
    }
    if (seen.has(id) && result.repeatedPropertyId === 0) result.repeatedPropertyId = id;
    seen.add(id);
    const fixed = FIXED_SIZES[id];
    if (fixed !== undefined) {
      offset += fixed;
    } else if (LENGTH_PREFIXED.has(id)) {
      if (offset + 2 > end) return null;
      offset += 2 + frame.readUInt16BE(offset);
    } else if (id === SUBSCRIPTION_IDENTIFIER) {
      const value = readVarint(frame, offset);
      if (value === null) return null;
      offset = value.next;
    } else {
      return null;
    }
  }
  return offset === end ? result : null;
}

export interface PublishFields {
  protocolVersion: number;
  /** Topic name; empty when a topic alias stands for it. */
  topic: string;
  payload: Buffer;
  qos: number;
  retain: boolean;
  dup: boolean;
  packetId: number;
  payloadFormatIndicator?: boolean;
  messageExpiryInterval?: number;
  contentType?: string;
  responseTopic?: string;
  correlationData?: Buffer;
  userProperties?: readonly UserProperty[];
  topicAlias: number;
  subscriptionIds: readonly number[];
}

/** Encodes a PUBLISH packet; properties are written only for protocol version 5. */
export function encodePublish(fields: PublishFields): Buffer {
  const topicLength = Buffer.byteLength(fields.topic);
  const v5 = fields.protocolVersion === 5;
  const propertiesLength = v5 ? propertySectionLength(fields) : 0;
  const remaining =
    2 + topicLength + (fields.qos > 0 ? 2 : 0) +
    (v5 ? varintLength(propertiesLength) + propertiesLength : 0) +
    fields.payload.length;
  const packet = Buffer.allocUnsafe(1 + varintLength(remaining) + remaining);
  let offset = 0;
  packet[offset++] = 0x30 | (fields.dup ? 0x08 : 0) | (fields.qos << 1) | (fields.retain ? 1 : 0);
  offset = writeVarint(packet, offset, remaining);
  offset = packet.writeUInt16BE(topicLength, offset);
  offset += packet.write(fields.topic, offset, 'utf8');
  if (fields.qos > 0) offset = packet.writeUInt16BE(fields.packetId, offset);
  if (v5) {
    offset = writeVarint(packet, offset, propertiesLength);
    offset = writeProperties(packet, offset, fields);
  }
  fields.payload.copy(packet, offset);
  return packet;
}

function propertySectionLength(fields: PublishFields): number {
  let length = 0;
  if (fields.payloadFormatIndicator !== undefined) length += 2;
  if (fields.messageExpiryInterval !== undefined) length += 5;
  if (fields.contentType !== undefined) length += 3 + Buffer.byteLength(fields.contentType);
  if (fields.responseTopic !== undefined) length += 3 + Buffer.byteLength(fields.responseTopic);
  if (fields.correlationData !== undefined) length += 3 + fields.correlationData.length;
  if (fields.topicAlias !== 0) length += 3;
  for (const id of fields.subscriptionIds) length += 1 + varintLength(id);
  for (const [name, value] of fields.userProperties ?? []) {
    length += 5 + Buffer.byteLength(name) + Buffer.byteLength(value);
  }
  return length;
}

function writeProperties(packet: Buffer, start: number, fields: PublishFields): number {
  let offset = start;
  if (fields.payloadFormatIndicator !== undefined) {
    packet[offset++] = PAYLOAD_FORMAT_INDICATOR;
    packet[offset++] = fields.payloadFormatIndicator ? 1 : 0;
  }
  if (fields.messageExpiryInterval !== undefined) {
    packet[offset++] = MESSAGE_EXPIRY_INTERVAL;
    offset = packet.writeUInt32BE(fields.messageExpiryInterval, offset);
  }
  if (fields.contentType !== undefined) offset = writeStringProperty(packet, offset, CONTENT_TYPE, fields.contentType);
  if (fields.responseTopic !== undefined) offset = writeStringProperty(packet, offset, RESPONSE_TOPIC, fields.responseTopic);
  if (fields.correlationData !== undefined) {
    packet[offset++] = CORRELATION_DATA;
    offset = packet.writeUInt16BE(fields.correlationData.length, offset);
    offset += fields.correlationData.copy(packet, offset);
  }
  if (fields.topicAlias !== 0) {
    packet[offset++] = TOPIC_ALIAS;
    offset = packet.writeUInt16BE(fields.topicAlias, offset);
  }
  for (const id of fields.subscriptionIds) {
    packet[offset++] = SUBSCRIPTION_IDENTIFIER;
    offset = writeVarint(packet, offset, id);
  }
  for (const [name, value] of fields.userProperties ?? []) {
    packet[offset++] = USER_PROPERTY;
    offset = writeString(packet, offset, name);
    offset = writeString(packet, offset, value);
  }
  return offset;
}

function writeStringProperty(packet: Buffer, offset: number, id: number, text: string): number {
  packet[offset] = id;
  return writeString(packet, offset + 1, text);
}

function writeString(packet: Buffer, offset: number, text: string): number {
  const written = packet.write(text, offset + 2, 'utf8');
  packet.writeUInt16BE(written, offset);
  return offset + 2 + written;
}

export function varintLength(value: number): number {
  if (value < 128) return 1;
  if (value < 16_384) return 2;
  if (value < 2_097_152) return 3;
  return 4;
}

function writeVarint(buffer: Buffer, start: number, value: number): number {
  let offset = start;
  let rest = value;
  do {
    let byte = rest % 128;
    rest = Math.floor(rest / 128);
    if (rest > 0) byte |= 0x80;
    buffer[offset++] = byte;
  } while (rest > 0);
  return offset;
}

function readVarint(buffer: Buffer, start: number): { value: number; next: number } | null {
  let value = 0;
  let multiplier = 1;
  for (let i = 0; i < 4; i++) {
    const position = start + i;
    if (position >= buffer.length) return null;
    const byte = buffer[position];
    value += (byte & 0x7f) * multiplier;
    if ((byte & 0x80) === 0) return { value, next: position + 1 };
    multiplier *= 128;
  }
  return null;
}

function readString(buffer: Buffer, start: number, end: number): { text: string; next: number } | null {
  if (start + 2 > end) return null;
  const next = start + 2 + buffer.readUInt16BE(start);
  if (next > end) return null;
  return { text: buffer.toString('utf8', start + 2, next), next };
}

/** Converts mqtt-packet's user property object to pairs, in the order of its keys. */
export function userPropertyPairs(properties: Record<string, string | string[]> | undefined): UserProperty[] | undefined {
  if (properties === undefined) return undefined;
  const pairs: UserProperty[] = [];
  for (const [name, value] of Object.entries(properties)) {
    if (Array.isArray(value)) {
      for (const item of value) pairs.push([name, item]);
    } else {
      pairs.push([name, value]);
    }
  }
  return pairs;
}
