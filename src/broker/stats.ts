/** Counters behind the `$SYS/broker/...` topics; plain fields so that counting costs one add. */
export class BrokerStats {
  readonly startedAt = Date.now();
  bytesReceived = 0;
  bytesSent = 0;
  /** Control packets of every type. */
  messagesReceived = 0;
  messagesSent = 0;
  publishReceived = 0;
  publishSent = 0;
  publishDropped = 0;
  clientsConnected = 0;
  clientsMaximum = 0;
  clientsExpired = 0;
}
