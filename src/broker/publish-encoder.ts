import { encodePublish } from '../mqtt/publish-codec.js';
import type { Delivery } from './session.js';
import { remainingExpirySeconds } from './message.js';

const DUP_FLAG = 0x08;

/**
 * Encodes PUBLISH packets. While one message fans out to many subscribers, subscribers that get
 * the same bytes share one encoding: the cache is keyed by protocol version, QoS and RETAIN, and a
 * QoS 1 or 2 copy differs only in its packet id and DUP flag, which are patched into a copy.
 */
export class PublishEncoder {
  private cachedFor: Delivery['message'] | null = null;
  private readonly cache = new Map<number, Buffer>();

  /** Ends the sharing for the current message; call after a message has been fanned out. */
  reset(): void {
    this.cachedFor = null;
    this.cache.clear();
  }

  encode(
    delivery: Delivery,
    protocolVersion: number,
    packetId: number,
    dup: boolean,
    topicAlias: number,
    sendTopic: boolean,
  ): Buffer {
    const message = delivery.message;
    const shareable =
      delivery.subscriptionIds.length === 0 && topicAlias === 0 && message.expiresAt === 0;
    if (!shareable) {
      return encodeOne(delivery, protocolVersion, packetId, dup, topicAlias, sendTopic);
    }
    if (this.cachedFor !== message) {
      this.cache.clear();
      this.cachedFor = message;
    }
    const key = protocolVersion * 8 + delivery.qos * 2 + (delivery.retain ? 1 : 0);
    let template = this.cache.get(key);
    if (template === undefined) {
      template = encodeOne(delivery, protocolVersion, delivery.qos > 0 ? 1 : 0, false, 0, true);
      this.cache.set(key, template);
    }
    if (delivery.qos === 0) return template;
    const copy = Buffer.allocUnsafe(template.length);
    template.copy(copy);
    if (dup) copy[0] |= DUP_FLAG;
    copy.writeUInt16BE(packetId, packetIdOffset(copy));
    return copy;
  }
}

function packetIdOffset(packet: Buffer): number {
  let headerLength = 2;
  while ((packet[headerLength - 1] & 0x80) !== 0) headerLength++;
  return headerLength + 2 + packet.readUInt16BE(headerLength);
}

function encodeOne(
  delivery: Delivery,
  protocolVersion: number,
  packetId: number,
  dup: boolean,
  topicAlias: number,
  sendTopic: boolean,
): Buffer {
  const message = delivery.message;
  const properties = message.properties;
  return encodePublish({
    protocolVersion,
    topic: sendTopic ? message.topic : '',
    payload: message.payload,
    qos: delivery.qos,
    retain: delivery.retain,
    dup,
    packetId,
    payloadFormatIndicator: properties?.payloadFormatIndicator,
    // The interval sent on is the time the message has left [MQTT-3.3.2-6].
    messageExpiryInterval: message.expiresAt === 0 ? undefined : remainingExpirySeconds(message, Date.now()),
    contentType: properties?.contentType,
    responseTopic: properties?.responseTopic,
    correlationData: properties?.correlationData,
    userProperties: properties?.userProperties,
    topicAlias,
    subscriptionIds: delivery.subscriptionIds,
  });
}
