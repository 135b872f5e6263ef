import type { ISubscribePacket, QoS } from 'mqtt-packet';
import type { Connection } from '../connection.js';
import { ReasonCode, SubackFailure } from '../../mqtt/reason-codes.js';
import { parseFilter } from '../../mqtt/topic.js';
import { malformedPacket, protocolError } from '../close-reason.js';
import type { Subscription } from '../subscription.js';

export function handleSubscribe(connection: Connection, packet: ISubscribePacket): void {
  const session = connection.session;
  if (session === null) return;
  const broker = connection.broker;
  const v5 = connection.protocolVersion === 5;
  const subscriptionId = packet.properties?.subscriptionIdentifier;
  if (Array.isArray(subscriptionId)) {
    connection.close(protocolError('SUBSCRIBE carries more than one Subscription Identifier'));
    return;
  }
  if (subscriptionId === 0) {
    connection.close(protocolError('Subscription Identifier of 0')); // MQTT 5.0 section 3.8.2.1.2
    return;
  }
  if (packet.subscriptions.length === 0) {
    connection.close(protocolError('SUBSCRIBE without topic filters')); // [MQTT-3.8.3-3]
    return;
  }

  if (session.store !== null && !broker.storeWritable) {
    // A stored session's subscriptions are durable work, refused while the store is full.
    const refused = v5 ? ReasonCode.QuotaExceeded : SubackFailure;
    connection.send({ cmd: 'suback', messageId: packet.messageId, granted: packet.subscriptions.map(() => refused) });
    return;
  }

  const codes: number[] = [];
  const accepted: Array<{ subscription: Subscription; existed: boolean }> = [];
  for (const request of packet.subscriptions) {
    const parsed = parseFilter(request.topic, broker.limits.maxTopicLevels);
    if (parsed === 'null-character') {
      connection.close(malformedPacket('topic filter contains U+0000')); // [MQTT-1.5.4-2]
      return;
    }
    if (typeof parsed === 'string') {
      codes.push(v5 ? ReasonCode.TopicFilterInvalid : SubackFailure);
      continue;
    }
    if (v5 && parsed.shareGroup !== null && request.nl === true) {
      connection.close(protocolError('No Local set on a shared subscription')); // [MQTT-3.8.3-4]
      return;
    }
    if (!broker.allowSubscribe(connection, request.topic)) {
      codes.push(v5 ? ReasonCode.NotAuthorized : SubackFailure);
      continue;
    }
    const qos = Math.min(request.qos, 2) as QoS;
    const subscription: Subscription = {
      clientId: session.clientId,
      rawFilter: request.topic,
      filter: parsed.filter,
      shareGroup: parsed.shareGroup,
      qos,
      noLocal: v5 && request.nl === true,
      retainAsPublished: v5 && request.rap === true,
      retainHandling: v5 ? request.rh ?? 0 : 0,
      subscriptionId: subscriptionId ?? 0,
    };
    const existed = broker.subscribe(session, subscription);
    accepted.push({ subscription, existed });
    codes.push(qos);
  }
  // SUBACK waits until the subscriptions of a stored session are committed.
  broker.whenDurable(() => {
    if (connection.isClosed()) return;
    // SUBACK carries the packet id of the SUBSCRIBE [MQTT-3.8.4-2] and one code per filter in order [MQTT-3.8.4-6].
    connection.send({ cmd: 'suback', messageId: packet.messageId, granted: codes });
    // Retained messages go out after SUBACK, as the new subscription's first messages [MQTT-3.8.4-4].
    for (const { subscription, existed } of accepted) {
      if (subscription.shareGroup !== null) continue; // shared subscriptions get no retained messages
      if (subscription.retainHandling === 2) continue;
      if (subscription.retainHandling === 1 && existed) continue;
      broker.sendRetained(session, subscription);
    }
  });
}
