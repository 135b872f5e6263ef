#!/usr/bin/env node
// Benchmark of the SQLite store, run against the compiled broker as a child process on 127.0.0.1
// (build first: npm run build). It measures:
//   1. durable QoS 1 ingest: a pipelined MQTT 3.1.1 publisher sends 64-byte messages to a topic
//      with one persistent offline subscriber, and every PUBACK waits for the commit;
//   2. bytes written per message: write_bytes and wchar of the broker from /proc/<pid>/io, and the
//      sizes of the database and WAL files afterwards;
//   3. resident memory (VmRSS, VmHWM from /proc/<pid>/status) with many retained messages of
//      1 KiB and with many queued messages of 1 KiB for one offline session, while running and
//      after a restart.
// Linux only (it reads /proc). Usage:
//   node scripts/bench-store.mjs [--messages 20000] [--stored 100000] [--window 1000] [--synchronous full|normal] [--ingest-only]

import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import mqttPacket from 'mqtt-packet';

const { values: options } = parseArgs({
  options: {
    messages: { type: 'string', default: '20000' },
    stored: { type: 'string', default: '100000' },
    window: { type: 'string', default: '1000' },
    synchronous: { type: 'string', default: 'full' },
    'ingest-only': { type: 'boolean', default: false },
  },
});
const INGEST_MESSAGES = Number(options.messages);
const STORED_MESSAGES = Number(options.stored);
const WINDOW = Number(options.window);
const SYNCHRONOUS = options.synchronous;

const repoRoot = fileURLToPath(new URL('..', import.meta.url));
const mainScript = join(repoRoot, 'dist/cli/main.js');

/** Writes a configuration for a data directory and returns its path. */
function writeConfig(directory, persistence) {
  const path = join(directory, 'outpost.yaml');
  writeFileSync(
    path,
    [
      'listeners:',
      '  - host: 127.0.0.1',
      '    port: 0',
      `data_dir: ${JSON.stringify(join(directory, 'data'))}`,
      'log:',
      '  level: info',
      'sys:',
      '  interval_seconds: 0',
      'limits:',
      `  max_queued_messages: ${STORED_MESSAGES * 2}`,
      '  max_queued_bytes: 0',
      `  max_retained_messages: ${STORED_MESSAGES * 2}`,
      '  max_retained_bytes: 0',
      'persistence:',
      `  enabled: ${persistence}`,
      `  synchronous: ${SYNCHRONOUS}`,
      '',
    ].join('\n'),
  );
  return path;
}

/** Starts the broker and resolves with the child process and its port (from the `listening` log line). */
function startBroker(configPath) {
  const child = spawn(process.execPath, [mainScript, '-c', configPath], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  return new Promise((resolve, reject) => {
    child.stderr.setEncoding('utf8').on('data', (chunk) => {
      if (stderr.length < 1_000_000) stderr += chunk;
      const match = / listening .*\bport=(\d+)/.exec(stderr);
      if (match !== null) resolve({ child, port: Number(match[1]) });
    });
    child.once('exit', (code) => reject(new Error(`broker exited with ${code} before listening:\n${stderr}`)));
  });
}

function stopBroker(broker) {
  return new Promise((resolve) => {
    broker.child.once('exit', resolve);
    broker.child.kill('SIGTERM');
  });
}

function procField(pid, file, field) {
  const match = new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(readFileSync(`/proc/${pid}/${file}`, 'utf8'));
  return match === null ? 0 : Number(match[1]);
}

/** VmRSS and VmHWM in MiB. */
function memory(pid) {
  return { rss: procField(pid, 'status', 'VmRSS') / 1024, peak: procField(pid, 'status', 'VmHWM') / 1024 };
}

function fileSize(path) {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

/** An MQTT 3.1.1 client on a plain socket that resolves waiters by packet type. */
class Client {
  constructor(port) {
    this.socket = net.connect({ host: '127.0.0.1', port });
    this.socket.setNoDelay(true);
    this.parser = mqttPacket.parser({ protocolVersion: 4 });
    this.handlers = new Map();
    this.socket.on('data', (chunk) => this.parser.parse(chunk));
    this.parser.on('packet', (packet) => this.handlers.get(packet.cmd)?.(packet));
  }

  once(cmd) {
    return new Promise((resolve) => this.handlers.set(cmd, resolve));
  }

  send(packet) {
    this.socket.write(mqttPacket.generate(packet));
  }

  async connect(clientId, clean) {
    const connack = this.once('connack');
    this.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean, keepalive: 600, clientId });
    const packet = await connack;
    if (packet.returnCode !== 0) throw new Error(`CONNACK ${packet.returnCode}`);
  }

  async subscribe(topic) {
    const suback = this.once('suback');
    this.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic, qos: 1 }] });
    await suback;
  }

  async disconnect() {
    this.send({ cmd: 'disconnect' });
    this.socket.end();
    await new Promise((resolve) => this.socket.once('close', resolve));
  }

  /**
   * Publishes `count` QoS 1 messages with at most WINDOW awaiting PUBACK; resolves with the
   * elapsed milliseconds once the last PUBACK arrived.
   */
  publishPipelined(count, topicOf, payloadOf) {
    return new Promise((resolve) => {
      let sent = 0;
      let acknowledged = 0;
      let outstanding = 0;
      const start = process.hrtime.bigint();
      const fill = () => {
        const packets = [];
        while (outstanding < WINDOW && sent < count) {
          const index = sent++;
          outstanding++;
          packets.push(mqttPacket.generate({ cmd: 'publish', topic: topicOf(index), payload: payloadOf(index), qos: 1, messageId: (index % 65_535) + 1, retain: this.retain, dup: false }));
        }
        if (packets.length > 0) this.socket.write(Buffer.concat(packets));
      };
      this.handlers.set('puback', () => {
        outstanding--;
        acknowledged++;
        if (acknowledged === count) {
          resolve(Number(process.hrtime.bigint() - start) / 1e6);
          return;
        }
        fill();
      });
      fill();
    });
  }
}

async function offlineSession(port, clientId, topic) {
  const subscriber = new Client(port);
  await subscriber.connect(clientId, false);
  await subscriber.subscribe(topic);
  await subscriber.disconnect();
}

async function publishMany(port, count, topicOf, payloadOf, retain) {
  const publisher = new Client(port);
  publisher.retain = retain;
  await publisher.connect('bench-publisher', true);
  const elapsedMs = await publisher.publishPipelined(count, topicOf, payloadOf);
  await publisher.disconnect();
  return elapsedMs;
}

function settle(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function ingest() {
  const directory = mkdtempSync(join(tmpdir(), 'outpost-bench-'));
  try {
    const broker = await startBroker(writeConfig(directory, true));
    await offlineSession(broker.port, 'bench-offline', 'bench/t');
    const before = { write: procField(broker.child.pid, 'io', 'write_bytes'), wchar: procField(broker.child.pid, 'io', 'wchar') };
    const payload = Buffer.alloc(64, 'x');
    const elapsedMs = await publishMany(broker.port, INGEST_MESSAGES, () => 'bench/t', () => payload, false);
    const after = { write: procField(broker.child.pid, 'io', 'write_bytes'), wchar: procField(broker.child.pid, 'io', 'wchar') };
    const dbPath = join(directory, 'data', 'outpost.db');
    const files = { db: fileSize(dbPath), wal: fileSize(`${dbPath}-wal`) };
    await stopBroker(broker);
    return {
      messages: INGEST_MESSAGES,
      seconds: elapsedMs / 1000,
      perSecond: Math.round(INGEST_MESSAGES / (elapsedMs / 1000)),
      writeBytesPerMessage: Math.round((after.write - before.write) / INGEST_MESSAGES),
      wcharPerMessage: Math.round((after.wchar - before.wchar) / INGEST_MESSAGES),
      databaseBytes: files.db,
      walBytes: files.wal,
    };
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
}

/** RSS of an idle broker, with STORED_MESSAGES stored, and after a restart on the same data. */
async function residentMemory(kind, persistence) {
  const directory = mkdtempSync(join(tmpdir(), 'outpost-bench-'));
  try {
    const configPath = writeConfig(directory, persistence);
    const broker = await startBroker(configPath);
    await settle(500);
    const empty = memory(broker.child.pid);
    const payload = Buffer.alloc(1024, 'p');
    if (kind === 'retained') {
      await publishMany(broker.port, STORED_MESSAGES, (i) => `bench/retained/${i}`, () => payload, true);
    } else {
      await offlineSession(broker.port, 'bench-offline', 'bench/queued');
      await publishMany(broker.port, STORED_MESSAGES, () => 'bench/queued', () => payload, false);
    }
    await settle(1000);
    const loaded = memory(broker.child.pid);
    await stopBroker(broker);
    if (!persistence) return { kind, persistence, empty, loaded, restarted: null };
    const again = await startBroker(configPath);
    await settle(1000);
    const restarted = memory(again.child.pid);
    await stopBroker(again);
    return { kind, persistence, empty, loaded, restarted };
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
}

function mib(value) {
  return `${value.toFixed(1)} MiB`;
}

const result = await ingest();
console.log(`durable QoS 1 ingest (synchronous=${SYNCHRONOUS}, window ${WINDOW}, ${result.messages} messages of 64 bytes, one offline persistent subscriber):`);
console.log(`  ${result.perSecond} messages/s (${result.seconds.toFixed(2)} s)`);
console.log(`  write_bytes ${result.writeBytesPerMessage} B/message, wchar ${result.wcharPerMessage} B/message`);
console.log(`  outpost.db ${result.databaseBytes} B, outpost.db-wal ${result.walBytes} B after the run`);

const memoryCases = options['ingest-only'] ? [] : [['retained', true], ['queued', true], ['retained', false]];
for (const [kind, persistence] of memoryCases) {
  const memoryResult = await residentMemory(kind, persistence);
  const label = `${STORED_MESSAGES} ${kind} messages of 1 KiB${persistence ? '' : ', persistence off'}`;
  console.log(`RSS with ${label}:`);
  console.log(`  empty ${mib(memoryResult.empty.rss)}, loaded ${mib(memoryResult.loaded.rss)} (peak ${mib(memoryResult.loaded.peak)})`);
  if (memoryResult.restarted !== null) {
    console.log(`  after restart ${mib(memoryResult.restarted.rss)} (peak ${mib(memoryResult.restarted.peak)})`);
  }
}
