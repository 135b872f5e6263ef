// Runs Debian's mosquitto as the "cloud" broker of bridge tests and of the field scenario: one
// process per instance, on 127.0.0.1 with a free port, stopped by its PID. Also a counting
// subscriber for the cloud side. It imports nothing from src/, so `npm run demo` can run it
// compiled outside the test runner.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';

import { delay, withTimeout } from './wait.js';

const MOSQUITTO = '/usr/sbin/mosquitto';

/** Returns a TCP port that was free on 127.0.0.1 a moment ago. */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('no port from a server bound to port 0');
  return address.port;
}

export interface RemoteMosquittoOptions {
  /** Keep sessions and queued messages across a stop and start (written at a SIGTERM stop). */
  persistence?: boolean;
  /** A TLS listener instead of plain TCP. */
  tls?: { caFile: string; certFile: string; keyFile: string; requireCertificate: boolean };
  /** Extra mosquitto.conf lines. */
  extraLines?: string[];
}

/** One mosquitto process and its configuration directory. */
export class RemoteMosquitto {
  readonly port: number;
  readonly dir: string;
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();
  private output = '';

  private constructor(port: number, dir: string) {
    this.port = port;
    this.dir = dir;
  }

  /** Writes a configuration for a free port; `start()` runs it. */
  static async create(options: RemoteMosquittoOptions = {}): Promise<RemoteMosquitto> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'outpost-remote-'));
    const port = await freePort();
    const lines = [
      `listener ${port} 127.0.0.1`,
      'allow_anonymous true',
      // Run as root, mosquitto switches to the user `mosquitto`, which cannot write the
      // persistence file into this test's directory; naming the current user keeps it.
      `user ${os.userInfo().username}`,
      `persistence ${options.persistence === true ? 'true' : 'false'}`,
      `persistence_location ${dir}/`,
      // No bound on messages queued for an offline subscriber, so counts are exact.
      'max_queued_messages 0',
      'log_dest stderr',
      'log_type error',
      'log_type warning',
    ];
    if (options.tls !== undefined) {
      lines.push(`cafile ${options.tls.caFile}`, `certfile ${options.tls.certFile}`, `keyfile ${options.tls.keyFile}`);
      lines.push(`require_certificate ${options.tls.requireCertificate ? 'true' : 'false'}`);
    }
    lines.push(...(options.extraLines ?? []));
    await writeFile(path.join(dir, 'mosquitto.conf'), `${lines.join('\n')}\n`);
    return new RemoteMosquitto(port, dir);
  }

  /** Creates and starts an instance. */
  static async start(options: RemoteMosquittoOptions = {}): Promise<RemoteMosquitto> {
    const remote = await RemoteMosquitto.create(options);
    await remote.start();
    return remote;
  }

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  get stderr(): string {
    return this.output;
  }

  /** Starts mosquitto and resolves once its port accepts TCP connections. */
  async start(timeoutMs = 5000): Promise<void> {
    if (this.child !== null) return;
    const child = spawn(MOSQUITTO, ['-c', path.join(this.dir, 'mosquitto.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    child.stderr?.setEncoding('utf8').on('data', (text: string) => {
      this.output += text;
    });
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`mosquitto exited with code ${child.exitCode}:\n${this.output}`);
      if (await canConnect(this.port)) return;
      if (Date.now() > deadline) throw new Error(`mosquitto did not listen on port ${this.port} within ${timeoutMs} ms:\n${this.output}`);
      await delay(20);
    }
  }

  /** Stops mosquitto by its PID (SIGTERM saves persistence; SIGKILL does not) and waits for the exit. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const child = this.child;
    if (child === null) return;
    this.child = null;
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    await withTimeout(this.exited, 5000, `mosquitto (pid ${child.pid}) to exit`);
  }

  /** Stops the process and deletes the directory. */
  async remove(): Promise<void> {
    await this.stop('SIGKILL');
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** Resolves with whether a TCP connection to 127.0.0.1:`port` succeeds. */
export function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** What a counting subscriber saw, compared with what was published. */
export interface DeliveryReport {
  received: number;
  /** Expected payloads that never arrived. */
  missing: string[];
  /** Copies beyond the first of a payload. */
  duplicates: number;
  /** Expected payloads whose first copy arrived after that of a later one. */
  outOfOrder: number;
}

/**
 * A subscriber on the remote broker with a persistent session (clean session off, QoS 1), so it
 * also collects what arrives while it is reconnecting after a restart of a persistent remote.
 */
export class RemoteCounter {
  readonly payloads: string[] = [];
  readonly topics: string[] = [];
  /** The `outpost-message-id` user property of each message (MQTT 5 only), '' when absent. */
  readonly messageIds: string[] = [];
  readonly client: MqttClient;

  private constructor(client: MqttClient) {
    this.client = client;
    client.on('message', (topic, payload, packet) => {
      this.topics.push(topic);
      this.payloads.push(payload.toString());
      const id = packet.properties?.userProperties?.['outpost-message-id'];
      this.messageIds.push(typeof id === 'string' ? id : '');
    });
  }

  static async connect(url: string, filter: string, options: IClientOptions = {}): Promise<RemoteCounter> {
    const client = mqtt.connect(url, {
      clientId: `counter-${Math.random().toString(16).slice(2, 10)}`,
      clean: false,
      reconnectPeriod: 100,
      connectTimeout: 2000,
      ...options,
    });
    client.on('error', () => undefined);
    await withTimeout(new Promise<void>((resolve) => client.once('connect', () => resolve())), 5000, `the counting subscriber to connect to ${url}`);
    await client.subscribeAsync(filter, { qos: 1 });
    return new RemoteCounter(client);
  }

  /** Resolves once every expected payload arrived at least once. */
  async waitForAll(expected: readonly string[], timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const seen = new Set(this.payloads);
      const missing = expected.filter((payload) => !seen.has(payload));
      if (missing.length === 0) return;
      if (Date.now() > deadline) {
        throw new Error(`timed out after ${timeoutMs} ms: ${missing.length} of ${expected.length} messages missing, first ${missing.slice(0, 5).join(', ')}`);
      }
      await delay(25);
    }
  }

  report(expected: readonly string[]): DeliveryReport {
    const firstIndex = new Map<string, number>();
    let duplicates = 0;
    this.payloads.forEach((payload, index) => {
      if (firstIndex.has(payload)) duplicates++;
      else firstIndex.set(payload, index);
    });
    const missing = expected.filter((payload) => !firstIndex.has(payload));
    let outOfOrder = 0;
    let last = -1;
    for (const payload of expected) {
      const index = firstIndex.get(payload);
      if (index === undefined) continue;
      if (index < last) outOfOrder++;
      else last = index;
    }
    return { received: this.payloads.length, missing, duplicates, outOfOrder };
  }

  async close(): Promise<void> {
    await this.client.endAsync(true);
  }
}
