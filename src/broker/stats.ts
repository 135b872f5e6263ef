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
  /** PUBLISH packets from network clients, indexed by QoS (0, 1, 2). */
  readonly publishReceivedByQos: number[] = [0, 0, 0];
  /** Payload bytes of those PUBLISH packets, indexed by QoS. */
  readonly publishBytesReceivedByQos: number[] = [0, 0, 0];
  /** PUBLISH packets written to network clients, indexed by the QoS they were sent with. */
  readonly publishSentByQos: number[] = [0, 0, 0];
  /** Payload bytes of those PUBLISH packets, indexed by QoS. */
  readonly publishBytesSentByQos: number[] = [0, 0, 0];
  clientsConnected = 0;
  clientsMaximum = 0;
  clientsExpired = 0;
}
