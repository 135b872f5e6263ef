// A full disk, simulated with a small `persistence.max_database_bytes` (SQLite's max_page_count):
// live QoS 0 routing goes on, durable work is refused with the right reason code, the condition
// is logged, and the broker recovers by itself once space is freed.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterEach, beforeEach, expect, it } from 'vitest';

import { Broker } from '../src/broker/broker.js';
import { Logger } from '../src/service/logger.js';
import { buildTestConfig } from './helpers/broker.js';
import { connectCollecting, endClient } from './helpers/persistent-clients.js';
import { RawClient } from './helpers/raw-client.js';
import { waitFor } from './helpers/wait.js';

const MAX_DATABASE_BYTES = 256 * 1024;
/** Bound on the messages sent to fill the database: 256 KiB has room for far fewer 1 KiB messages. */
const MAX_FILL_MESSAGES = 2000;
const QUOTA_EXCEEDED = 0x97;

let directory = '';
let broker: Broker | null = null;
const clients: RawClient[] = [];

beforeEach(() => {
  directory = mkdtempSync(join(tmpdir(), 'outpost-full-'));
});

afterEach(async () => {
  for (const client of clients.splice(0)) client.close();
  await broker?.stop();
  broker = null;
  rmSync(directory, { recursive: true, force: true });
});

async function rawClient(port: number, protocolVersion: 4 | 5, clientId: string): Promise<RawClient> {
  const client = await RawClient.connect(port, { protocolVersion });
  clients.push(client);
  const connack = await client.connectMqtt({ clientId, clean: true });
  expect(connack.reasonCode ?? connack.returnCode).toBe(0);
  return client;
}

/** Publishes one QoS 1 message and returns the reason code of its PUBACK. */
async function publishQos1(client: RawClient, topic: string, payload: Buffer, packetId: number): Promise<number> {
  client.send({ cmd: 'publish', topic, payload, qos: 1, messageId: packetId, retain: false, dup: false });
  const puback = await client.expectPacket('puback', 5000);
  expect(puback.messageId).toBe(packetId);
  return puback.reasonCode ?? 0;
}

it('survives a full database', async () => {
  const lines: string[] = [];
  const logger = new Logger('info', { sink: { write: (line: string) => lines.push(line) }, journald: false });
  // With an in-flight window of 100, the first commit of the drain moves 100 stored messages at once.
  const limits = { max_queued_messages: 100_000, max_queued_bytes: 0, max_inflight_messages: 100 };
  const config = buildTestConfig({ data_dir: join(directory, 'data'), limits });
  config.persistence.max_database_bytes = MAX_DATABASE_BYTES;
  broker = new Broker(config, logger);
  await broker.start();
  const port = broker.listenerAddresses()[0].port;
  const url = `mqtt://127.0.0.1:${port}`;

  // A persistent session, offline, whose queue fills the database.
  const sessionOptions = { protocolVersion: 5 as const, clientId: 'backlog', clean: false, properties: { sessionExpiryInterval: 300 } };
  const backlog = await connectCollecting(url, sessionOptions);
  await backlog.client.subscribeAsync('fill/t', { qos: 1 });
  await endClient(backlog.client);

  // A live subscriber without a stored session.
  const live = await connectCollecting(url, { protocolVersion: 5, clientId: 'live' });
  await live.client.subscribeAsync('live/t', { qos: 0 });

  const subscriber = await RawClient.connect(port, { protocolVersion: 5 });
  clients.push(subscriber);
  await subscriber.connectMqtt({ clientId: 'late-subscriber', clean: false, properties: { sessionExpiryInterval: 300 } });

  const filler = await rawClient(port, 5, 'filler');
  const accepted: string[] = [];
  let refusedAt = -1;
  for (let i = 0; i < MAX_FILL_MESSAGES; i++) {
    const payload = Buffer.alloc(1024, ' ');
    payload.write(`fill-${i}`);
    const code = await publishQos1(filler, 'fill/t', payload, (i % 65_535) + 1);
    if (code === QUOTA_EXCEEDED) {
      refusedAt = i;
      break;
    }
    expect(code).toBe(0);
    accepted.push(`fill-${i}`);
  }
  expect(refusedAt, 'PUBACK 0x97 within the fill bound').toBeGreaterThan(0);
  expect(accepted.length).toBeGreaterThan(20);
  expect(lines.some((line) => / ERROR state database (is full|reached persistence.max_database_bytes)/.test(line))).toBe(true);

  // Refused again while full, before anything is routed.
  expect(await publishQos1(filler, 'fill/t', Buffer.from('still full'), 60_000)).toBe(QUOTA_EXCEEDED);

  // Live QoS 0 routing goes on.
  filler.send({ cmd: 'publish', topic: 'live/t', payload: Buffer.from('qos0 while full'), qos: 0, retain: false, dup: false });
  await waitFor(() => live.received.length >= 1, 5000, 'the QoS 0 message at the live subscriber');
  expect(live.received[0].payload).toBe('qos0 while full');

  // A 3.1.1 publisher has no negative PUBACK: it is disconnected and sends the message again later.
  const legacy = await rawClient(port, 4, 'legacy-publisher');
  legacy.send({ cmd: 'publish', topic: 'fill/t', payload: Buffer.from('legacy'), qos: 1, messageId: 1, retain: false, dup: false });
  await legacy.waitClose(5000);
  await waitFor(() => lines.some((line) => /client disconnected client_id=legacy-publisher .*state database full/.test(line)), 2000, 'the disconnect log line');

  // Subscriptions of a stored session are durable work too: refused with 0x97. (Its client
  // connected before the database filled up, because a successful commit of even a small row,
  // such as a new session, ends the full state.)
  subscriber.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'late/t', qos: 1 }] });
  const suback = await subscriber.expectPacket('suback');
  expect(suback.granted).toEqual([QUOTA_EXCEEDED]);

  // The backlog drains when its subscriber comes back: every message that got PUBACK 0x00.
  const resumed = await connectCollecting(url, sessionOptions);
  expect(resumed.connack.sessionPresent).toBe(true);
  await waitForQuiet(() => resumed.received.length, () => accepted.every((payload) => resumed.received.some((message) => message.payload.trimEnd() === payload)));
  const drainedAt = Date.now();
  const drained = resumed.received.map((message) => message.payload.trimEnd());
  // Soft, so that a failure here still lets the recovery checks below run and report.
  expect.soft(accepted.filter((payload) => !drained.includes(payload)), 'accepted messages not delivered').toEqual([]);
  expect.soft(drained.filter((payload, index) => drained.indexOf(payload) !== index), 'messages delivered twice').toEqual([]);
  expect.soft(drained.filter((payload) => accepted.includes(payload)), 'delivery order').toEqual(accepted);

  // Space is back: within one probe interval (5 s) QoS 1 messages are accepted again.
  let packetId = 1;
  await waitFor(
    async () => (await publishQos1(filler, 'fill/t', Buffer.from('after recovery'), packetId++)) === 0,
    8000,
    'a QoS 1 message to be accepted again',
    250,
  );
  expect(Date.now() - drainedAt).toBeLessThan(7000);
  expect(lines.some((line) => /state database writable again/.test(line))).toBe(true);
  await waitFor(() => resumed.received.some((message) => message.payload === 'after recovery'), 5000, 'the message after recovery');
  await endClient(resumed.client);
  await endClient(live.client);
}, 60_000);

/** Waits until `done` holds, or until `count` stopped changing for 2 s; at most 20 s. */
async function waitForQuiet(count: () => number, done: () => boolean): Promise<void> {
  let last = -1;
  let changedAt = Date.now();
  await waitFor(
    () => {
      if (count() !== last) {
        last = count();
        changedAt = Date.now();
      }
      return done() || Date.now() - changedAt > 2000;
    },
    20_000,
    'the queue to drain',
    50,
  );
}
