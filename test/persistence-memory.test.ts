// Memory does not grow with stored data: payloads of retained messages and of offline queues
// live in SQLite, not in the JavaScript heap, both while the broker runs and after a restart
// (startup reads the index, not the payloads). A broker without persistence is the control that
// shows that the measurement detects payloads at all.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

import { afterEach, beforeEach, expect, it } from 'vitest';

import { Broker } from '../src/broker/broker.js';
import type { OutpostConfig } from '../src/config/schema.js';
import { silentLogger } from '../src/service/logger.js';
import { buildTestConfig } from './helpers/broker.js';
import { OutpostProcess, killRunningOutposts, writeOutpostConfig } from './helpers/outpost-process.js';
import { connectCollecting, endClient, publishAll, type OutgoingMessage } from './helpers/persistent-clients.js';
import { waitFor } from './helpers/wait.js';

const MESSAGES = 20_000;
const PAYLOAD_BYTES = 1024;
const PAYLOAD_TOTAL = MESSAGES * PAYLOAD_BYTES;
/**
 * Memory a broker may keep per stored message: the retained index entry or queue counters, far
 * below the 1 KiB payload. A quarter of the payload total leaves room for the index and for GC noise.
 */
const MAX_GROWTH = PAYLOAD_TOTAL / 4;

// Makes the garbage collector callable without --expose-gc on the test worker's command line.
setFlagsFromString('--expose-gc');
const collectGarbage = runInNewContext('gc') as () => void;

/** JavaScript heap plus ArrayBuffer memory (where Buffer payloads live) after a full collection. */
function usedMemory(): number {
  for (let i = 0; i < 3; i++) collectGarbage();
  const usage = process.memoryUsage();
  return usage.heapUsed + usage.arrayBuffers;
}

let directory = '';
let brokers: Broker[] = [];

beforeEach(() => {
  directory = mkdtempSync(join(tmpdir(), 'outpost-memory-'));
});

afterEach(async () => {
  for (const broker of brokers.splice(0)) await broker.stop();
  await killRunningOutposts();
  rmSync(directory, { recursive: true, force: true });
});

function config(persistence: boolean): OutpostConfig {
  const built = buildTestConfig({
    data_dir: join(directory, 'data'),
    limits: { max_queued_messages: MESSAGES * 2, max_queued_bytes: 0, max_retained_messages: MESSAGES * 2, max_retained_bytes: 0 },
  });
  built.persistence.enabled = persistence;
  return built;
}

async function startBroker(persistence: boolean): Promise<Broker> {
  const broker = new Broker(config(persistence), silentLogger());
  await broker.start();
  brokers.push(broker);
  return broker;
}

async function stopBroker(broker: Broker): Promise<void> {
  brokers = brokers.filter((other) => other !== broker);
  await broker.stop();
}

function whenDurable(broker: Broker): Promise<void> {
  return new Promise((resolve) => broker.whenDurable(() => resolve()));
}

/** Publishes MESSAGES messages of PAYLOAD_BYTES each, every payload its own allocation. */
async function publishMany(broker: Broker, topicOf: (index: number) => string, retain: boolean): Promise<void> {
  const client = broker.createClient('memory-publisher', () => undefined);
  // A QoS 1 publish resolves at its commit, so publishes go in chunks that share a batch.
  const chunk = 500;
  for (let start = 0; start < MESSAGES; start += chunk) {
    const pending: Array<Promise<void>> = [];
    for (let i = start; i < Math.min(start + chunk, MESSAGES); i++) {
      pending.push(client.publish(topicOf(i), Buffer.alloc(PAYLOAD_BYTES, i % 251), { qos: 1, retain }));
    }
    await Promise.all(pending);
  }
  client.close();
  await whenDurable(broker);
}

function megabytes(bytes: number): string {
  return `${(bytes / 1_048_576).toFixed(1)} MiB`;
}

it('keeps retained payloads out of memory', async () => {
  const beforeStart = usedMemory();
  const broker = await startBroker(true);
  await publishMany(broker, (i) => `retained/${i}`, true);
  const running = usedMemory() - beforeStart;
  expect(running, `memory growth with ${MESSAGES} retained messages: ${megabytes(running)}`).toBeLessThan(MAX_GROWTH);
  await stopBroker(broker);

  const beforeRestart = usedMemory();
  const restarted = await startBroker(true);
  const afterRestart = usedMemory() - beforeRestart;
  expect(afterRestart, `memory growth after restart: ${megabytes(afterRestart)}`).toBeLessThan(MAX_GROWTH);
  expect(restarted.retained.size).toBe(MESSAGES);

  // The payloads are still there, read from the store when a subscription needs them.
  const received: Buffer[] = [];
  const reader = restarted.createClient('memory-reader', (message) => received.push(message.payload));
  await reader.subscribe('retained/12345', { qos: 1 });
  await waitFor(() => received.length === 1, 2000, 'the retained message');
  expect(received[0].equals(Buffer.alloc(PAYLOAD_BYTES, 12345 % 251))).toBe(true);
  reader.close();
}, 60_000);

it('keeps queued payloads out of memory', async () => {
  const beforeStart = usedMemory();
  const broker = await startBroker(true);
  const url = `mqtt://127.0.0.1:${broker.listenerAddresses()[0].port}`;
  const sessionOptions = { protocolVersion: 5 as const, clientId: 'memory-offline', clean: false, properties: { sessionExpiryInterval: 3600 } };
  const subscriber = await connectCollecting(url, sessionOptions);
  await subscriber.client.subscribeAsync('queued/t', { qos: 1 });
  await endClient(subscriber.client);

  await publishMany(broker, () => 'queued/t', false);
  const running = usedMemory() - beforeStart;
  expect(running, `memory growth with ${MESSAGES} queued messages: ${megabytes(running)}`).toBeLessThan(MAX_GROWTH);
  await stopBroker(broker);

  const beforeRestart = usedMemory();
  const restarted = await startBroker(true);
  const afterRestart = usedMemory() - beforeRestart;
  expect(afterRestart, `memory growth after restart: ${megabytes(afterRestart)}`).toBeLessThan(MAX_GROWTH);

  // The queue is intact: the session resumes and its first message arrives with its payload.
  const restartedUrl = `mqtt://127.0.0.1:${restarted.listenerAddresses()[0].port}`;
  const resumed = await connectCollecting(restartedUrl, sessionOptions);
  expect(resumed.connack.sessionPresent).toBe(true);
  await waitFor(() => resumed.received.length >= 1, 5000, 'the first queued message');
  expect(resumed.received[0].payload).toBe(Buffer.alloc(PAYLOAD_BYTES, 0).toString());
  await endClient(resumed.client, true);
}, 60_000);

it('detects payloads without persistence', async () => {
  // The control: the same measurement must see the payloads when nothing moves them to SQLite.
  const beforeStart = usedMemory();
  const broker = await startBroker(false);
  await publishMany(broker, (i) => `retained/${i}`, true);
  const growth = usedMemory() - beforeStart;
  expect(growth, `memory growth without persistence: ${megabytes(growth)}`).toBeGreaterThan(PAYLOAD_TOTAL * 0.9);
  await stopBroker(broker);
}, 60_000);

/** Peak resident memory (VmHWM) of a process in bytes. */
function peakResidentBytes(pid: number): number {
  const match = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (match === null) throw new Error(`no VmHWM line in /proc/${pid}/status`);
  return Number(match[1]) * 1024;
}

it('bounds memory of a wide retained match', async () => {
  // A broker process of its own, so that its peak resident memory measures the broker alone.
  const configPath = writeOutpostConfig(join(directory, 'outpost.yaml'), {
    dataDir: join(directory, 'data'),
    limits: { max_retained_messages: MESSAGES * 2, max_retained_bytes: 0 },
  });
  let outpost = await OutpostProcess.start(configPath);
  const publisher = await connectCollecting(outpost.url, { clientId: 'retained-filler' });
  for (let start = 0; start < MESSAGES; start += 1000) {
    const chunk: OutgoingMessage[] = [];
    for (let i = start; i < start + 1000; i++) chunk.push({ topic: `wide/${i}`, payload: Buffer.alloc(PAYLOAD_BYTES, i % 251), options: { qos: 1, retain: true } });
    await publishAll(publisher, chunk);
  }
  await endClient(publisher.client);
  // A restart resets the peak, which the ingest raised.
  await outpost.stop('SIGTERM');
  outpost = await OutpostProcess.start(configPath);
  const before = peakResidentBytes(outpost.pid);

  // The session queue takes the first 1000 (its default limit) plus the in-flight window, and the
  // broker drops the rest. So at most about 1 MiB of payloads needs to be in memory at once.
  const subscriber = await connectCollecting(outpost.url, { clientId: 'wide-reader' });
  await subscriber.client.subscribeAsync('wide/#', { qos: 1 });
  let last = -1;
  let changedAt = Date.now();
  await waitFor(
    () => {
      if (subscriber.received.length !== last) {
        last = subscriber.received.length;
        changedAt = Date.now();
      }
      return last > 0 && Date.now() - changedAt > 1000;
    },
    20_000,
    'the retained messages to stop arriving',
    50,
  );
  const growth = peakResidentBytes(outpost.pid) - before;
  // Resident memory also contains garbage not yet collected and allocator slack, so the bound is
  // three quarters of the payload total: reading every matching payload at once peaked above it.
  expect(growth, `peak memory growth for a subscription matching ${MESSAGES} retained messages: ${megabytes(growth)}`).toBeLessThan(
    PAYLOAD_TOTAL * 0.75,
  );
  await endClient(subscriber.client);
}, 60_000);
