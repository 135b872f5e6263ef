// A state database that cannot be used never stops the broker: the file is moved aside as
// `outpost.db.unusable-<timestamp>`, an empty database takes its place, and an error is logged.
// Also: schema migrations from every earlier version end at SCHEMA_VERSION.

import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { Broker } from '../src/broker/broker.js';
import type { OutpostConfig } from '../src/config/schema.js';
import { Logger } from '../src/service/logger.js';
import { DATABASE_FILE, openDatabase } from '../src/store/database.js';
import { MIGRATIONS, SCHEMA_VERSION } from '../src/store/migrations.js';
import { buildTestConfig } from './helpers/broker.js';
import { OutpostProcess, killRunningOutposts, writeOutpostConfig } from './helpers/outpost-process.js';
import { RawClient } from './helpers/raw-client.js';

const MOVED_ASIDE = /^outpost\.db\.unusable-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$/;

let directory = '';
let dataDir = '';

beforeEach(() => {
  directory = mkdtempSync(join(tmpdir(), 'outpost-corrupt-'));
  dataDir = join(directory, 'data');
  mkdirSync(dataDir);
});

afterEach(async () => {
  await killRunningOutposts();
  rmSync(directory, { recursive: true, force: true });
});

/** Creates a logger that keeps every line it writes in `lines`. */
function capturingLogger(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const logger = new Logger('info', { sink: { write: (line: string) => lines.push(line) }, journald: false });
  return { logger, lines };
}

function testConfig(): OutpostConfig {
  return buildTestConfig({ data_dir: dataDir });
}

/** Starts a broker on `dataDir`, runs `use` with it, and stops it. Returns the log lines. */
async function withBroker(use: (broker: Broker) => Promise<void>): Promise<string[]> {
  const { logger, lines } = capturingLogger();
  const broker = new Broker(testConfig(), logger);
  await broker.start();
  try {
    await use(broker);
  } finally {
    await broker.stop();
  }
  return lines;
}

/** Stores `count` retained messages of 1 KiB through an in-process client. */
async function storeRetained(broker: Broker, count: number): Promise<void> {
  const client = broker.createClient('retain-writer', () => undefined);
  for (let i = 0; i < count; i++) await client.publish(`keep/${i}`, Buffer.alloc(1024, i % 256), { qos: 1, retain: true });
  client.close();
}

/** Returns the retained messages matching `filter` that a new in-process subscriber receives. */
async function readRetained(broker: Broker, filter: string): Promise<string[]> {
  const topics: string[] = [];
  const client = broker.createClient('retain-reader', (message) => topics.push(message.topic));
  await client.subscribe(filter, { qos: 1 });
  // The handler runs in a microtask after the delivery.
  await new Promise((resolve) => setImmediate(resolve));
  client.close();
  return topics;
}

function movedAsideFiles(): string[] {
  return readdirSync(dataDir).filter((name) => name.startsWith(`${DATABASE_FILE}.unusable-`) && !/-(wal|shm)$/.test(name));
}

/**
 * Starts a broker on the prepared `dataDir` and checks the promises for an unusable database.
 * The old file is moved aside unchanged and an error is logged. The fresh database keeps data
 * across a restart, and the next start neither moves it again nor logs another error.
 */
async function expectRecovery(originalBytes: Buffer | null): Promise<void> {
  const firstLog = await withBroker(async (broker) => {
    await storeRetained(broker, 3);
  });

  const moved = movedAsideFiles();
  expect(moved).toHaveLength(1);
  expect(moved[0]).toMatch(MOVED_ASIDE);
  if (originalBytes !== null) expect(readFileSync(join(dataDir, moved[0])).equals(originalBytes)).toBe(true);

  const errors = firstLog.filter((line) => / ERROR /.test(line));
  expect(errors).toHaveLength(1);
  expect(errors[0]).toContain('state database unusable');
  expect(errors[0]).toContain(join(dataDir, DATABASE_FILE));
  expect(errors[0]).toContain(moved[0]);

  const secondLog = await withBroker(async (broker) => {
    expect(await readRetained(broker, 'keep/#')).toHaveLength(3);
  });
  expect(secondLog.filter((line) => / ERROR /.test(line))).toEqual([]);
  expect(movedAsideFiles()).toEqual(moved);
}

describe('unusable state database', () => {
  it('moves aside a file of garbage bytes', async () => {
    const garbage = Buffer.alloc(8192);
    for (let i = 0; i < garbage.length; i++) garbage[i] = (i * 7919 + 13) % 251;
    writeFileSync(join(dataDir, DATABASE_FILE), garbage);
    await expectRecovery(garbage);
  });

  it('moves aside a zero-filled file', async () => {
    // What an SD card can leave after a power loss: the size is there, the contents are not.
    const zeros = Buffer.alloc(64 * 1024);
    writeFileSync(join(dataDir, DATABASE_FILE), zeros);
    await expectRecovery(zeros);
  });

  it('moves aside a truncated database', async () => {
    await withBroker(async (broker) => {
      await storeRetained(broker, 300);
    });
    const path = join(dataDir, DATABASE_FILE);
    const fullSize = statSync(path).size;
    expect(fullSize).toBeGreaterThan(200 * 1024);
    truncateSync(path, Math.floor(fullSize / 2));
    await expectRecovery(readFileSync(path));
  });

  it('moves aside a database from a newer Outpost', async () => {
    const path = join(dataDir, DATABASE_FILE);
    const db = new Database(path);
    db.exec('CREATE TABLE from_the_future (x INTEGER)');
    db.prepare('INSERT INTO from_the_future (x) VALUES (?)').run(42);
    db.pragma('user_version = 99');
    db.close();
    await expectRecovery(null);

    // The newer database is kept whole for the newer Outpost (its header may now record WAL mode).
    const moved = new Database(join(dataDir, movedAsideFiles()[0]), { readonly: true });
    expect(moved.pragma('user_version', { simple: true })).toBe(99);
    expect(moved.prepare('SELECT x FROM from_the_future').all()).toEqual([{ x: 42 }]);
    moved.close();
  });

  it('moves aside a path that cannot be opened as a file', async () => {
    // A directory where the database file should be: SQLite cannot open it.
    mkdirSync(join(dataDir, DATABASE_FILE));
    await expectRecovery(null);
  });

  it('starts the outpost command on a damaged file', async () => {
    writeFileSync(join(dataDir, DATABASE_FILE), Buffer.alloc(16 * 1024, 0x5a));
    const outpost = await OutpostProcess.start(writeOutpostConfig(join(directory, 'outpost.yaml'), { dataDir }));
    expect(outpost.stderr).toMatch(/ ERROR state database unusable; moved aside/);
    expect(movedAsideFiles()).toHaveLength(1);

    // The fresh database takes a stored session.
    const client = await RawClient.connect(outpost.port, { protocolVersion: 5 });
    await client.connectMqtt({ clientId: 'after-damage', clean: false, properties: { sessionExpiryInterval: 60 } });
    client.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'after/damage', qos: 1 }] });
    expect((await client.expectPacket('suback')).granted).toEqual([1]);
    await client.disconnect();

    await outpost.stop('SIGTERM');
  });

  it('keeps a healthy database in place', async () => {
    await withBroker(async (broker) => {
      await storeRetained(broker, 2);
    });
    const log = await withBroker(async (broker) => {
      expect(await readRetained(broker, 'keep/#')).toHaveLength(2);
    });
    expect(log.filter((line) => / ERROR /.test(line))).toEqual([]);
    expect(movedAsideFiles()).toEqual([]);
  });
});

describe('schema migrations', () => {
  it('has at least one migration', () => {
    expect(SCHEMA_VERSION).toBe(MIGRATIONS.length);
    expect(SCHEMA_VERSION).toBeGreaterThanOrEqual(1);
  });

  // A database left at each earlier version by an older Outpost, version 0 being a new file.
  for (let version = 0; version < SCHEMA_VERSION; version++) {
    it(`migrates a database from version ${version}`, async () => {
      const path = join(dataDir, DATABASE_FILE);
      const old = new Database(path);
      for (let step = 0; step < version; step++) old.exec(MIGRATIONS[step]);
      old.pragma(`user_version = ${version}`);
      old.close();

      const { logger, lines } = capturingLogger();
      const db = openDatabase({ dataDir, synchronous: 'full' }, logger);
      expect(db.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
      const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as Array<{ name: string }>).map(
        (row) => row.name,
      );
      expect(tables).toEqual(expect.arrayContaining(['inflight', 'incoming_qos2', 'queued', 'retained', 'sessions', 'subscriptions']));
      expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
      db.close();
      expect(lines.filter((line) => / ERROR /.test(line))).toEqual([]);
      expect(movedAsideFiles()).toEqual([]);

      // The migrated database works for the broker.
      await withBroker(async (broker) => {
        await storeRetained(broker, 1);
      });
      await withBroker(async (broker) => {
        expect(await readRetained(broker, 'keep/#')).toEqual(['keep/0']);
      });
    });
  }
});
