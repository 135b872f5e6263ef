// The Store's batching contract, checked against a second SQLite connection, which reads only
// committed data. The whenDurable callbacks run in order and after the commit, and writes queued
// within one batch window commit together. Flush and close commit at once. A full database is
// reported to the callbacks, and the store leaves that state once a commit succeeds or a probe fits.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import Database from 'better-sqlite3';
import { afterEach, beforeEach, expect, it } from 'vitest';

import type { Message } from '../src/broker/message.js';
import { silentLogger } from '../src/service/logger.js';
import { DATABASE_FILE, openDatabase } from '../src/store/database.js';
import { Store } from '../src/store/store.js';

let directory = '';
let store: Store | null = null;
let reader: Database.Database | null = null;

beforeEach(() => {
  directory = mkdtempSync(join(tmpdir(), 'outpost-store-'));
});

afterEach(() => {
  reader?.close();
  reader = null;
  if (store !== null && store.db.open) store.close();
  store = null;
  rmSync(directory, { recursive: true, force: true });
});

function openStore(batchWindowMs: number, maxDatabaseBytes = 0): Store {
  const db = openDatabase({ dataDir: directory, synchronous: 'full' }, silentLogger());
  store = new Store(db, { batchWindowMs, maxDatabaseBytes }, silentLogger());
  reader = new Database(join(directory, DATABASE_FILE), { readonly: true });
  return store;
}

/** Returns the topics of the committed retained rows, read through the second connection. */
function committedTopics(): string[] {
  if (reader === null) throw new Error('no reader connection');
  return (reader.prepare('SELECT topic FROM retained ORDER BY topic').all() as Array<{ topic: string }>).map((row) => row.topic);
}

function retainedMessage(topic: string, bytes = 16): Message {
  return { topic, payload: Buffer.alloc(bytes, 1), qos: 1, retain: true, properties: null, expiresAt: 0, origin: 'test' };
}

function nextDurable(target: Store): Promise<boolean> {
  return new Promise((resolve) => target.whenDurable(resolve));
}

it('runs whenDurable callbacks in order after commit', async () => {
  const target = openStore(20);
  const calls: Array<{ name: string; ok: boolean; committed: string[] }> = [];
  target.saveRetained(retainedMessage('a'));
  target.whenDurable((ok) => calls.push({ name: 'first', ok, committed: committedTopics() }));
  target.saveRetained(retainedMessage('b'));
  target.whenDurable((ok) => calls.push({ name: 'second', ok, committed: committedTopics() }));
  // Nothing is committed or called back before the batch window ends.
  expect(calls).toEqual([]);
  expect(committedTopics()).toEqual([]);

  await nextDurable(target);
  expect(calls.map((call) => call.name)).toEqual(['first', 'second']);
  expect(calls.every((call) => call.ok)).toBe(true);
  // Both writes were queued within one window, so one transaction contains both.
  expect(calls[0].committed).toEqual(['a', 'b']);
});

it('calls back at once when nothing is pending', () => {
  const target = openStore(20);
  let result: boolean | null = null;
  target.whenDurable((ok) => {
    result = ok;
  });
  expect(result).toBe(true);
});

it('waits for the batch window before committing', async () => {
  const target = openStore(150);
  const start = Date.now();
  target.saveRetained(retainedMessage('slow'));
  const ok = await nextDurable(target);
  expect(ok).toBe(true);
  expect(Date.now() - start).toBeGreaterThanOrEqual(140);
  expect(committedTopics()).toEqual(['slow']);
});

it('commits at once on flush', () => {
  const target = openStore(10_000);
  const calls: boolean[] = [];
  target.saveRetained(retainedMessage('flushed'));
  target.whenDurable((ok) => calls.push(ok));
  target.flush();
  expect(calls).toEqual([true]);
  expect(committedTopics()).toEqual(['flushed']);
});

it('commits pending writes on close', () => {
  const target = openStore(10_000);
  target.saveRetained(retainedMessage('closing'));
  target.close();
  expect(committedTopics()).toEqual(['closing']);
});

it('rejects work at the size bound and accepts it below', async () => {
  const target = openStore(1, 64 * 1024);
  let stored = 0;
  while (target.writable && stored < 1000) {
    target.saveRetained(retainedMessage(`fill/${String(stored).padStart(4, '0')}`, 1024));
    expect(await nextDurable(target), 'commits up to the bound succeed').toBe(true);
    stored++;
  }
  expect(target.writable, 'the bound is reached within 1000 messages of 1 KiB').toBe(false);
  expect(target.failedCommits).toBe(0);
  expect(committedTopics()).toHaveLength(stored);

  // Draining needs room above the bound: a write still commits while new work is rejected.
  target.saveRetained(retainedMessage('drain', 1024));
  expect(await nextDurable(target)).toBe(true);

  for (let i = 0; i < stored; i++) target.deleteRetained(`fill/${String(i).padStart(4, '0')}`);
  target.deleteRetained('drain');
  expect(await nextDurable(target)).toBe(true);
  expect(target.writable).toBe(true);
  expect(committedTopics()).toEqual([]);
});

it('reports a failed commit on a full disk and rolls it back', async () => {
  const target = openStore(1);
  const pages = target.db.pragma('page_count', { simple: true }) as number;
  // A hard page bound simulates a full disk.
  target.db.pragma(`max_page_count = ${pages + 16}`);
  let stored = 0;
  let ok = true;
  while (ok && stored < 1000) {
    target.saveRetained(retainedMessage(`fill/${String(stored).padStart(4, '0')}`, 1024));
    ok = await nextDurable(target);
    if (ok) stored++;
  }
  expect(ok, 'a commit fails within 1000 messages of 1 KiB').toBe(false);
  expect(target.writable).toBe(false);
  expect(target.failedCommits).toBeGreaterThanOrEqual(1);
  // The failed batch is rolled back as a whole: the committed rows are exactly the acknowledged ones.
  expect(committedTopics()).toHaveLength(stored);

  // Space returns without a write of the store's own, as when another program frees the disk.
  target.db.prepare('DELETE FROM retained').run();
  target.probe();
  expect(target.writable).toBe(true);
  // The probe writes nothing that stays.
  expect(committedTopics()).toEqual([]);
  target.saveRetained(retainedMessage('after', 1024));
  expect(await nextDurable(target)).toBe(true);
});
