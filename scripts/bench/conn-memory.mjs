// Measures the memory one idle MQTT connection costs inside Outpost: the JavaScript heap (after a
// full garbage collection) and RSS, per connection, with N clients connected from a child process.
//
// usage: node --expose-gc scripts/bench/conn-memory.mjs [N]   (build first with npm run build)
import { fork } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { Broker } from '../../dist/broker/broker.js';
import { defaultConfig } from '../../dist/config/defaults.js';
import { silentLogger } from '../../dist/service/logger.js';

const count = Number(process.argv[2] ?? 5000);
if (process.argv[2] === '--client') {
  // The child: opens the connections with a raw MQTT 3.1.1 CONNECT and keeps them open.
  const net = await import('node:net');
  const [port, n] = [Number(process.argv[3]), Number(process.argv[4])];
  const sockets = [];
  for (let index = 0; index < n; index++) {
    await new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1', () => {
        const id = Buffer.from(`idle-${index}`);
        const body = Buffer.concat([Buffer.from([0, 4, 77, 81, 84, 84, 4, 2, 0, 0, 0, id.length]), id]);
        socket.write(Buffer.concat([Buffer.from([0x10, body.length]), body]));
      });
      socket.once('data', resolve);
      sockets.push(socket);
    });
  }
  process.send?.('connected');
  setInterval(() => undefined, 60_000);
} else {
  if (typeof globalThis.gc !== 'function') throw new Error('run with node --expose-gc');
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'outpost-conn-memory-'));
  const config = defaultConfig();
  config.listeners = [{ ...config.listeners[0], port: 0, max_connections: count + 10 }];
  config.limits = { ...config.limits, max_connections: count + 10 };
  config.sys = { ...config.sys, interval_seconds: 0 };
  config.data_dir = dataDir;
  const broker = new Broker(config, silentLogger());
  await broker.start();
  const port = broker.listenerAddresses()[0].port;
  const measure = () => {
    globalThis.gc();
    const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
    return { heap: process.memoryUsage().heapUsed, rss };
  };
  await new Promise((resolve) => setTimeout(resolve, 500));
  const before = measure();
  const child = fork(new URL(import.meta.url).pathname, ['--client', String(port), String(count)]);
  await new Promise((resolve) => child.once('message', resolve));
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const after = measure();
  console.log(`${count} idle connections: heap ${((after.heap - before.heap) / count).toFixed(0)} bytes each, RSS ${((after.rss - before.rss) / count).toFixed(0)} bytes each`);
  child.kill();
  await broker.stop();
  await rm(dataDir, { recursive: true, force: true });
}
