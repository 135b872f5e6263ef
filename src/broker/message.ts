import type { IPublishPacket, QoS } from 'mqtt-packet';
import { userPropertyPairs, type UserProperty } from '../mqtt/publish-codec.js';

/** The v5 PUBLISH properties that travel with a message from its publisher to its subscribers. */
export interface ForwardedProperties {
  payloadFormatIndicator?: boolean;
  contentType?: string;
  responseTopic?: string;
  correlationData?: Buffer;
  /** User properties in the order the publisher sent them. */
  userProperties?: readonly UserProperty[];
}

/**
 * An application message as routed. One instance is shared by every subscriber queue it is
 * delivered to, so it is never changed after routing.
 */
export interface Message {
  readonly topic: string;
  readonly payload: Buffer;
  readonly qos: QoS;
  readonly retain: boolean;
  readonly properties: ForwardedProperties | null;
  /** Absolute expiry time in milliseconds since the epoch, or 0 when the message never expires. */
  readonly expiresAt: number;
  /** Client id of the publisher, for the No Local subscription option. */
  readonly origin: string;
}

export function isExpired(message: Message, now: number): boolean {
  return message.expiresAt !== 0 && message.expiresAt <= now;
}

/** Remaining lifetime in whole seconds, rounded up, for the Message Expiry Interval sent on. */
export function remainingExpirySeconds(message: Message, now: number): number {
  return Math.max(1, Math.ceil((message.expiresAt - now) / 1000));
}

/**
 * Picks the properties that are forwarded unchanged to subscribers [MQTT-3.3.2-17] [MQTT-3.3.2-18].
 * `orderedUserProperties`, read from the packet bytes, replaces mqtt-packet's grouping by name.
 */
export function forwardedProperties(
  properties: IPublishPacket['properties'],
  orderedUserProperties?: readonly UserProperty[],
): ForwardedProperties | null {
  if (properties === undefined) return null;
  const out: ForwardedProperties = {};
  let any = false;
  if (properties.payloadFormatIndicator !== undefined) {
    out.payloadFormatIndicator = properties.payloadFormatIndicator;
    any = true;
  }
  if (properties.contentType !== undefined) {
    out.contentType = properties.contentType;
    any = true;
  }
  if (properties.responseTopic !== undefined) {
    out.responseTopic = properties.responseTopic;
    any = true;
  }
  if (properties.correlationData !== undefined) {
    out.correlationData = properties.correlationData;
    any = true;
  }
  const userProperties = orderedUserProperties ?? userPropertyPairs(properties.userProperties);
  if (userProperties !== undefined && userProperties.length > 0) {
    out.userProperties = userProperties;
    any = true;
  }
  return any ? out : null;
}

export function messageSize(message: Message): number {
  return message.payload.length + message.topic.length;
}
