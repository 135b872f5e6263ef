import type { Packet } from 'mqtt-packet';
import type { Connection } from '../connection.js';
import { malformedPacket, protocolError } from '../close-reason.js';
import { handleConnect } from './connect.js';
import { handlePublish } from './publish.js';
import { handlePuback, handlePubcomp, handlePubrec, handlePubrel } from './acknowledgements.js';
import { handleSubscribe } from './subscribe.js';
import { handleUnsubscribe } from './unsubscribe.js';
import { handleDisconnect } from './disconnect.js';
import { ReasonCode } from '../../mqtt/reason-codes.js';

/** Hands a parsed packet to the handler for its type. */
export function dispatchPacket(connection: Connection, packet: Packet): void {
  if (packet.cmd === 'connect') {
    handleConnect(connection, packet);
    return;
  }
  if (connection.state !== 'connected') return;
  if (needsPacketId(packet) && !isPacketId(packet.messageId)) {
    // A Packet Identifier is a non-zero 16-bit integer [MQTT-2.2.1-3].
    connection.close(malformedPacket(`${packet.cmd.toUpperCase()} without a valid packet identifier`));
    return;
  }
  switch (packet.cmd) {
    case 'publish':
      handlePublish(connection, packet);
      return;
    case 'puback':
      handlePuback(connection, packet);
      return;
    case 'pubrec':
      handlePubrec(connection, packet);
      return;
    case 'pubrel':
      handlePubrel(connection, packet);
      return;
    case 'pubcomp':
      handlePubcomp(connection, packet);
      return;
    case 'subscribe':
      handleSubscribe(connection, packet);
      return;
    case 'unsubscribe':
      handleUnsubscribe(connection, packet);
      return;
    case 'pingreq':
      connection.send({ cmd: 'pingresp' }); // [MQTT-3.12.4-1]
      return;
    case 'disconnect':
      handleDisconnect(connection, packet);
      return;
    case 'auth':
      // Enhanced authentication is not offered, so CONNECT never carried an Authentication
      // Method, and a client that named none must not send AUTH [MQTT-4.12.0-7].
      connection.close(protocolError('AUTH received but enhanced authentication is not supported'));
      return;
    default:
      connection.close(protocolError(`${packet.cmd.toUpperCase()} is not sent by clients`, ReasonCode.ProtocolError));
  }
}

/** Tells whether a packet of this type carries a Packet Identifier. */
function needsPacketId(packet: Packet): boolean {
  switch (packet.cmd) {
    case 'publish':
      return packet.qos > 0;
    case 'puback':
    case 'pubrec':
    case 'pubrel':
    case 'pubcomp':
    case 'subscribe':
    case 'unsubscribe':
      return true;
    default:
      return false;
  }
}

function isPacketId(value: number | undefined): boolean {
  return value !== undefined && Number.isInteger(value) && value >= 1 && value <= 0xffff;
}
