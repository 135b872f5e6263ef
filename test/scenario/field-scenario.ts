/**
 * The field scenario, end to end, with real parts on loopback. A pymodbus device with two units
 * sits on a pty pair and a serial-line sensor on a second pty. Outpost (the compiled dist/, as a
 * child process) polls them with persistence on and bridges to Debian's mosquitto as the cloud
 * broker, where a persistent MQTT 5 subscriber records what arrives.
 *
 * The run has five phases. Readings flow normally, then the cloud broker stops. Outpost is killed
 * with SIGKILL during the outage and started again. The Modbus adapter is unplugged and plugged
 * in again. Last, the cloud broker comes back and the backlog drains. The report compares every reading the device served and every
 * line the sensor sent with what reached the cloud. `npm run demo` and
 * test/field-scenario.test.ts both run it.
 */

import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { closeSync, openSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { createPtyPair, startRtuDevice, type DeviceSpec, type PtyPair, type ServedRead, type TestDevice } from '../fixtures/modbus-device.js';
import { OutpostProcess } from '../helpers/outpost-process.js';
import { freePort, RemoteCounter, RemoteMosquitto } from '../helpers/mosquitto-process.js';
import { delay, waitFor } from '../helpers/wait.js';

/** The gateway id the bridge puts in front of every message id. */
const GATEWAY_ID = 'gw-demo';
const REMOTE_PREFIX = `site/${GATEWAY_ID}/`;
/** Units on the Modbus bus, and the device names the configuration gives them. */
const METERS = [
  { unit: 1, name: 'meter-1', counterStart: 100 },
  { unit: 2, name: 'meter-2', counterStart: 5000 },
] as const;
/** Actions wait for this long without a Modbus read or a sensor line, so no reading is in flight. */
const QUIET_MS = 250;

export interface ScenarioOptions {
  /** Receives one line per step, for a person watching. */
  say?: (line: string) => void;
  /** Seconds each phase of the run lasts (normal flow, outage, after the restart, unplugged). */
  phaseSeconds?: number;
  /** Upper bound for the backlog to reach the cloud once it is back. */
  drainTimeoutMs?: number;
}

/** What reached the cloud for one topic, compared with what the field side produced. */
export interface TopicReport {
  topic: string;
  /** Readings the adapter took: reads the device served, or lines the sensor sent. */
  taken: number;
  /** Distinct readings that reached the cloud (copies with the same message id count once). */
  arrived: number;
  /** Readings taken that never arrived, as `value#occurrence`. */
  missing: string[];
  /** Readings whose first copy arrived after that of a later reading. */
  outOfOrder: number;
  /** Readings at the cloud that the field side never produced. */
  unexpected: string[];
}

export interface ScenarioReport {
  topics: TopicReport[];
  /** Messages at the cloud in all, copies included. */
  cloudMessages: number;
  /** Copies that carried a message id seen before: resent by the bridge after a lost PUBACK. */
  duplicatesById: number;
  /** The topics and ids of those copies. */
  duplicateIds: string[];
  /** Messages at the cloud without the message id property; 0 when every forwarded message has one. */
  withoutId: number;
  /** Availability payloads per device, in the order they reached the cloud. */
  availability: Record<string, string[]>;
  /**
   * Lines the sensor sent while Outpost was not running, and how many of them reached the cloud.
   * They were never taken: a serial port drops what arrives while no process has it open.
   */
  sensorWhileDown: { sent: number; arrived: number };
  backlog: { beforeKill: number; afterRestart: number; peak: number; final: number };
  /** The gateway's log lines that tell what happened, from both runs. */
  story: string[];
  /** The Outpost configuration of the run. */
  config: string;
  seconds: number;
}

/** Returns the configuration the scenario runs, which the README's walkthrough also shows. */
export function scenarioConfig(paths: { dataDir: string; bus: string; sensor: string; mqttPort: number; httpPort: number; cloud: string }): string {
  return `listeners:
  - name: local
    host: 127.0.0.1
    port: ${paths.mqttPort}
data_dir: ${JSON.stringify(paths.dataDir)}
http:
  enabled: true
  port: ${paths.httpPort}
field:
  topic_prefix: plant
  payload_format: json
  qos: 1
  buses:
    - name: rs485
      protocol: rtu
      path: ${JSON.stringify(paths.bus)}
      baud_rate: 19200
      timeout_ms: 500
      poll_interval_ms: 1000
      reconnect_min_ms: 200
      reconnect_max_ms: 1000
      offline_poll_max_ms: 2000
      devices:
${METERS.map(
  (meter) => `        - name: ${meter.name}
          unit_id: ${meter.unit}
          points:
            - { name: counter, address: "40001", type: uint16 }
            - { name: temperature, address: "40002", type: float32, unit: °C }`,
).join('\n')}
  serial_lines:
    - name: weather
      path: ${JSON.stringify(paths.sensor)}
      baud_rate: 19200
      reconnect_min_ms: 200
      reconnect_max_ms: 1000
      rules:
        - format: key_value
bridges:
  - name: cloud
    addresses: [${JSON.stringify(paths.cloud)}]
    protocol_version: "5"
    client_id: ${GATEWAY_ID}
    topics:
      - { pattern: "#", direction: out, qos: 1, local_prefix: plant/, remote_prefix: ${REMOTE_PREFIX} }
    message_id:
      enabled: true
    reconnect:
      base_ms: 250
      max_ms: 1000
`;
}

interface CloudMessage {
  topic: string;
  payload: string;
  id: string;
}

/** Writes `SEQ=<n> T=<value>` lines to the sensor end of a pty pair once a second. */
class SerialSensor {
  /** Each line sent: its sequence number, temperature and Date.now(). */
  readonly sent: { seq: number; temperature: number; at: number }[] = [];
  private readonly fd: number;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(devicePath: string) {
    this.fd = openSync(devicePath, 'r+');
  }

  start(): void {
    this.timer = setInterval(() => this.send(), 1000);
  }

  private send(): void {
    const seq = this.sent.length + 1;
    // The temperature differs in every line, so each reading is unique.
    const temperature = (15 + seq / 10).toFixed(1);
    writeSync(this.fd, `SEQ=${seq} T=${temperature}\r\n`);
    this.sent.push({ seq, temperature: Number(temperature), at: Date.now() });
  }

  get lastAt(): number {
    return this.sent.at(-1)?.at ?? 0;
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    if (!this.closed) closeSync(this.fd);
    this.closed = true;
  }
}

/** Reads the gateway's backlog gauge and the device gauges from /metrics every 200 ms. */
class MetricsWatcher {
  backlog = 0;
  peak = 0;
  reachable = false;
  readonly online = new Map<string, boolean>();
  private timer: NodeJS.Timeout | null = null;
  private busy = false;

  constructor(private readonly httpPort: number) {}

  start(): void {
    this.timer = setInterval(() => void this.poll(), 200);
  }

  private async poll(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      const response = await fetch(`http://127.0.0.1:${this.httpPort}/metrics`, { signal: AbortSignal.timeout(1000) });
      const text = await response.text();
      this.reachable = true;
      const backlog = /^outpost_bridge_backlog_messages\{bridge="cloud"\} (\d+)$/m.exec(text);
      if (backlog !== null) {
        this.backlog = Number(backlog[1]);
        this.peak = Math.max(this.peak, this.backlog);
      }
      for (const match of text.matchAll(/^outpost_device_online\{[^}]*device="([^"]+)"[^}]*\} (\d)$/gm)) {
        this.online.set(match[1] ?? '', match[2] === '1');
      }
    } catch {
      // Outpost is down (killed on purpose) or busy; the next poll tries again.
      this.reachable = false;
    } finally {
      this.busy = false;
    }
  }

  /** Resolves once a fresh poll has run, so the gauges describe the present. */
  async refresh(): Promise<void> {
    while (this.busy) await delay(10);
    await this.poll();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }
}

/** Decodes the float32 in two registers, most significant word first. */
function float32(high: number, low: number): number {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt16BE(high, 0);
  buffer.writeUInt16BE(low, 2);
  return buffer.readFloatBE(0);
}

/** Gives each value its occurrence number (`21.5#0`, `21.5#1`, ...), so that equal readings stay distinct. */
function withOccurrences(values: readonly string[]): string[] {
  const seen = new Map<string, number>();
  return values.map((value) => {
    const count = seen.get(value) ?? 0;
    seen.set(value, count + 1);
    return `${value}#${count}`;
  });
}

/**
 * Compares the values a topic should carry, in order, with the first copies that arrived. Values
 * in `optional` may arrive or not: they are left out on both sides.
 */
function compareTopic(topic: string, expectedValues: readonly string[], arrivedValues: readonly string[], optional: ReadonlySet<string> = new Set()): TopicReport {
  const expected = withOccurrences(expectedValues.filter((value) => !optional.has(value)));
  const arrived = withOccurrences(arrivedValues.filter((value) => !optional.has(value)));
  const arrivedIndex = new Map(arrived.map((key, index) => [key, index]));
  const expectedSet = new Set(expected);
  let outOfOrder = 0;
  let last = -1;
  const missing: string[] = [];
  for (const key of expected) {
    const index = arrivedIndex.get(key);
    if (index === undefined) {
      missing.push(key);
      continue;
    }
    if (index < last) outOfOrder++;
    else last = index;
  }
  return {
    topic,
    taken: expected.length,
    arrived: arrived.length,
    missing,
    outOfOrder,
    unexpected: arrived.filter((key) => !expectedSet.has(key)),
  };
}

/** Returns the value of a JSON reading payload as text, or the payload itself when it is not JSON. */
function readingValue(payload: string): string {
  try {
    const parsed = JSON.parse(payload) as { value?: unknown };
    return String(parsed.value);
  } catch {
    return payload;
  }
}

/** Log messages that tell the story of the run; other lines stay out of the summary. */
const STORY = [
  /broker started/,
  /bridge connected/,
  /bridge connection lost/,
  /outbox has a backlog/,
  /device offline/,
  /device online/,
  /serial port (closed|opened|reopened|open failed)/,
  /bridge backlog sent/,
  /bridge could not connect/,
  /stopping|stopped/,
];

function storyLines(stderr: string): string[] {
  return stderr.split('\n').filter((line) => STORY.some((pattern) => pattern.test(line)));
}

/** Runs the scenario and returns what the cloud received, compared with what the field produced. */
export async function runFieldScenario(options: ScenarioOptions = {}): Promise<ScenarioReport> {
  const say = options.say ?? (() => undefined);
  const phaseMs = (options.phaseSeconds ?? 4) * 1000;
  const startedAt = Date.now();
  const cleanups: (() => Promise<void> | void)[] = [];
  const directory = await mkdtemp(path.join(os.tmpdir(), 'outpost-scenario-'));
  cleanups.push(() => rm(directory, { recursive: true, force: true }));

  try {
    // The cloud: Debian's mosquitto, persistence on, and a persistent subscriber.
    const cloud = await RemoteMosquitto.start({ persistence: true });
    cleanups.push(() => cloud.remove());
    // An MQTT 5 session that, with the messages queued for it, outlives a stop of the cloud broker.
    const subscriber = await RemoteCounter.connect(cloud.url, `${REMOTE_PREFIX}#`, {
      clientId: 'cloud-recorder',
      protocolVersion: 5,
      properties: { sessionExpiryInterval: 3600 },
      reconnectPeriod: 200,
    });
    cleanups.push(() => subscriber.close());
    say(`cloud broker: Debian's mosquitto on ${cloud.address}, a subscriber records ${REMOTE_PREFIX}#`);

    // The field: two units on an RS-485 bus (a pty pair) and a line-based sensor on another.
    const busDir = path.join(directory, 'bus');
    const sensorDir = path.join(directory, 'sensor');
    await Promise.all([mkdir(busDir), mkdir(sensorDir)]);
    const deviceSpec = (counters: Record<number, number>): DeviceSpec => ({
      units: Object.fromEntries(METERS.map((meter) => [meter.unit, { holding: { 0: counters[meter.unit] ?? 0, 1: 0x4190, 2: 0 } }])),
      tick: { interval_s: 1, units: Object.fromEntries(METERS.map((meter) => [meter.unit, { counter: 0, float: 1 }])) },
      log_values: true,
    });
    let busPty: PtyPair = await createPtyPair(busDir);
    let device: TestDevice = await startRtuDevice(busPty.devicePath, deviceSpec(Object.fromEntries(METERS.map((meter) => [meter.unit, meter.counterStart]))));
    const devices: TestDevice[] = [device];
    cleanups.push(async () => {
      await device.stop();
      await busPty.stop();
    });
    const sensorPty = await createPtyPair(sensorDir);
    cleanups.push(() => sensorPty.stop());
    const sensor = new SerialSensor(sensorPty.devicePath);
    cleanups.push(() => sensor.stop());
    sensor.start();
    say(`field: pymodbus units ${METERS.map((meter) => meter.unit).join(' and ')} on ${busPty.adapterPath}, a SEQ/T sensor on ${sensorPty.adapterPath}`);

    // The gateway.
    const mqttPort = await freePort();
    const httpPort = await freePort();
    const config = scenarioConfig({
      dataDir: path.join(directory, 'data'),
      bus: busPty.adapterPath,
      sensor: sensorPty.adapterPath,
      mqttPort,
      httpPort,
      cloud: cloud.address,
    });
    const configPath = path.join(directory, 'outpost.yaml');
    await writeFile(configPath, config);
    let gateway = await OutpostProcess.start(configPath, 20_000);
    const logs: string[] = [];
    cleanups.push(() => gateway.stop('SIGKILL'));
    const metrics = new MetricsWatcher(httpPort);
    metrics.start();
    cleanups.push(() => metrics.stop());
    say(`gateway: outpost pid ${gateway.pid}, MQTT on 127.0.0.1:${mqttPort}, /metrics on 127.0.0.1:${httpPort}`);

    /** Resolves at a moment with no Modbus read or sensor line in the last QUIET_MS. */
    const quietMoment = async (): Promise<void> => {
      // Polls and sensor lines come once a second, so the next ones are predictable.
      const quietAround = (lastAt: number, now: number): boolean => now - lastAt >= QUIET_MS && lastAt + 1000 - now >= QUIET_MS;
      await waitFor(
        () => {
          const now = Date.now();
          const lastReads = METERS.map((meter) => device.reads.filter((read) => read.unit === meter.unit).at(-1)?.at ?? 0);
          return quietAround(sensor.lastAt, now) && lastReads.every((lastAt) => quietAround(lastAt, now));
        },
        5000,
        'a moment without Modbus or sensor traffic',
      );
    };
    const countAt = (suffix: string): number => subscriber.topics.filter((topic) => topic.endsWith(suffix)).length;

    // 1. Normal flow.
    await waitFor(() => countAt('meter-2/counter') >= 3 && countAt('weather/SEQ') >= 3, phaseMs + 15_000, 'readings of both units and the sensor at the cloud', 50);
    say(`normal flow: ${subscriber.payloads.length} messages at the cloud so far`);

    // 2. The cloud broker stops; readings go on into the outbox.
    await cloud.stop('SIGTERM');
    say('outage: the cloud broker is stopped');
    await delay(phaseMs);
    await metrics.refresh();
    const beforeKill = metrics.backlog;
    say(`outage: ${beforeKill} messages wait in the outbox (outpost_bridge_backlog_messages)`);

    // 3. SIGKILL during the outage, then a restart on the same database.
    await quietMoment();
    logs.push(gateway.stderr);
    await gateway.stop('SIGKILL');
    const downFrom = Date.now();
    say(`kill -9: outpost pid ${gateway.pid} killed during the outage`);
    await delay(2000);
    gateway = await OutpostProcess.start(configPath, 20_000);
    await gateway.waitForLog(/serial port opened .*serial_line=weather/, 10_000);
    const downUntil = Date.now();
    await waitFor(() => metrics.reachable && metrics.backlog >= beforeKill, 10_000, 'the restarted gateway to report its backlog', 50);
    const afterRestart = metrics.backlog;
    say(`restart: outpost pid ${gateway.pid} found ${afterRestart} messages in the outbox and goes on`);
    await delay(phaseMs);

    // 4. The Modbus adapter is unplugged and plugged in again; the counters go on where they were.
    await quietMoment();
    const lastCounters = Object.fromEntries(METERS.map((meter) => [meter.unit, lastCounter(device.reads, meter.unit) ?? meter.counterStart]));
    await device.stop();
    await busPty.stop();
    say('unplug: the RS-485 adapter is gone');
    await waitFor(() => METERS.every((meter) => metrics.online.get(meter.name) === false), 10_000, 'both meters to be reported offline', 50);
    await delay(phaseMs / 2);
    busPty = await createPtyPair(busDir);
    device = await startRtuDevice(busPty.devicePath, deviceSpec(lastCounters));
    devices.push(device);
    say('replug: the adapter is back');
    await waitFor(() => METERS.every((meter) => metrics.online.get(meter.name) === true), 15_000, 'both meters to be reported online again', 50);
    await delay(phaseMs / 2);

    // 5. The cloud broker returns and the backlog drains.
    await metrics.refresh();
    const peak = metrics.peak;
    await cloud.start();
    say(`cloud back: draining ${metrics.backlog} messages`);
    const drainStartedAt = Date.now();
    await waitFor(() => metrics.backlog === 0, options.drainTimeoutMs ?? 30_000, 'the outbox to drain', 50);
    say(`drained in ${((Date.now() - drainStartedAt) / 1000).toFixed(1)} s`);

    // Stop producing, let the last readings arrive, then compare.
    sensor.stop();
    await device.stop();
    await delay(1500);
    await metrics.refresh();
    await waitFor(() => metrics.backlog === 0, 10_000, 'the outbox to drain after the last readings', 50);
    await delay(500);
    logs.push(gateway.stderr);
    await gateway.stop('SIGTERM');

    const messages = subscriber.topics.map((topic, index) => ({ topic, payload: subscriber.payloads[index] ?? '', id: subscriber.messageIds[index] ?? '' }));
    const report = buildReport(messages, devices, sensor, { downFrom, downUntil });
    return {
      ...report,
      backlog: { beforeKill, afterRestart, peak, final: metrics.backlog },
      story: logs.flatMap(storyLines),
      config,
      seconds: Math.round((Date.now() - startedAt) / 1000),
    };
  } finally {
    for (const cleanup of cleanups.splice(0).reverse()) {
      try {
        await cleanup();
      } catch {
        // Cleanup goes on with the next part; a part that failed to stop was already stopped.
      }
    }
  }
}

function lastCounter(reads: readonly ServedRead[], unit: number): number | undefined {
  const read = reads.filter((entry) => entry.unit === unit).at(-1);
  return read?.values[0];
}

function buildReport(
  messages: readonly CloudMessage[],
  devices: readonly TestDevice[],
  sensor: SerialSensor,
  down: { downFrom: number; downUntil: number },
): Omit<ScenarioReport, 'backlog' | 'story' | 'config' | 'seconds'> {
  // First copies only: a copy with a message id seen before is a resend of the same reading.
  const seenIds = new Set<string>();
  const duplicateIds: string[] = [];
  const firstCopies: CloudMessage[] = [];
  for (const message of messages) {
    if (message.id !== '' && seenIds.has(message.id)) {
      duplicateIds.push(`${message.topic} ${message.id}`);
      continue;
    }
    if (message.id !== '') seenIds.add(message.id);
    firstCopies.push(message);
  }
  const arrivedOn = (topic: string): string[] => firstCopies.filter((message) => message.topic === topic).map((message) => readingValue(message.payload));

  const topics: TopicReport[] = [];
  const reads = devices.flatMap((device) => device.reads);
  for (const meter of METERS) {
    const served = reads.filter((read) => read.unit === meter.unit && read.functionCode === 3 && read.address === 0);
    const counterTopic = `${REMOTE_PREFIX}${meter.name}/counter`;
    const temperatureTopic = `${REMOTE_PREFIX}${meter.name}/temperature`;
    topics.push(compareTopic(counterTopic, served.map((read) => String(read.values[0])), arrivedOn(counterTopic)));
    topics.push(compareTopic(temperatureTopic, served.map((read) => String(float32(read.values[1] ?? 0, read.values[2] ?? 0))), arrivedOn(temperatureTopic)));
  }
  const seqTopic = `${REMOTE_PREFIX}weather/SEQ`;
  const temperatureTopic = `${REMOTE_PREFIX}weather/T`;
  const whileDown = sensor.sent.filter((line) => line.at >= down.downFrom && line.at <= down.downUntil);
  const seqWhileDown = new Set(whileDown.map((line) => String(line.seq)));
  topics.push(compareTopic(seqTopic, sensor.sent.map((line) => String(line.seq)), arrivedOn(seqTopic), seqWhileDown));
  topics.push(
    compareTopic(
      temperatureTopic,
      sensor.sent.map((line) => String(line.temperature)),
      arrivedOn(temperatureTopic),
      new Set(whileDown.map((line) => String(line.temperature))),
    ),
  );

  const availability: Record<string, string[]> = {};
  for (const meter of METERS) availability[meter.name] = arrivedOn(`${REMOTE_PREFIX}${meter.name}/availability`);

  return {
    topics,
    cloudMessages: messages.length,
    duplicatesById: duplicateIds.length,
    duplicateIds,
    withoutId: messages.filter((message) => message.id === '').length,
    availability,
    sensorWhileDown: { sent: whileDown.length, arrived: arrivedOn(seqTopic).filter((value) => seqWhileDown.has(value)).length },
  };
}

/** Lists the broken promises of a run, one sentence each; the list is empty when all hold. */
export function scenarioFailures(report: ScenarioReport): string[] {
  const failures: string[] = [];
  for (const topic of report.topics) {
    if (topic.taken < 10) failures.push(`${topic.topic}: only ${topic.taken} readings taken; the run was too short to show anything`);
    if (topic.missing.length > 0) failures.push(`${topic.topic}: ${topic.missing.length} readings never arrived: ${topic.missing.slice(0, 10).join(', ')}`);
    if (topic.outOfOrder > 0) failures.push(`${topic.topic}: ${topic.outOfOrder} readings arrived out of order`);
    if (topic.unexpected.length > 0) failures.push(`${topic.topic}: ${topic.unexpected.length} readings arrived that were never taken: ${topic.unexpected.slice(0, 10).join(', ')}`);
  }
  if (report.withoutId > 0) failures.push(`${report.withoutId} messages arrived without the outpost-message-id property`);
  for (const [device, states] of Object.entries(report.availability)) {
    const offline = states.lastIndexOf('offline');
    if (offline <= 0 || states.at(-1) !== 'online') {
      failures.push(`${device}: availability ${states.join(' > ') || '(none)'} does not go offline at the unplug and online again`);
    }
  }
  const { backlog } = report;
  if (backlog.beforeKill === 0) failures.push('the backlog stayed at 0 during the outage');
  if (backlog.afterRestart < backlog.beforeKill) failures.push(`the backlog fell from ${backlog.beforeKill} to ${backlog.afterRestart} across the kill -9`);
  if (backlog.peak <= backlog.afterRestart) failures.push(`the backlog did not grow after the restart (peak ${backlog.peak})`);
  if (backlog.final !== 0) failures.push(`the backlog ended at ${backlog.final}, not 0`);
  for (const event of ['bridge connection lost', 'outbox has a backlog', 'device offline', 'bridge backlog sent']) {
    if (!report.story.some((line) => line.includes(event))) failures.push(`the log has no "${event}" line`);
  }
  return failures;
}
