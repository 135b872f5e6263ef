// End-to-end tests of the operations side of the `outpost` command: `outpost status` against a
// running process, and SIGTERM's graceful, bounded stop. They run the compiled dist/cli/main.js,
// which `npm test` builds first; after editing src/, run `npx tsc -p tsconfig.json`.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import mqttPacket from 'mqtt-packet';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { connectMqttJs, endMqttJs } from './helpers/broker.js';
import { onceWithTimeout, waitFor, withTimeout } from './helpers/wait.js';

const repoRoot = fileURLToPath(new URL('..', import.meta.url));
const mainScript = join(repoRoot, 'dist/cli/main.js');

/** The stop bound in src/cli/main.ts plus room for a loaded test machine. */
const STOP_BOUND_MS = 12_000;

interface Outcome {
  code: number | null;
  stdout: string;
  stderr: string;
}

interface Gateway {
  child: ChildProcess;
  mqttPort: number;
  /** Port of the operations endpoint, or 0 when it is off. */
  httpPort: number;
  stderr(): string;
  exited: Promise<Outcome>;
}

const started: ChildProcess[] = [];
let directory = '';

beforeEach(() => {
  if (!existsSync(mainScript)) throw new Error(`${mainScript} not found; run npx tsc -p tsconfig.json first`);
  directory = mkdtempSync(join(tmpdir(), 'outpost-ops-cli-'));
});

afterEach(() => {
  for (const child of started.splice(0)) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
  rmSync(directory, { recursive: true, force: true });
});

function writeConfig(http: boolean, extra = ''): string {
  const path = join(directory, 'outpost.yaml');
  const lines = [
    'listeners:',
    '  - {name: main, host: 127.0.0.1, port: 0}',
    `data_dir: ${JSON.stringify(join(directory, 'data'))}`,
    'sys: {interval_seconds: 0}',
    `http: {enabled: ${http}, host: 127.0.0.1, port: 0}`,
    extra,
  ];
  writeFileSync(path, `${lines.join('\n')}\n`);
  return path;
}

function spawnOutpost(args: string[]): ChildProcess {
  const child = spawn(process.execPath, [mainScript, ...args], { cwd: repoRoot, env: { ...process.env, JOURNAL_STREAM: undefined } });
  started.push(child);
  return child;
}

function collect(child: ChildProcess): { output: { stdout: string; stderr: string }; exited: Promise<Outcome> } {
  const output = { stdout: '', stderr: '' };
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (output.stdout += chunk));
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (output.stderr += chunk));
  const exited = new Promise<Outcome>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout: output.stdout, stderr: output.stderr }));
  });
  return { output, exited };
}

/** Starts the gateway and resolves once the MQTT listener (and the endpoint, when on) logged their ports. */
async function startGateway(configPath: string, http: boolean): Promise<Gateway> {
  const child = spawnOutpost(['-c', configPath]);
  const { output, exited } = collect(child);
  await withTimeout(
    Promise.race([
      waitFor(() => /broker started/.test(output.stderr) && (!http || /operations endpoint listening/.test(output.stderr)), 10_000, 'outpost to start', 20),
      exited.then((outcome) => {
        throw new Error(`outpost exited with ${outcome.code} before it started; stderr:\n${outcome.stderr}`);
      }),
    ]),
    11_000,
    'outpost to start',
  );
  const mqttPort = Number(/ listening listener=main .*\bport=(\d+)/.exec(output.stderr)?.[1]);
  const httpPort = http ? Number(/operations endpoint listening .*\bport=(\d+)/.exec(output.stderr)?.[1]) : 0;
  return { child, mqttPort, httpPort, stderr: () => output.stderr, exited };
}

function runOutpost(args: string[]): Promise<Outcome> {
  return collect(spawnOutpost(args)).exited;
}

describe('outpost status', () => {
  it('prints a summary of a running gateway', async () => {
    const gateway = await startGateway(writeConfig(true), true);
    const client = await connectMqttJs(`mqtt://127.0.0.1:${gateway.mqttPort}`, { clientId: 'status-reader' });
    await client.subscribeAsync('plant/#', { qos: 1 });
    await client.publishAsync('plant/temp', '21.5', { qos: 1 });

    const outcome = await runOutpost(['status', '--url', `http://127.0.0.1:${gateway.httpPort}`]);
    expect(outcome.stderr).toBe('');
    expect(outcome.code).toBe(0);
    expect(outcome.stdout).toMatch(/^Outpost \d+\.\d+\.\d+, pid \d+, up /);
    expect(outcome.stdout).toContain('Health:    ok');
    expect(outcome.stdout).toMatch(new RegExp(`main +mqtt +127\\.0\\.0\\.1:${gateway.mqttPort} +1 connection\\n`));
    expect(outcome.stdout).toContain('Clients:   1 connected');
    expect(outcome.stdout).toContain('1 subscription');
    expect(outcome.stdout).toContain('in 1 (QoS 0: 0, QoS 1: 1, QoS 2: 0)');
    expect(outcome.stdout).toContain('Store:     ');
    expect(outcome.stdout).toContain('Bridges:   none');
    expect(outcome.stdout).toContain('Devices:   none');
    await endMqttJs(client);
  });

  it('reads the address from the config file', async () => {
    // A fixed port is needed here, because status reads it from the file: take the one the
    // system picked for a first run and start again on it.
    const first = await startGateway(writeConfig(true), true);
    const port = first.httpPort;
    first.child.kill('SIGTERM');
    await first.exited;
    const configPath = join(directory, 'fixed.yaml');
    writeFileSync(configPath, writeConfigText(port));
    await startGateway(configPath, true);

    const outcome = await runOutpost(['status', '-c', configPath]);
    expect(outcome.code).toBe(0);
    expect(outcome.stdout).toContain('Health:    ok');
  });

  it('explains when the endpoint is off', async () => {
    const outcome = await runOutpost(['status', '-c', writeConfig(false)]);
    expect(outcome.code).toBe(1);
    expect(outcome.stderr).toContain('http.enabled is false in');
  });

  it('fails when nothing listens', async () => {
    const gateway = await startGateway(writeConfig(true), true);
    gateway.child.kill('SIGTERM');
    await gateway.exited;
    const outcome = await runOutpost(['status', '--url', `http://127.0.0.1:${gateway.httpPort}`]);
    expect(outcome.code).toBe(1);
    expect(outcome.stderr).toContain(`cannot read http://127.0.0.1:${gateway.httpPort}/status: ECONNREFUSED`);
  });

  it('rejects -p with a usage error', async () => {
    const outcome = await runOutpost(['status', '-p', '1883']);
    expect(outcome.code).toBe(2);
    expect(outcome.stderr).toContain('option -p does not apply to status');
  });
});

function writeConfigText(httpPort: number): string {
  return [
    'listeners:',
    '  - {name: main, host: 127.0.0.1, port: 0}',
    `data_dir: ${JSON.stringify(join(directory, 'data'))}`,
    'sys: {interval_seconds: 0}',
    `http: {enabled: true, host: 127.0.0.1, port: ${httpPort}}`,
    '',
  ].join('\n');
}

/** Opens a raw MQTT 3.1.1 connection that subscribes to `filter` and then never reads its socket. */
async function stalledSubscriber(port: number, filter: string): Promise<Socket> {
  const socket = connect({ host: '127.0.0.1', port });
  socket.on('error', () => undefined);
  await onceWithTimeout(socket, 'connect');
  socket.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'stalled', clean: true, keepalive: 0 }));
  socket.write(mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: filter, qos: 1 }] }));
  await onceWithTimeout(socket, 'data');
  socket.pause();
  return socket;
}

describe('SIGTERM', () => {
  it('stops gracefully within the bound', async () => {
    const configPath = writeConfig(false);
    const gateway = await startGateway(configPath, false);
    const url = `mqtt://127.0.0.1:${gateway.mqttPort}`;

    // A v5 client that must hear DISCONNECT 0x8B (Server shutting down).
    const v5 = await connectMqttJs(url, { clientId: 'v5-client', protocolVersion: 5 });
    const disconnect = onceWithTimeout(v5, 'disconnect', STOP_BOUND_MS);
    // A client whose will is due at shutdown: retained, so it is in the database afterwards.
    const withWill = await connectMqttJs(url, {
      clientId: 'will-client',
      protocolVersion: 5,
      will: { topic: 'status/will-client', payload: Buffer.from('gone'), qos: 1, retain: true },
    });
    // A subscriber that stopped reading while a backlog is queued for it.
    const stalled = await stalledSubscriber(gateway.mqttPort, 'load/#');
    const publisher = await connectMqttJs(url, { clientId: 'loader' });
    for (let i = 0; i < 200; i++) publisher.publish('load/x', Buffer.alloc(8192), { qos: 1 });
    await new Promise((resolve) => setTimeout(resolve, 300));

    const stopStart = Date.now();
    gateway.child.kill('SIGTERM');
    const [packet] = (await disconnect) as [{ reasonCode?: number }];
    expect(packet.reasonCode).toBe(0x8b);
    const outcome = await withTimeout(gateway.exited, STOP_BOUND_MS, 'outpost to exit after SIGTERM');
    expect(Date.now() - stopStart).toBeLessThan(STOP_BOUND_MS);
    expect(outcome.code).toBe(0);
    expect(outcome.stderr).toContain('stopping signal=SIGTERM');
    expect(outcome.stderr).toContain('broker stopped');
    stalled.destroy();
    v5.end(true);
    withWill.end(true);
    publisher.end(true);

    // The will reached the database: a new start on the same data returns it as retained.
    const restarted = await startGateway(configPath, false);
    const reader = await connectMqttJs(`mqtt://127.0.0.1:${restarted.mqttPort}`, { clientId: 'will-reader' });
    const message = onceWithTimeout(reader, 'message', 5000);
    await reader.subscribeAsync('status/will-client', { qos: 1 });
    const [topic, payload] = (await message) as [string, Buffer];
    expect(topic).toBe('status/will-client');
    expect(payload.toString()).toBe('gone');
    await endMqttJs(reader);
  });
});

describe('SIGHUP', () => {
  it('applies the log level and lists restart keys', async () => {
    const configPath = writeConfig(false);
    const gateway = await startGateway(configPath, false);
    writeFileSync(configPath, `${[
      'listeners:',
      '  - {name: main, host: 127.0.0.1, port: 0, max_connections: 5}',
      `data_dir: ${JSON.stringify(join(directory, 'data'))}`,
      'sys: {interval_seconds: 0}',
      'http: {enabled: false, host: 127.0.0.1, port: 0}',
      'log: {level: debug}',
    ].join('\n')}\n`);
    gateway.child.kill('SIGHUP');
    await waitFor(() => gateway.stderr().includes('changed settings take effect only after a restart'), 5000, 'the reload log lines');
    expect(gateway.stderr()).toContain('configuration reloaded applied="log.level info -> debug"');
    expect(gateway.stderr()).toContain('keys=listeners.0.max_connections');

    // Debug lines appear from now on, such as the one for a will: a forced close without
    // DISCONNECT publishes it.
    const will = { topic: 'wills/after-reload', payload: Buffer.from('gone'), qos: 0 as const, retain: false };
    const client = await connectMqttJs(`mqtt://127.0.0.1:${gateway.mqttPort}`, { clientId: 'after-reload', will });
    client.end(true);
    await waitFor(() => / DEBUG publishing will client_id=after-reload/.test(gateway.stderr()), 5000, 'the debug line of the will');
    expect(gateway.child.exitCode).toBeNull();
  });

  it('rejects an invalid file and keeps running', async () => {
    const configPath = writeConfig(false);
    const gateway = await startGateway(configPath, false);
    writeFileSync(configPath, 'log: {level: loud}\n');
    gateway.child.kill('SIGHUP');
    await waitFor(() => gateway.stderr().includes('configuration not reloaded'), 5000, 'the reload error');
    expect(gateway.stderr()).toMatch(/ERROR configuration not reloaded: the file has problems; the running settings stay in use problems=.*log\.level/);
    const client = await connectMqttJs(`mqtt://127.0.0.1:${gateway.mqttPort}`, { clientId: 'still-running' });
    await endMqttJs(client);
  });
});
