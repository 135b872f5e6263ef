import type { IDisconnectPacket } from 'mqtt-packet';
import type { Connection } from '../connection.js';
import { ReasonCode } from '../../mqtt/reason-codes.js';
import { CLIENT_DISCONNECTED, CLIENT_DISCONNECTED_WITH_WILL, protocolError } from '../close-reason.js';

export function handleDisconnect(connection: Connection, packet: IDisconnectPacket): void {
  const expiry = packet.properties?.sessionExpiryInterval;
  const session = connection.session;
  if (expiry !== undefined && session !== null) {
    if (connection.requestedSessionExpiry === 0 && expiry !== 0) {
      // A session that was to end with the connection cannot be extended here [MQTT-3.14.2-2].
      connection.close(protocolError('DISCONNECT sets a Session Expiry Interval after CONNECT set 0'));
      return;
    }
    session.expiryInterval = Math.min(expiry, connection.broker.limits.maxSessionExpirySeconds);
  }
  if (packet.reasonCode === ReasonCode.DisconnectWithWillMessage) {
    connection.close(CLIENT_DISCONNECTED_WITH_WILL);
    return;
  }
  // A normal DISCONNECT discards the will [MQTT-3.1.2-10] (3.1.1: [MQTT-3.1.2-10] as well).
  connection.will = null;
  connection.close(CLIENT_DISCONNECTED);
}
