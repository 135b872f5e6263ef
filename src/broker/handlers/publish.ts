import type { IPublishPacket } from 'mqtt-packet';
import type { Connection } from '../connection.js';
import { ReasonCode } from '../../mqtt/reason-codes.js';
import { checkTopicName } from '../../mqtt/topic.js';
import { malformedPacket, protocolError } from '../close-reason.js';
import { forwardedProperties, type Message } from '../message.js';
import { scanPublishProperties, type UserProperty } from '../../mqtt/publish-codec.js';

type PublishProperties = NonNullable<IPublishPacket['properties']>;

/** PUBLISH properties a client may send (MQTT 5.0 section 3.3.2.3); Subscription Identifier is checked apart. */
const CLIENT_PUBLISH_PROPERTIES = new Set([
  'payloadFormatIndicator',
  'messageExpiryInterval',
  'topicAlias',
  'responseTopic',
  'correlationData',
  'userProperties',
  'contentType',
  'subscriptionIdentifier',
]);

export function handlePublish(connection: Connection, packet: IPublishPacket): void {
  const broker = connection.broker;
  const properties: PublishProperties = packet.properties ?? {};
  let userProperties: readonly UserProperty[] | undefined;
  if (connection.protocolVersion === 5) {
    const scan = scanPublishProperties(connection.currentFrame, packet.qos);
    if (scan === null) {
      connection.close(malformedPacket('invalid PUBLISH property section'));
      return;
    }
    if (scan.repeatedPropertyId !== 0) {
      connection.close(protocolError(`PUBLISH property 0x${scan.repeatedPropertyId.toString(16)} appears more than once`));
      return;
    }
    if (!checkProperties(connection, properties)) return;
    userProperties = scan.userProperties;
  }

  const topic = resolveTopic(connection, packet.topic, properties.topicAlias);
  if (topic === null) return;

  const problem = checkTopicName(topic, broker.limits.maxTopicLevels);
  if (problem === 'too-many-levels' && connection.protocolVersion === 5 && packet.qos > 0) {
    acknowledge(connection, packet, ReasonCode.TopicNameInvalid);
    return;
  }
  if (problem === 'null-character') {
    // U+0000 in a UTF-8 string makes the packet malformed [MQTT-1.5.4-2].
    connection.close(malformedPacket('topic name contains U+0000'));
    return;
  }
  if (problem !== null) {
    // A topic name must not contain a wildcard [MQTT-3.3.2-2].
    connection.close(protocolError(`invalid topic name (${problem})`, ReasonCode.TopicNameInvalid));
    return;
  }

  const session = connection.session;
  if (session === null) return;
  const packetId = packet.messageId ?? 0;
  if (packet.qos === 2 && session.hasIncoming(packetId)) {
    // A resent QoS 2 PUBLISH whose PUBREL has not arrived is not delivered again (MQTT 5.0 section 4.3.3).
    connection.send({ cmd: 'pubrec', messageId: packetId });
    return;
  }
  if (packet.qos === 2 && session.incomingCount >= broker.limits.receiveMaximum) {
    // More unacknowledged QoS 2 messages than the Receive Maximum sent in CONNACK [MQTT-3.3.4-9].
    connection.close(protocolError('receive maximum exceeded', ReasonCode.ReceiveMaximumExceeded));
    return;
  }

  const stats = broker.stats;
  stats.publishReceived++;
  stats.publishReceivedByQos[packet.qos]++;
  stats.publishBytesReceivedByQos[packet.qos] += packet.payload.length;
  if (!broker.allowPublish(connection, topic)) {
    acknowledge(connection, packet, ReasonCode.NotAuthorized);
    return;
  }
  if (packet.qos > 0 && !broker.storeWritable) {
    refuseDurable(connection, packet);
    return;
  }

  const expiry = properties.messageExpiryInterval;
  const message: Message = {
    topic,
    payload: typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload,
    qos: packet.qos,
    retain: packet.retain,
    properties: connection.protocolVersion === 5 ? forwardedProperties(properties, userProperties) : null,
    expiresAt: expiry === undefined ? 0 : Date.now() + expiry * 1000,
    origin: connection.clientId,
  };
  const matched = broker.route(message);
  if (packet.qos === 0) return;
  if (broker.congestedTargets.length > 0) connection.waitForQueues(broker.congestedTargets);
  if (packet.qos === 2) session.addIncoming(packetId);
  let reasonCode: number = matched > 0 ? ReasonCode.Success : ReasonCode.NoMatchingSubscribers;
  // A bridge outbox that is full and set to reject new messages rejected this one.
  if (broker.routeRejected) reasonCode = ReasonCode.QuotaExceeded;
  // Acknowledged means stored: PUBACK and PUBREC wait for the commit of everything this
  // message wrote (retained, queued and in-flight copies, the QoS 2 packet id).
  broker.whenDurable((ok) => {
    if (connection.isClosed()) return;
    if (ok) {
      acknowledge(connection, packet, reasonCode);
    } else {
      refuseDurable(connection, packet);
    }
  });
}

/**
 * Refuses a QoS 1 or 2 message that cannot be stored: a v5 client gets Quota Exceeded, a 3.1.1
 * client, which has no negative acknowledgement, is disconnected and sends it again later.
 */
function refuseDurable(connection: Connection, packet: IPublishPacket): void {
  if (connection.protocolVersion === 5) {
    acknowledge(connection, packet, ReasonCode.QuotaExceeded);
    return;
  }
  connection.close({
    code: ReasonCode.QuotaExceeded,
    message: 'message not stored: state database full',
    sendDisconnect: false,
    publishWill: true,
  });
}

/** Sends PUBACK or PUBREC for a QoS 1 or 2 PUBLISH; v3 clients get no reason code. */
function acknowledge(connection: Connection, packet: IPublishPacket, reasonCode: number): void {
  if (packet.qos === 0) return;
  const cmd = packet.qos === 1 ? 'puback' : 'pubrec';
  if (connection.protocolVersion === 5 && reasonCode !== ReasonCode.Success) {
    connection.send({ cmd, messageId: packet.messageId, reasonCode });
  } else {
    connection.send({ cmd, messageId: packet.messageId });
  }
}

function checkProperties(connection: Connection, properties: PublishProperties): boolean {
  for (const key of Object.keys(properties)) {
    if (!CLIENT_PUBLISH_PROPERTIES.has(key)) {
      connection.close(malformedPacket(`property ${key} is not allowed in PUBLISH`));
      return false;
    }
  }
  if (properties.subscriptionIdentifier !== undefined) {
    connection.close(protocolError('PUBLISH from a client carries a Subscription Identifier')); // [MQTT-3.3.4-6]
    return false;
  }
  if (properties.responseTopic !== undefined && checkTopicName(properties.responseTopic, Number.MAX_SAFE_INTEGER) !== null) {
    connection.close(protocolError('Response Topic is not a valid topic name')); // [MQTT-3.3.2-14]
    return false;
  }
  return true;
}

/** Applies an incoming Topic Alias; returns the topic name, or null after closing the connection. */
function resolveTopic(connection: Connection, topic: string, alias: number | undefined): string | null {
  if (alias === undefined) {
    if (topic.length === 0) {
      connection.close(protocolError('empty topic name without a topic alias', connection.protocolVersion === 5 ? ReasonCode.ProtocolError : ReasonCode.TopicNameInvalid));
      return null;
    }
    return topic;
  }
  if (alias === 0 || alias > connection.broker.limits.topicAliasMaximum) {
    // [MQTT-3.3.2-8] [MQTT-3.3.2-9]: an alias of 0 or above the announced maximum.
    connection.close(protocolError(`topic alias ${alias} outside 1..${connection.broker.limits.topicAliasMaximum}`, ReasonCode.TopicAliasInvalid));
    return null;
  }
  if (topic.length > 0) {
    connection.incomingAliases ??= new Map();
    connection.incomingAliases.set(alias, topic);
    return topic;
  }
  const known = connection.incomingAliases?.get(alias);
  if (known === undefined) {
    connection.close(protocolError(`topic alias ${alias} used before it was set`));
    return null;
  }
  return known;
}
