import type { IPubackPacket, IPubcompPacket, IPubrecPacket, IPubrelPacket } from 'mqtt-packet';
import type { Connection } from '../connection.js';
import { ReasonCode } from '../../mqtt/reason-codes.js';

/** PUBACK from the client ends an outgoing QoS 1 delivery; an unknown id is ignored. */
export function handlePuback(connection: Connection, packet: IPubackPacket): void {
  connection.session?.acknowledge(packet.messageId ?? 0);
}

/** Replies PUBREL to PUBREC from the client, with 0x92 to a v5 client when the id is unknown. */
export function handlePubrec(connection: Connection, packet: IPubrecPacket): void {
  const packetId = packet.messageId ?? 0;
  const reasonCode = packet.reasonCode ?? ReasonCode.Success;
  const known = connection.session?.received(packetId, reasonCode) ?? false;
  if (reasonCode >= 0x80) return; // the exchange ends without PUBREL
  // PUBREL waits until the released state is stored, so a restart resends PUBREL, not PUBLISH.
  connection.broker.whenDurable(() => {
    if (connection.isClosed()) return;
    if (known || connection.protocolVersion < 5) {
      connection.send({ cmd: 'pubrel', messageId: packetId });
    } else {
      connection.send({ cmd: 'pubrel', messageId: packetId, reasonCode: ReasonCode.PacketIdentifierNotFound });
    }
  });
}

/**
 * Releases an incoming QoS 2 message on PUBREL and replies PUBCOMP. An id that is not awaiting
 * release (a resend after PUBCOMP was lost) also gets PUBCOMP, with 0x92 for a v5 client.
 */
export function handlePubrel(connection: Connection, packet: IPubrelPacket): void {
  const packetId = packet.messageId ?? 0;
  const known = connection.session?.releaseIncoming(packetId) ?? false;
  // PUBCOMP waits until the packet id is no longer stored, so the client may reuse it at once.
  connection.broker.whenDurable(() => {
    if (connection.isClosed()) return;
    if (known || connection.protocolVersion < 5) {
      connection.send({ cmd: 'pubcomp', messageId: packetId });
    } else {
      connection.send({ cmd: 'pubcomp', messageId: packetId, reasonCode: ReasonCode.PacketIdentifierNotFound });
    }
  });
}

/** PUBCOMP from the client ends an outgoing QoS 2 delivery. */
export function handlePubcomp(connection: Connection, packet: IPubcompPacket): void {
  connection.session?.complete(packet.messageId ?? 0);
}
