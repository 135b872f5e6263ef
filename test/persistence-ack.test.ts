// Acknowledged means durable: when PUBACK, PUBREC, PUBREL, PUBCOMP or SUBACK reaches the client,
// or an in-process QoS 1 publish resolves, a second SQLite connection, which reads only committed
// transactions, already finds the state that the packet confirms. A long batch window (200 ms)
// makes an acknowledgement sent before the commit show up every time.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import Database from 'better-sqlite3';
import { afterEach, beforeEach, expect, it } from 'vitest';

import { Broker } from '../src/broker/broker.js';
import { silentLogger } from '../src/service/logger.js';
import { DATABASE_FILE } from '../src/store/database.js';
import { buildTestConfig } from './helpers/broker.js';
import { RawClient } from './helpers/raw-client.js';

const BATCH_WINDOW_MS = 200;

let directory = '';
let broker: Broker | null = null;
let reader: Database.Database | null = null;
const clients: RawClient[] = [];

beforeEach(async () => {
  directory = mkdtempSync(join(tmpdir(), 'outpost-ack-'));
  const config = buildTestConfig({ data_dir: directory });
  config.persistence.batch_window_ms = BATCH_WINDOW_MS;
  broker = new Broker(config, silentLogger());
  await broker.start();
  reader = new Database(join(directory, DATABASE_FILE), { readonly: true });
});

afterEach(async () => {
  for (const client of clients.splice(0)) client.close();
  reader?.close();
  reader = null;
  await broker?.stop();
  broker = null;
  rmSync(directory, { recursive: true, force: true });
});

function port(): number {
  if (broker === null) throw new Error('no broker');
  return broker.listenerAddresses()[0].port;
}

/** Number of committed rows in `table` for `clientId` (or with `topic` for the retained table). */
function committedRows(table: 'queued' | 'subscriptions' | 'incoming_qos2' | 'sessions' | 'retained', key: string): number {
  if (reader === null) throw new Error('no reader connection');
  const column = table === 'retained' ? 'topic' : 'client_id';
  const row = reader.prepare(`SELECT count(*) AS n FROM ${table} WHERE ${column} = ?`).get(key) as { n: number };
  return row.n;
}

async function connect(clientId: string, protocolVersion: 4 | 5, persistent: boolean): Promise<RawClient> {
  const client = await RawClient.connect(port(), { protocolVersion });
  clients.push(client);
  const properties = persistent && protocolVersion === 5 ? { sessionExpiryInterval: 300 } : undefined;
  await client.connectMqtt({ clientId, clean: !persistent, properties });
  return client;
}

/** Creates an offline persistent session subscribed to `filter` at QoS 2. */
async function offlineSubscriber(clientId: string, filter: string): Promise<void> {
  const subscriber = await connect(clientId, 5, true);
  subscriber.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: filter, qos: 2 }] });
  await subscriber.expectPacket('suback');
  await subscriber.disconnect();
}

for (const protocolVersion of [4, 5] as const) {
  it(`sends PUBACK after the queued copy commits (MQTT ${protocolVersion === 5 ? '5' : '3.1.1'})`, async () => {
    await offlineSubscriber('ack-offline', 'ack/t');
    const publisher = await connect('ack-publisher', protocolVersion, false);
    publisher.send({ cmd: 'publish', topic: 'ack/t', payload: Buffer.from('durable'), qos: 1, messageId: 5, retain: false, dup: false });
    const puback = await publisher.expectPacket('puback', 5000);
    expect(puback.messageId).toBe(5);
    expect(committedRows('queued', 'ack-offline')).toBe(1);
  });
}

it('sends PUBREC after the message and its packet id commit', async () => {
  await offlineSubscriber('rec-offline', 'rec/t');
  const publisher = await connect('rec-publisher', 5, true);
  publisher.send({ cmd: 'publish', topic: 'rec/t', payload: Buffer.from('exactly once'), qos: 2, messageId: 9, retain: false, dup: false });
  const pubrec = await publisher.expectPacket('pubrec', 5000);
  expect(pubrec.messageId).toBe(9);
  expect(committedRows('queued', 'rec-offline')).toBe(1);
  expect(committedRows('incoming_qos2', 'rec-publisher')).toBe(1);
});

it('sends SUBACK after the subscription commits', async () => {
  const subscriber = await connect('suback-session', 5, true);
  subscriber.send({ cmd: 'subscribe', messageId: 3, subscriptions: [{ topic: 'sub/#', qos: 1 }] });
  const suback = await subscriber.expectPacket('suback', 5000);
  expect(suback.granted).toEqual([1]);
  expect(committedRows('sessions', 'suback-session')).toBe(1);
  expect(committedRows('subscriptions', 'suback-session')).toBe(1);
});

it('sends PUBACK for a retained message after it commits', async () => {
  const publisher = await connect('retain-publisher', 5, false);
  publisher.send({ cmd: 'publish', topic: 'ret/durable', payload: Buffer.from('kept'), qos: 1, messageId: 2, retain: true, dup: false });
  const puback = await publisher.expectPacket('puback', 5000);
  expect(puback.messageId).toBe(2);
  expect(committedRows('retained', 'ret/durable')).toBe(1);
});

it('sends PUBCOMP after the released packet id is deleted', async () => {
  // A client may reuse a packet id once PUBCOMP arrived. Were the id still stored after a crash,
  // the broker would take the next QoS 2 message with that id for a resend and drop it.
  const publisher = await connect('comp-publisher', 5, true);
  publisher.send({ cmd: 'publish', topic: 'comp/t', payload: Buffer.from('one'), qos: 2, messageId: 4, retain: false, dup: false });
  expect((await publisher.expectPacket('pubrec', 5000)).messageId).toBe(4);
  expect(committedRows('incoming_qos2', 'comp-publisher')).toBe(1);
  publisher.send({ cmd: 'pubrel', messageId: 4 });
  expect((await publisher.expectPacket('pubcomp', 5000)).messageId).toBe(4);
  expect(committedRows('incoming_qos2', 'comp-publisher'), 'committed incoming QoS 2 ids at PUBCOMP').toBe(0);
});

it('sends PUBREL after the released state commits', async () => {
  // After PUBREL the broker must not send that PUBLISH again (MQTT 5.0 section 4.3.3). Were the
  // released state lost in a crash, it would send it, and the client would deliver it twice.
  const subscriber = await connect('rel-subscriber', 5, true);
  subscriber.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'rel/t', qos: 2 }] });
  await subscriber.expectPacket('suback', 5000);
  const publisher = await connect('rel-publisher', 5, false);
  publisher.send({ cmd: 'publish', topic: 'rel/t', payload: Buffer.from('twice?'), qos: 2, messageId: 1, retain: false, dup: false });

  const delivered = await subscriber.expectPacket('publish', 5000);
  // The publisher's PUBREC means the batch holding the in-flight copy has committed.
  await publisher.expectPacket('pubrec', 5000);
  subscriber.send({ cmd: 'pubrec', messageId: delivered.messageId });
  expect((await subscriber.expectPacket('pubrel', 5000)).messageId).toBe(delivered.messageId);
  if (reader === null) throw new Error('no reader connection');
  const row = reader.prepare('SELECT released FROM inflight WHERE client_id = ? AND packet_id = ?').get('rel-subscriber', delivered.messageId) as
    | { released: number }
    | undefined;
  expect(row?.released, 'released flag of the committed in-flight row').toBe(1);
});

it('resolves an in-process QoS 1 publish after it commits', async () => {
  if (broker === null) throw new Error('no broker');
  // The field adapter and the bridge publish in-process; a resolved QoS 1 publish is their PUBACK.
  const client = broker.createClient('in-process-publisher', () => undefined);
  await client.publish('ret/in-process', Buffer.from('kept'), { qos: 1, retain: true });
  expect(committedRows('retained', 'ret/in-process'), 'committed rows when the publish resolved').toBe(1);
  client.close();
});
