#!/usr/bin/env node
// Benchmark of the bridge outbox. The ingest rate is that of QoS 1 publishes acknowledged by
// Outpost while the remote broker is down, so every message is written to the outbox. The drain
// rate is that of the backlog sent to a local Debian mosquitto and acknowledged by it. Everything
// runs on 127.0.0.1.
//
//   npm run build && node scripts/bench-bridge.mjs [--messages 100000] [--size 200]
//       [--protocol 5|3.1.1] [--inflight 100] [--remote-inflight 20] [--batch 500] [--window 1000]
//
// --inflight is the bridge's drain.max_inflight, --remote-inflight mosquitto's
// max_inflight_messages (its Receive Maximum toward MQTT 5 clients; 20 is mosquitto's default),
// --window the number of publishes the test client keeps unacknowledged.

import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import mqtt from 'mqtt';

import { BridgeManager } from '../dist/bridge/index.js';
import { Broker } from '../dist/broker/broker.js';
import { parseConfig } from '../dist/config/load.js';
import { Logger } from '../dist/service/logger.js';

const { values: options } = parseArgs({
  options: {
    messages: { type: 'string', default: '100000' },
    size: { type: 'string', default: '200' },
    protocol: { type: 'string', default: '5' },
    inflight: { type: 'string', default: '100' },
    'remote-inflight': { type: 'string', default: '20' },
    batch: { type: 'string', default: '500' },
    window: { type: 'string', default: '1000' },
  },
});
const messageCount = Number(options.messages);
const payloadSize = Number(options.size);
const publishWindow = Number(options.window);

async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function waitUntil(predicate, timeoutMs, description) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${description}`);
    await sleep(1);
  }
}

const dir = await mkdtemp(path.join(os.tmpdir(), 'outpost-bench-bridge-'));
const remotePort = await freePort();
const mosquittoConf = path.join(dir, 'mosquitto.conf');
await writeFile(
  mosquittoConf,
  [`listener ${remotePort} 127.0.0.1`, 'allow_anonymous true', `max_inflight_messages ${options['remote-inflight']}`, `user ${os.userInfo().username}`, 'log_dest stderr', 'log_type error', ''].join('\n'),
);

const config = parseConfig(
  [
    'listeners:',
    '  - host: 127.0.0.1',
    '    port: 0',
    `data_dir: ${JSON.stringify(path.join(dir, 'data'))}`,
    'sys:',
    '  interval_seconds: 0',
    'bridges:',
    '  - name: bench',
    `    addresses: ["127.0.0.1:${remotePort}"]`,
    `    protocol_version: "${options.protocol}"`,
    '    topics:',
    '      - pattern: "#"',
    '        qos: 1',
    '        remote_prefix: cloud/',
    '    drain:',
    `      max_inflight: ${options.inflight}`,
    `      batch_size: ${options.batch}`,
    '    reconnect:',
    '      base_ms: 20',
    '      max_ms: 50',
    '',
  ].join('\n'),
  'bench.yaml',
);

const broker = new Broker(config, new Logger('warn'));
await broker.start();
const bridges = new BridgeManager(broker, config.bridges, broker.logger);
bridges.start();
const bridge = bridges.bridges[0];
const port = broker.listenerAddresses()[0].port;
let mosquitto = null;

try {
  // Ingest: the remote is down, so every acknowledged publish is a committed outbox row.
  const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, { reconnectPeriod: 0 });
  await new Promise((resolve, reject) => {
    client.once('connect', resolve);
    client.once('error', reject);
  });
  const payload = Buffer.alloc(payloadSize, 0x61);
  const ingestStart = process.hrtime.bigint();
  let sent = 0;
  let acknowledged = 0;
  await new Promise((resolve, reject) => {
    const pump = () => {
      while (sent < messageCount && sent - acknowledged < publishWindow) {
        sent++;
        client.publish('meter/1', payload, { qos: 1 }, (error) => {
          if (error) {
            reject(error);
            return;
          }
          acknowledged++;
          if (acknowledged === messageCount) resolve();
          else pump();
        });
      }
    };
    pump();
  });
  const ingestSeconds = Number(process.hrtime.bigint() - ingestStart) / 1e9;
  await new Promise((resolve) => client.end(false, {}, resolve));
  const backlog = bridge.metrics().backlogMessages;
  if (backlog !== messageCount) throw new Error(`expected ${messageCount} messages in the outbox, found ${backlog}`);

  // Drain: start mosquitto and time from CONNACK to an empty outbox.
  mosquitto = spawn('/usr/sbin/mosquitto', ['-c', mosquittoConf], { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitUntil(() => bridge.metrics().connected, 10_000, 'the bridge to connect');
  const drainStart = process.hrtime.bigint();
  await waitUntil(() => bridge.metrics().backlogMessages === 0, 600_000, 'an empty outbox');
  const drainSeconds = Number(process.hrtime.bigint() - drainStart) / 1e9;
  const metrics = bridge.metrics();

  const result = {
    messages: messageCount,
    payload_bytes: payloadSize,
    protocol: options.protocol,
    bridge_max_inflight: Number(options.inflight),
    remote_max_inflight: Number(options['remote-inflight']),
    batch_size: Number(options.batch),
    ingest_seconds: Number(ingestSeconds.toFixed(2)),
    ingest_messages_per_second: Math.round(messageCount / ingestSeconds),
    drain_seconds: Number(drainSeconds.toFixed(2)),
    drain_messages_per_second: Math.round(messageCount / drainSeconds),
    sent: metrics.sent,
    acknowledged: metrics.acknowledged,
    node: process.version,
    cpu: os.cpus()[0]?.model ?? 'unknown',
    cpus: os.cpus().length,
  };
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
} finally {
  bridges.stop();
  await broker.stop();
  if (mosquitto !== null) {
    const exited = new Promise((resolve) => mosquitto.once('exit', resolve));
    mosquitto.kill('SIGTERM');
    await exited;
  }
  await rm(dir, { recursive: true, force: true });
}
