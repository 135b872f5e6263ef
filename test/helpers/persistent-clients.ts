// MQTT.js clients for the persistence tests. The subscriber records every message from the
// moment its socket opens, because a resumed session sends its queue right after CONNACK. The
// publisher sends a list of messages pipelined and returns the reason code of each acknowledgement.

import mqtt, { ErrorWithReasonCode } from 'mqtt';
import type { IClientOptions, IClientPublishOptions, IConnackPacket, IPublishPacket, MqttClient, Packet } from 'mqtt';

import { withTimeout } from './wait.js';

export interface ReceivedMessage {
  topic: string;
  payload: string;
  qos: number;
  retain: boolean;
  properties: IPublishPacket['properties'];
}

export interface CollectingClient {
  client: MqttClient;
  connack: IConnackPacket;
  /** Messages as MQTT.js hands them over: QoS 2 messages after PUBREL, so QoS levels interleave differently than on the wire. */
  received: ReceivedMessage[];
  /** Payloads of the PUBLISH packets in the order they arrived on the wire, duplicates included. */
  wire: string[];
  /** Reason code of the last PUBACK or PUBREC for each packet id (0 when the packet has none). */
  acknowledgements: Map<number, number>;
}

/**
 * Connects MQTT.js without automatic reconnects and records every message in `received`. The
 * message handler is attached before the connection opens, so messages sent right after CONNACK
 * are recorded too.
 */
export async function connectCollecting(url: string, options: IClientOptions, timeoutMs = 5000): Promise<CollectingClient> {
  const received: ReceivedMessage[] = [];
  const wire: string[] = [];
  const acknowledgements = new Map<number, number>();
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: timeoutMs, ...options });
  client.on('packetreceive', (packet: Packet) => {
    if (packet.cmd === 'publish') wire.push(String(packet.payload));
    if ((packet.cmd === 'puback' || packet.cmd === 'pubrec') && packet.messageId !== undefined) {
      acknowledgements.set(packet.messageId, packet.reasonCode ?? 0);
    }
  });
  client.on('message', (topic: string, payload: Buffer, packet: IPublishPacket) => {
    received.push({ topic, payload: payload.toString(), qos: packet.qos, retain: packet.retain, properties: packet.properties });
  });
  try {
    const connack = await withTimeout(
      new Promise<IConnackPacket>((resolve, reject) => {
        client.once('connect', (packet: IConnackPacket) => resolve(packet));
        client.once('error', reject);
        client.once('close', () => reject(new Error(`the connection to ${url} closed before CONNACK`)));
      }),
      timeoutMs,
      `CONNACK from ${url}`,
    );
    client.on('error', () => undefined);
    return { client, connack, received, wire, acknowledgements };
  } catch (error) {
    client.end(true);
    throw error;
  }
}

/** Ends an MQTT.js client; `force` closes the socket without DISCONNECT. */
export function endClient(client: MqttClient, force = false): Promise<void> {
  return new Promise((resolve) => {
    client.end(force, {}, () => resolve());
  });
}

export interface OutgoingMessage {
  topic: string;
  payload: string | Buffer;
  options: IClientPublishOptions;
}

/**
 * Publishes every message without waiting for the previous acknowledgement. Resolves with the
 * reason code of each acknowledgement in the order of `messages`: 0 for success and for every
 * 3.1.1 acknowledgement, 0x10 and above as the broker sent them, and -1 for QoS 0.
 */
export async function publishAll(publisher: CollectingClient, messages: readonly OutgoingMessage[], timeoutMs = 10_000): Promise<number[]> {
  const sends = messages.map(async (message) => {
    try {
      const sent = await publisher.client.publishAsync(message.topic, message.payload, message.options);
      // MQTT.js resolves with the PUBLISH (QoS 1) or PUBREL (QoS 2) it sent, without the reason
      // code, so the code comes from the recorded PUBACK or PUBREC of that packet id.
      if (message.options.qos === 0 || sent === undefined || !('messageId' in sent) || sent.messageId === undefined) return -1;
      return publisher.acknowledgements.get(sent.messageId) ?? 0;
    } catch (error) {
      if (error instanceof ErrorWithReasonCode) return error.code;
      throw error;
    }
  });
  return withTimeout(Promise.all(sends), timeoutMs, `acknowledgements of ${messages.length} messages`);
}
