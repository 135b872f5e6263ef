import { randomBytes } from 'node:crypto';
import type { IConnectPacket } from 'mqtt-packet';
import type { Connection } from '../connection.js';
import { ReasonCode } from '../../mqtt/reason-codes.js';
import { checkTopicName } from '../../mqtt/topic.js';
import { malformedPacket, protocolError } from '../close-reason.js';
import { forwardedProperties } from '../message.js';
import type { Will } from '../will.js';
import type { AuthOutcome } from '../../auth/access-control.js';

/** Session Expiry Interval meaning "never expires" (MQTT 5.0 section 3.1.2.11.2). */
export const SESSION_NEVER_EXPIRES = 0xffffffff;

/** MQTT 3.1 limits client ids to 23 characters (MQTT 3.1 section 3.1). */
const MQTT31_MAX_CLIENT_ID = 23;

type ConnectProperties = NonNullable<IConnectPacket['properties']>;

export function handleConnect(connection: Connection, packet: IConnectPacket): void {
  if (connection.state !== 'connecting') {
    connection.close(protocolError('second CONNECT on one connection')); // [MQTT-3.1.0-2]
    return;
  }
  const version = packet.protocolVersion ?? 4;
  connection.protocolVersion = version;
  const properties: ConnectProperties = packet.properties ?? {};

  if (properties.authenticationMethod !== undefined) {
    connection.refuseConnect(ReasonCode.BadAuthenticationMethod, `enhanced authentication method ${JSON.stringify(properties.authenticationMethod)} is not supported`);
    return;
  }
  if (version < 5 && packet.password !== undefined && packet.username === undefined) {
    // 3.1.1 forbids a password without a user name [MQTT-3.1.2-22].
    connection.close(protocolError('password given without user name'));
    return;
  }
  if (!applyClientLimits(connection, properties)) return;

  const clientId = chooseClientId(connection, packet, version);
  if (clientId === null) return;
  const assigned = clientId !== packet.clientId;

  const will = packet.will === undefined ? null : parseWill(connection, packet.will);
  if (will === undefined) return;

  const outcome = connection.broker.authenticate(connection, clientId, packet.username, packet.password);
  if (!(outcome instanceof Promise)) {
    completeConnect(connection, packet, clientId, assigned, will, outcome);
    return;
  }
  // The connection stays in state 'connecting' while the login is decided. Packets sent after
  // CONNECT wait: they are handled in order after CONNACK, or dropped with the connection when
  // the login fails, because a rejected CONNECT ends processing [MQTT-3.1.4-5].
  connection.hold();
  outcome
    .then((result) => {
      if (connection.state !== 'connecting') return; // closed meanwhile, e.g. by the CONNECT timeout
      completeConnect(connection, packet, clientId, assigned, will, result);
      connection.release();
    })
    .catch((error: unknown) => {
      connection.broker.logger.error('CONNECT handling failed after authentication', {
        conn: connection.id,
        client_id: clientId,
        error: error instanceof Error ? error.stack ?? error.message : String(error),
      });
      connection.close({ code: ReasonCode.ImplementationSpecificError, message: 'internal error while handling CONNECT', sendDisconnect: true, publishWill: false });
    });
}

/** Sends CONNACK for an authenticated client and attaches its session, or refuses the login. */
function completeConnect(connection: Connection, packet: IConnectPacket, clientId: string, assigned: boolean, will: Will | null, outcome: AuthOutcome): void {
  if (outcome.code !== ReasonCode.Success) {
    // The log gets the exact reason. The client gets a generic Reason String, which does not
    // tell an unknown user name from a wrong password.
    connection.refuseConnect(outcome.code, outcome.code === ReasonCode.BadUserNameOrPassword ? 'bad user name or password' : 'not authorized');
    return;
  }
  const version = connection.protocolVersion;
  const properties: ConnectProperties = packet.properties ?? {};
  const keepalive = packet.keepalive ?? 0;
  const maxKeepalive = connection.broker.limits.maxKeepalive;
  let serverKeepalive: number | undefined;
  connection.keepaliveSeconds = keepalive;
  if (version === 5 && (keepalive > maxKeepalive || (keepalive === 0 && maxKeepalive < 65535))) {
    // A v5 client must use the Server Keep Alive that CONNACK returns [MQTT-3.2.2-21].
    serverKeepalive = maxKeepalive;
    connection.keepaliveSeconds = maxKeepalive;
  }

  const cleanStart = packet.clean !== false;
  const requested = version === 5
    ? properties.sessionExpiryInterval ?? 0
    : cleanStart ? 0 : SESSION_NEVER_EXPIRES;
  const expiry = Math.min(requested, connection.broker.limits.maxSessionExpirySeconds);
  connection.requestedSessionExpiry = requested;
  connection.clientId = clientId;
  connection.username = outcome.username;
  if (will !== null && !connection.broker.access.mayPublishWill(connection, will.topic)) {
    // A will is a PUBLISH made later on the client's behalf, so it needs the same write access.
    connection.refuseConnect(ReasonCode.NotAuthorized, 'will topic not authorized');
    return;
  }
  connection.will = will;

  const owner = { username: connection.username, listener: connection.listener.name };
  let { session, present } = connection.broker.attachSession(clientId, cleanStart, expiry, will, owner);
  if (present && !connection.broker.access.isSameOwner(session, connection)) {
    // A session left by another user is not handed over, because its subscriptions and queued
    // messages were authorized for that user. The client starts with a new session instead.
    ({ session, present } = connection.broker.attachSession(clientId, true, expiry, will, owner));
  }
  connection.session = session;
  connection.broker.access.bindSession(session, connection);
  connection.markConnected();
  if (version === 5) {
    connection.send({
      cmd: 'connack',
      sessionPresent: present,
      reasonCode: ReasonCode.Success,
      properties: connackProperties(connection, assigned ? clientId : undefined, serverKeepalive, expiry !== requested ? expiry : undefined),
    });
  } else {
    connection.send({ cmd: 'connack', sessionPresent: present, returnCode: 0 });
  }
  connection.broker.clientConnected(connection, cleanStart, present);
  session.resume(connection);
}

/** Takes the v5 client's Receive Maximum, Maximum Packet Size and Topic Alias Maximum. */
function applyClientLimits(connection: Connection, properties: ConnectProperties): boolean {
  if (properties.receiveMaximum !== undefined) {
    if (properties.receiveMaximum === 0) {
      connection.close(protocolError('Receive Maximum of 0')); // a Protocol Error (MQTT 5.0 section 3.1.2.11.3)
      return false;
    }
    connection.clientReceiveMaximum = properties.receiveMaximum;
  }
  if (properties.maximumPacketSize !== undefined) {
    if (properties.maximumPacketSize === 0) {
      connection.close(protocolError('Maximum Packet Size of 0'));
      return false;
    }
    connection.clientMaximumPacketSize = properties.maximumPacketSize;
  }
  connection.clientTopicAliasMaximum = properties.topicAliasMaximum ?? 0;
  connection.requestProblemInformation = properties.requestProblemInformation !== false;
  return true;
}

/** Returns the client id to use, assigning one where the protocol allows, or null after refusing. */
function chooseClientId(connection: Connection, packet: IConnectPacket, version: number): string | null {
  const clientId = packet.clientId;
  if (clientId.includes('\u0000')) {
    connection.close(malformedPacket('client id contains U+0000')); // [MQTT-1.5.4-2]
    return null;
  }
  if (clientId.length > 0) {
    if (version === 3 && clientId.length > MQTT31_MAX_CLIENT_ID) {
      connection.refuseConnect(ReasonCode.ClientIdentifierNotValid, `MQTT 3.1 client id longer than ${MQTT31_MAX_CLIENT_ID} characters`);
      return null;
    }
    if (connection.broker.isInProcessClientId(clientId)) {
      // Taking over the session would stop the field adapter or a bridge until the next restart.
      connection.refuseConnect(ReasonCode.ClientIdentifierNotValid, `client id ${JSON.stringify(clientId)} is used by the field adapter or a bridge; choose another`);
      return null;
    }
    return clientId;
  }
  if (version === 3 || (version === 4 && packet.clean === false)) {
    // An empty client id needs Clean Session set in 3.1.1 [MQTT-3.1.3-8], and 3.1 forbids it.
    connection.refuseConnect(ReasonCode.ClientIdentifierNotValid, 'empty client id without clean session');
    return null;
  }
  // The server assigns a unique id [MQTT-3.1.3-6] and sends it to a v5 client [MQTT-3.2.2-16].
  return `outpost-${randomBytes(8).toString('hex')}`;
}

/** Validates the will; returns undefined after closing the connection when it is invalid. */
function parseWill(connection: Connection, will: NonNullable<IConnectPacket['will']>): Will | undefined {
  const problem = checkTopicName(will.topic, connection.broker.limits.maxTopicLevels);
  if (problem === 'null-character') {
    connection.close(malformedPacket('will topic contains U+0000')); // [MQTT-1.5.4-2]
    return undefined;
  }
  if (problem !== null) {
    if (connection.protocolVersion === 5) {
      connection.refuseConnect(ReasonCode.TopicNameInvalid, `invalid will topic (${problem})`);
    } else {
      connection.close(protocolError(`invalid will topic (${problem})`));
    }
    return undefined;
  }
  const properties = will.properties;
  return {
    topic: will.topic,
    payload: typeof will.payload === 'string' ? Buffer.from(will.payload) : will.payload,
    qos: will.qos ?? 0,
    retain: will.retain ?? false,
    properties: forwardedProperties(properties),
    messageExpiryInterval: properties?.messageExpiryInterval ?? 0,
    delaySeconds: properties?.willDelayInterval ?? 0,
  };
}

function connackProperties(
  connection: Connection,
  assignedClientId: string | undefined,
  serverKeepalive: number | undefined,
  sessionExpiry: number | undefined,
): NonNullable<import('mqtt-packet').IConnackPacket['properties']> {
  const limits = connection.broker.limits;
  return {
    receiveMaximum: limits.receiveMaximum,
    maximumPacketSize: connection.maxPacketSize,
    topicAliasMaximum: limits.topicAliasMaximum,
    retainAvailable: true,
    wildcardSubscriptionAvailable: true,
    subscriptionIdentifiersAvailable: true,
    sharedSubscriptionAvailable: true,
    ...(assignedClientId !== undefined ? { assignedClientIdentifier: assignedClientId } : {}),
    ...(serverKeepalive !== undefined ? { serverKeepAlive: serverKeepalive } : {}),
    ...(sessionExpiry !== undefined ? { sessionExpiryInterval: sessionExpiry } : {}),
  };
}
