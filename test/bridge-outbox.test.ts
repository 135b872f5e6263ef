import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { Outbox, type OutgoingMessage } from '../src/bridge/outbox.js';
import { silentLogger } from '../src/service/logger.js';
import { MIGRATIONS } from '../src/store/migrations.js';
import { Store } from '../src/store/store.js';
import { parseBridgeConfig } from './helpers/remote-mosquitto.js';

const directories: string[] = [];

afterEach(async () => {
  for (const directory of directories.splice(0)) await rm(directory, { recursive: true, force: true });
});

async function databasePath(): Promise<string> {
  const directory = await mkdtemp(path.join(os.tmpdir(), 'outpost-outbox-'));
  directories.push(directory);
  return path.join(directory, 'outpost.db');
}

/** Opens the database with the full schema; a long batch window keeps writes pending until a flush. */
function openStore(file: string): Store {
  const db = new Database(file);
  // Durability against power loss is not under test here; skipping fsync keeps the test fast.
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = OFF');
  if ((db.pragma('user_version', { simple: true }) as number) === 0) {
    for (const migration of MIGRATIONS) db.exec(migration);
    db.pragma(`user_version = ${MIGRATIONS.length}`);
  }
  return new Store(db, { batchWindowMs: 1000, maxDatabaseBytes: 0 }, silentLogger());
}

function message(payload: string): OutgoingMessage {
  return { topic: 't', payload: Buffer.from(payload), qos: 1, retain: false, properties: null, expiresAt: 0 };
}

const config = parseBridgeConfig('name: b\naddresses: ["127.0.0.1:1"]\ntopics:\n  - pattern: "#"');

describe('bridge outbox', () => {
  it('sends no seq before its reservation commits', async () => {
    const file = await databasePath();
    const first = openStore(file);
    const before = new Outbox('b', config, silentLogger(), () => undefined);
    before.open(first);
    for (const payload of ['a', 'b', 'c']) before.append(message(payload), false);
    const head = before.peek();
    if (head === undefined) throw new Error('the outbox returned no entry');
    expect(head.seq).toBe(1);
    expect(before.isReserved(head)).toBe(false);
    first.flush();
    expect(before.isReserved(head)).toBe(true);

    // A crash: the row of "d" never commits, but the reservation that covered a to c did.
    before.append(message('d'), false);
    first.db.close();

    const second = openStore(file);
    const after = new Outbox('b', config, silentLogger(), () => undefined);
    after.open(second);
    expect(after.messages).toBe(3);
    after.append(message('e'), false);
    const seqs: number[] = [];
    for (let entry = after.peek(); entry !== undefined; entry = after.peek()) {
      seqs.push(entry.seq);
      after.take();
    }
    expect(seqs.slice(0, 3)).toEqual([1, 2, 3]);
    // "d" may have gone out with seq 4 before the crash; "e" must not reuse that seq.
    expect(seqs[3]).toBeGreaterThan(4);
    second.close();
  });

  it('reads a large backlog in seq order', async () => {
    const file = await databasePath();
    const store = openStore(file);
    const small = parseBridgeConfig('name: b\naddresses: ["127.0.0.1:1"]\ntopics:\n  - pattern: "#"\ndrain:\n  batch_size: 7');
    const outbox = new Outbox('b', small, silentLogger(), () => undefined);
    outbox.open(store);
    // More than the memory window, so most entries are read back from the database.
    const count = 5000;
    for (let index = 0; index < count; index++) outbox.append(message(String(index)), false);
    const payloads: string[] = [];
    for (let entry = outbox.peek(); entry !== undefined; entry = outbox.peek()) {
      payloads.push(entry.payload.toString());
      outbox.take();
      outbox.remove(entry);
    }
    expect(payloads).toHaveLength(count);
    expect(payloads.every((payload, index) => payload === String(index))).toBe(true);
    expect(outbox.messages).toBe(0);
    expect(outbox.bytes).toBe(0);
    store.close();
  });
});
