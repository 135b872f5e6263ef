// The load generator of the benchmark: MQTT 3.1.1 clients on raw TCP sockets. Packets to send
// are encoded once with mqtt-packet and copied (QoS 1 gets its packet id patched in); received
// packets are only framed and counted, never decoded, so the generator stays cheap per message.

import { connect } from 'node:net';
import { performance } from 'node:perf_hooks';
import mqttPacket from 'mqtt-packet';

const PUBLISH = 3;
const PUBACK = 4;
const CONNACK = 2;
const SUBACK = 9;

/** QoS 0 packets per socket write. */
const QOS0_BATCH = 64;

/** Unacknowledged QoS 1 PUBLISH packets a publisher keeps in flight. */
export const QOS1_WINDOW = 100;

/** Shared counters of one scenario run. */
export class Tally {
  constructor() {
    this.published = 0;
    this.delivered = 0;
    this.lastDeliveryAt = 0;
  }
}

/** One MQTT 3.1.1 client on a raw socket. */
export class BenchClient {
  constructor(socket, tally) {
    this.socket = socket;
    this.tally = tally;
    this.pending = null;
    this.waiters = new Map();
    this.onPuback = null;
    this.received = 0;
    socket.on('data', (chunk) => this.onData(chunk));
    socket.on('error', () => undefined);
  }

  /** Connects, sends CONNECT and resolves after a successful CONNACK. */
  static async open(port, clientId, tally, { keepalive = 0, clean = true } = {}) {
    const socket = connect({ host: '127.0.0.1', port, noDelay: true });
    const client = new BenchClient(socket, tally);
    const connack = client.waitFor(CONNACK);
    socket.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId, clean, keepalive }));
    const frame = await connack;
    if (frame[3] !== 0) throw new Error(`CONNACK return code ${frame[3]} for client ${clientId}`);
    return client;
  }

  async subscribe(filter, qos) {
    const suback = this.waitFor(SUBACK);
    this.socket.write(mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: filter, qos }] }));
    const frame = await suback;
    if (frame[frame.length - 1] === 0x80) throw new Error(`subscription to ${filter} refused`);
  }

  waitFor(type) {
    return new Promise((resolve, reject) => {
      const onClose = () => reject(new Error(`connection closed while waiting for packet type ${type}`));
      this.socket.once('close', onClose);
      this.waiters.set(type, (frame) => {
        this.socket.off('close', onClose);
        resolve(frame);
      });
    });
  }

  /** Frames the stream; counts PUBLISH, answers QoS 1 with PUBACK, hands PUBACK to the publisher. */
  onData(chunk) {
    let buffer = this.pending === null ? chunk : Buffer.concat([this.pending, chunk]);
    let offset = 0;
    let acks = null;
    let ackCount = 0;
    let published = 0;
    let pubacks = 0;
    while (offset + 2 <= buffer.length) {
      const first = buffer[offset];
      let length = 0;
      let multiplier = 1;
      let index = offset + 1;
      let complete = false;
      while (index < buffer.length) {
        const byte = buffer[index++];
        length += (byte & 0x7f) * multiplier;
        if ((byte & 0x80) === 0) {
          complete = true;
          break;
        }
        multiplier *= 128;
      }
      if (!complete || index + length > buffer.length) break;
      const type = first >> 4;
      if (type === PUBLISH) {
        published++;
        if ((first & 0x06) === 0x02) {
          const topicLength = buffer.readUInt16BE(index);
          const idOffset = index + 2 + topicLength;
          if (acks === null) acks = Buffer.allocUnsafe(4 * 256);
          if (ackCount === 256) {
            this.socket.write(acks);
            acks = Buffer.allocUnsafe(4 * 256);
            ackCount = 0;
          }
          const at = ackCount * 4;
          acks[at] = 0x40;
          acks[at + 1] = 2;
          acks[at + 2] = buffer[idOffset];
          acks[at + 3] = buffer[idOffset + 1];
          ackCount++;
        }
      } else if (type === PUBACK) {
        pubacks++;
      } else {
        const waiter = this.waiters.get(type);
        if (waiter !== undefined) {
          this.waiters.delete(type);
          waiter(buffer.subarray(offset, index + length));
        }
      }
      offset = index + length;
    }
    this.pending = offset === buffer.length ? null : Buffer.from(buffer.subarray(offset));
    if (ackCount > 0) this.socket.write(acks.subarray(0, ackCount * 4));
    if (published > 0) {
      this.received += published;
      this.tally.delivered += published;
      this.tally.lastDeliveryAt = performance.now();
    }
    if (pubacks > 0 && this.onPuback !== null) this.onPuback(pubacks);
  }

  close() {
    this.socket.destroy();
  }
}

/** Encodes one PUBLISH and returns it with the offset of its packet id (QoS 1) or -1. */
function encodePublish(topic, payload, qos) {
  const bytes = mqttPacket.generate({ cmd: 'publish', topic, payload, qos, messageId: qos > 0 ? 1 : undefined, retain: false, dup: false });
  if (qos === 0) return { bytes, idOffset: -1 };
  const topicBytes = Buffer.byteLength(topic);
  // The packet id follows the fixed header (1 byte + remaining length) and the topic.
  let headerLength = 2;
  while (bytes[headerLength - 1] & 0x80) headerLength++;
  return { bytes, idOffset: headerLength + 2 + topicBytes };
}

/**
 * Publishes as fast as the socket drains until `isRunning()` turns false. QoS 0 writes batches;
 * QoS 1 keeps `QOS1_WINDOW` messages unacknowledged. Resolves with the number published.
 */
export function runPublisher(client, topic, payload, qos, isRunning) {
  const { bytes, idOffset } = encodePublish(topic, payload, qos);
  return qos === 0 ? publishQos0(client, bytes, isRunning) : publishQos1(client, bytes, idOffset, isRunning);
}

function publishQos0(client, packet, isRunning) {
  const batch = Buffer.concat(Array.from({ length: QOS0_BATCH }, () => packet));
  const socket = client.socket;
  return new Promise((resolve) => {
    let published = 0;
    // A broker that closes the connection (or crashes) never emits 'drain'.
    socket.once('close', () => resolve(published));
    const pump = () => {
      if (socket.destroyed) return;
      while (isRunning()) {
        published += QOS0_BATCH;
        client.tally.published += QOS0_BATCH;
        if (!socket.write(batch)) {
          socket.once('drain', pump);
          return;
        }
        // Let incoming data (the subscribers) run between bursts.
        if (published % (QOS0_BATCH * 16) === 0) {
          setImmediate(pump);
          return;
        }
      }
      resolve(published);
    };
    pump();
  });
}

function publishQos1(client, template, idOffset, isRunning) {
  return new Promise((resolve) => {
    let published = 0;
    let inflight = 0;
    let nextId = 1;
    let stopped = false;
    const send = (count) => {
      const out = Buffer.allocUnsafe(template.length * count);
      for (let i = 0; i < count; i++) {
        const at = i * template.length;
        template.copy(out, at);
        out[at + idOffset] = nextId >> 8;
        out[at + idOffset + 1] = nextId & 0xff;
        nextId = nextId === 65535 ? 1 : nextId + 1;
      }
      inflight += count;
      published += count;
      client.tally.published += count;
      client.socket.write(out);
    };
    let check = null;
    const finish = () => {
      if (stopped) return;
      stopped = true;
      clearInterval(check);
      client.onPuback = null;
      resolve(published);
    };
    client.onPuback = (count) => {
      inflight -= count;
      if (isRunning()) {
        send(QOS1_WINDOW - inflight);
      } else if (inflight <= 0) {
        finish();
      }
    };
    // A broker that stops acknowledging must not hang the run.
    check = setInterval(() => {
      if (!isRunning()) {
        clearInterval(check);
        setTimeout(finish, 5000).unref();
      }
    }, 50);
    send(QOS1_WINDOW);
  });
}

/** Opens `count` connections, `concurrency` at a time; resolves with the clients. */
export async function openMany(port, prefix, count, tally, concurrency, options) {
  const clients = [];
  for (let start = 0; start < count; start += concurrency) {
    const batch = [];
    for (let i = start; i < Math.min(count, start + concurrency); i++) batch.push(BenchClient.open(port, `${prefix}-${i}`, tally, options));
    clients.push(...(await Promise.all(batch)));
  }
  return clients;
}
