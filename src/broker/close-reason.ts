import { ReasonCode } from '../mqtt/reason-codes.js';

/** The reason a connection ends. Every disconnect goes through Connection.close with one of these. */
export interface CloseReason {
  /** v5 reason code for the DISCONNECT sent to the client, when one is sent. */
  readonly code: number;
  /** The reason as written to the log. */
  readonly message: string;
  /** Send a DISCONNECT before closing (v5 clients only, and only after CONNACK). */
  readonly sendDisconnect: boolean;
  /** Publish the connection's will: every close except a normal DISCONNECT from the client. */
  readonly publishWill: boolean;
}

export function protocolError(message: string, code: number = ReasonCode.ProtocolError): CloseReason {
  return { code, message, sendDisconnect: true, publishWill: true };
}

export function malformedPacket(message: string): CloseReason {
  return { code: ReasonCode.MalformedPacket, message, sendDisconnect: true, publishWill: true };
}

export const CLIENT_DISCONNECTED: CloseReason = {
  code: ReasonCode.Success,
  message: 'client sent DISCONNECT',
  sendDisconnect: false,
  publishWill: false,
};

export const CLIENT_DISCONNECTED_WITH_WILL: CloseReason = {
  code: ReasonCode.DisconnectWithWillMessage,
  message: 'client sent DISCONNECT with will message',
  sendDisconnect: false,
  publishWill: true,
};

export const SESSION_TAKEN_OVER: CloseReason = {
  code: ReasonCode.SessionTakenOver,
  message: 'session taken over by a new connection with the same client id',
  sendDisconnect: true,
  publishWill: true,
};

export const SERVER_SHUTTING_DOWN: CloseReason = {
  code: ReasonCode.ServerShuttingDown,
  message: 'server shutting down',
  sendDisconnect: true,
  // The client did not send DISCONNECT, so its will is due; a delayed will is stored for the next start.
  publishWill: true,
};

export const KEEPALIVE_TIMEOUT: CloseReason = {
  code: ReasonCode.KeepAliveTimeout,
  message: 'keep alive timeout',
  sendDisconnect: true,
  publishWill: true,
};
