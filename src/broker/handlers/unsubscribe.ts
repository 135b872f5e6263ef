import type { IUnsubscribePacket } from 'mqtt-packet';
import type { Connection } from '../connection.js';
import { ReasonCode } from '../../mqtt/reason-codes.js';
import { parseFilter } from '../../mqtt/topic.js';
import { malformedPacket } from '../close-reason.js';

export function handleUnsubscribe(connection: Connection, packet: IUnsubscribePacket): void {
  const session = connection.session;
  if (session === null) return;
  const codes: number[] = [];
  for (const rawFilter of packet.unsubscriptions) {
    const parsed = parseFilter(rawFilter, connection.broker.limits.maxTopicLevels);
    if (parsed === 'null-character') {
      connection.close(malformedPacket('topic filter contains U+0000')); // [MQTT-1.5.4-2]
      return;
    }
    if (typeof parsed === 'string') {
      codes.push(ReasonCode.TopicFilterInvalid);
      continue;
    }
    const removed = connection.broker.unsubscribe(session, rawFilter);
    codes.push(removed ? ReasonCode.Success : ReasonCode.NoSubscriptionExisted);
  }
  // UNSUBACK waits until a stored session's removals are committed. It carries the packet id
  // of the UNSUBSCRIBE [MQTT-3.10.4-4]; only v5 has reason codes.
  connection.broker.whenDurable(() => {
    if (connection.isClosed()) return;
    const granted = connection.protocolVersion === 5 ? codes : [];
    connection.send({ cmd: 'unsuback', messageId: packet.messageId, granted });
  });
}
