// `kill -9` under load: every QoS 1 message whose PUBACK reached the publisher before the broker
// was killed must reach the persistent subscriber after the restart, because PUBACK is sent only
// after the SQLite transaction holding the message has committed.

import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import mqttPacket from 'mqtt-packet';
import type { Packet } from 'mqtt-packet';
import { afterEach, beforeEach, expect, it } from 'vitest';

import { OutpostProcess, killRunningOutposts, writeOutpostConfig } from './helpers/outpost-process.js';
import { connectCollecting, endClient } from './helpers/persistent-clients.js';
import { waitFor, withTimeout } from './helpers/wait.js';

/** Upper bound of messages sent, so the test ends whatever the speed of the machine. */
const MAX_MESSAGES = 20_000;
/** PUBLISH packets sent ahead of their PUBACK. */
const WINDOW = 500;
/** The broker is killed this long after the first PUBLISH, or earlier once KILL_AFTER_ACKS arrived. */
const KILL_AFTER_MS = 1500;
const KILL_AFTER_ACKS = 12_000;

let directory = '';
let configPath = '';

beforeEach(() => {
  directory = mkdtempSync(join(tmpdir(), 'outpost-kill-'));
  configPath = writeOutpostConfig(join(directory, 'outpost.yaml'), {
    dataDir: join(directory, 'data'),
    // Room for every message in the offline queue, so no message is dropped for a queue limit.
    limits: { max_queued_messages: 100_000, max_queued_bytes: 100_000_000, max_inflight_messages: 200 },
  });
});

afterEach(async () => {
  await killRunningOutposts();
  rmSync(directory, { recursive: true, force: true });
});

/**
 * A pipelined MQTT 3.1.1 QoS 1 publisher on a plain socket: it keeps WINDOW messages awaiting
 * PUBACK and records the index of every message whose PUBACK arrived.
 */
class LoadPublisher {
  readonly acknowledged = new Set<number>();
  sent = 0;
  private readonly socket: net.Socket;
  private readonly outstanding = new Map<number, number>();
  private readonly parser = mqttPacket.parser({ protocolVersion: 4 });
  private closed = false;
  private readonly connected: Promise<void>;
  private readonly socketClosed: Promise<void>;

  private readonly topic: string;
  private readonly count: number;

  constructor(port: number, topic: string, count: number) {
    this.topic = topic;
    this.count = count;
    this.socket = net.connect({ host: '127.0.0.1', port });
    this.socket.setNoDelay(true);
    this.socket.on('error', () => undefined);
    this.socketClosed = new Promise((resolve) => {
      this.socket.on('close', () => {
        this.closed = true;
        resolve();
      });
    });
    this.socket.on('data', (chunk: Buffer) => this.parser.parse(chunk));
    this.connected = new Promise((resolve, reject) => {
      this.parser.on('packet', (packet: Packet) => {
        if (packet.cmd === 'connack') {
          if (packet.returnCode === 0) resolve();
          else reject(new Error(`CONNACK refused with ${packet.returnCode}`));
          return;
        }
        if (packet.cmd === 'puback') this.onPuback(packet.messageId ?? 0);
      });
    });
    this.socket.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 60, clientId: 'load-publisher' }));
  }

  async start(): Promise<void> {
    await withTimeout(this.connected, 5000, 'CONNACK for the load publisher');
    this.fill();
  }

  private onPuback(packetId: number): void {
    const index = this.outstanding.get(packetId);
    if (index === undefined) return;
    this.outstanding.delete(packetId);
    this.acknowledged.add(index);
    this.fill();
  }

  /** Sends messages until WINDOW are outstanding; one write per burst. */
  private fill(): void {
    if (this.closed) return;
    const packets: Buffer[] = [];
    while (this.outstanding.size < WINDOW && this.sent < this.count) {
      const index = this.sent++;
      const packetId = (index % 65_535) + 1;
      this.outstanding.set(packetId, index);
      const payload = Buffer.alloc(64, ' ');
      payload.write(`k${index}`);
      packets.push(mqttPacket.generate({ cmd: 'publish', topic: this.topic, payload, qos: 1, messageId: packetId, retain: false, dup: false }));
    }
    if (packets.length > 0) this.socket.write(Buffer.concat(packets));
  }

  /** Resolves once the broker side closed the socket, after every byte it sent was read. */
  waitClosed(timeoutMs: number): Promise<void> {
    return withTimeout(this.socketClosed, timeoutMs, 'the load publisher socket to close');
  }

  close(): void {
    this.socket.destroy();
  }
}

it('keeps acknowledged messages across kill -9', async () => {
  let outpost = await OutpostProcess.start(configPath);
  const subscriberOptions = { protocolVersion: 4 as const, clientId: 'load-subscriber', clean: false };
  const first = await connectCollecting(outpost.url, subscriberOptions);
  await first.client.subscribeAsync('load/t', { qos: 1 });
  await endClient(first.client);

  const publisher = new LoadPublisher(outpost.port, 'load/t', MAX_MESSAGES);
  await publisher.start();
  const startedAt = Date.now();
  await waitFor(
    () => Date.now() - startedAt >= KILL_AFTER_MS || publisher.acknowledged.size >= KILL_AFTER_ACKS,
    KILL_AFTER_MS + 1000,
    'the moment to kill the broker',
    5,
  );
  await outpost.stop('SIGKILL');
  // PUBACKs still in the socket buffer were sent before the kill, and are read before the close.
  await publisher.waitClosed(5000);
  const acknowledged = [...publisher.acknowledged].sort((a, b) => a - b);
  expect(acknowledged.length).toBeGreaterThan(100);

  outpost = await OutpostProcess.start(configPath);
  const second = await connectCollecting(outpost.url, subscriberOptions);
  expect(second.connack.sessionPresent).toBe(true);
  const delivered = new Set<number>();
  let read = 0;
  const collect = (): number => {
    for (; read < second.received.length; read++) delivered.add(Number(second.received[read].payload.trim().slice(1)));
    return acknowledged.filter((index) => !delivered.has(index)).length;
  };
  await waitUntilDoneOrQuiet(() => second.received.length, () => collect() === 0, 45_000);
  const missing = acknowledged.filter((index) => !delivered.has(index));
  expect(missing.length, `${missing.length} of ${acknowledged.length} acknowledged messages lost, first: ${missing.slice(0, 20).join(', ')}`).toBe(0);
  await endClient(second.client);
}, 80_000);

it('keeps a draining queue across kill -9', async () => {
  const total = 5000;
  let outpost = await OutpostProcess.start(configPath);
  const subscriberOptions = { protocolVersion: 4 as const, clientId: 'drain-subscriber', clean: false };
  const first = await connectCollecting(outpost.url, subscriberOptions);
  await first.client.subscribeAsync('drain/t', { qos: 1 });
  await endClient(first.client);

  const publisher = new LoadPublisher(outpost.port, 'drain/t', total);
  await publisher.start();
  await waitFor(() => publisher.acknowledged.size === total, 20_000, `PUBACK for all ${total} messages`);
  publisher.close();

  // The subscriber drains its queue, acknowledging as it goes, and the broker dies midway.
  const draining = await connectCollecting(outpost.url, subscriberOptions);
  await waitFor(() => draining.received.length >= total / 2, 20_000, 'half of the queue to arrive');
  await outpost.stop('SIGKILL');
  await endClient(draining.client, true);
  const beforeKill = new Set(draining.received.map((message) => message.payload.trim()));
  expect(beforeKill.size).toBeLessThan(total);

  outpost = await OutpostProcess.start(configPath);
  const resumed = await connectCollecting(outpost.url, subscriberOptions);
  expect(resumed.connack.sessionPresent).toBe(true);
  const everything = (): Set<string> => new Set([...beforeKill, ...resumed.received.map((message) => message.payload.trim())]);
  await waitUntilDoneOrQuiet(() => resumed.received.length, () => everything().size === total, 30_000);

  // Messages the subscriber may not have acknowledged before the kill come again; none is lost.
  const seen = everything();
  const missing: string[] = [];
  for (let i = 0; i < total; i++) if (!seen.has(`k${i}`)) missing.push(`k${i}`);
  expect(missing.length, `${missing.length} of ${total} messages lost, first: ${missing.slice(0, 20).join(', ')}`).toBe(0);
  await endClient(resumed.client);
}, 60_000);

/** Waits until `done` holds, or until `count` has not changed for 3 s; at most `timeoutMs`. */
async function waitUntilDoneOrQuiet(count: () => number, done: () => boolean, timeoutMs: number): Promise<void> {
  let last = -1;
  let changedAt = Date.now();
  await waitFor(
    () => {
      if (count() !== last) {
        last = count();
        changedAt = Date.now();
      }
      return done() || Date.now() - changedAt > 3000;
    },
    timeoutMs,
    'messages to stop arriving',
    50,
  );
}
