#!/usr/bin/env node
// Benchmark: starts Outpost, Debian's Mosquitto and Aedes one at a time on 127.0.0.1, runs the
// same load against each and prints Markdown tables. The broker runs on CPU 0 and this
// generator on CPU 1 (taskset), so broker CPU time per delivered message is measured apart
// from the generator. Run `npm run build` first; `npm run bench` does both.
//
// Usage: node scripts/bench/run.mjs [--duration SECONDS] [--brokers LIST] [--scenarios LIST]
//                                   [--idle COUNTS] [--json FILE]
//   --duration   seconds of publishing per scenario (default 5)
//   --brokers    comma-separated: outpost, outpost-memory, mosquitto, aedes (default all)
//   --scenarios  comma-separated: qos0, qos1, qos1-session, fanout, fanin, idle (default all)
//   --idle       idle connection counts, comma-separated (default 1000,10000)
//   --json       also write the raw results to FILE
//   --profile    run Outpost with --cpu-prof and write its CPU profiles to DIR

import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, openSync, closeSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { BenchClient, openMany, runPublisher, Tally } from './load.mjs';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
const BROKER_CPU = '0';
const GENERATOR_CPU = '1';
const PAYLOAD = Buffer.alloc(64, 0x61);
const CLOCK_TICKS_PER_SECOND = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
/** A run ends when no message arrived for this long after publishing stopped, or after DRAIN_MAX_MS. */
const DRAIN_IDLE_MS = 1000;
const DRAIN_MAX_MS = 15_000;

const { values: options } = parseArgs({
  options: {
    duration: { type: 'string', default: '5' },
    brokers: { type: 'string', default: 'outpost,outpost-memory,mosquitto,aedes' },
    scenarios: { type: 'string', default: 'qos0,qos1,qos1-session,fanout,fanin,idle' },
    idle: { type: 'string', default: '1000,10000' },
    json: { type: 'string' },
    profile: { type: 'string' },
  },
});
const durationMs = Number(options.duration) * 1000;
if (!(durationMs > 0 && durationMs <= 60_000)) throw new Error(`invalid --duration ${options.duration}; use 1 to 60 seconds`);
const idleCounts = options.idle.split(',').map(Number);

// ---- brokers ---------------------------------------------------------------------------------

const BROKERS = {
  outpost: { label: 'Outpost (persistence on, default)', start: (port, dir) => outpostCommand(port, dir, true) },
  'outpost-memory': { label: 'Outpost (persistence off)', start: (port, dir) => outpostCommand(port, dir, false) },
  mosquitto: { label: 'Mosquitto', start: mosquittoCommand },
  aedes: { label: 'Aedes', start: (port) => [process.execPath, [join(repoRoot, 'scripts/bench/aedes-server.mjs'), String(port)]] },
};

function outpostCommand(port, dir, persistence) {
  const config = join(dir, 'outpost.yaml');
  // Only the connection limits differ from the defaults: the idle scenario needs 10,000 clients.
  writeFileSync(
    config,
    [
      'listeners:',
      `  - {name: bench, host: 127.0.0.1, port: ${port}, max_connections: 0}`,
      `data_dir: ${join(dir, 'data')}`,
      'log: {level: warn}',
      'limits: {max_connections: 20000}',
      `persistence: {enabled: ${persistence}}`,
      '',
    ].join('\n'),
  );
  const profile = options.profile === undefined ? [] : ['--cpu-prof', '--cpu-prof-dir', options.profile];
  return [process.execPath, [...profile, join(repoRoot, 'dist/cli/main.js'), '-c', config]];
}

function mosquittoCommand(port, dir) {
  const config = join(dir, 'mosquitto.conf');
  // Mosquitto's defaults otherwise, like persistence off and max_queued_messages 1000.
  writeFileSync(config, [`listener ${port} 127.0.0.1`, 'allow_anonymous true', 'log_dest stderr', 'log_type error', 'log_type warning', ''].join('\n'));
  return ['/usr/sbin/mosquitto', ['-c', config]];
}

async function freePort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Starts a broker pinned to BROKER_CPU; resolves when its port accepts connections. */
async function startBroker(name) {
  const dir = mkdtempSync(join(tmpdir(), `bench-${name}-`));
  const port = await freePort();
  const [command, args] = BROKERS[name].start(port, dir);
  const log = openSync(join(dir, 'broker.log'), 'w');
  // taskset execs the broker, so the child's PID is the broker's.
  const child = spawn('taskset', ['-c', BROKER_CPU, command, ...args], {
    cwd: dir,
    stdio: ['ignore', log, log],
    env: { ...process.env, JOURNAL_STREAM: '' },
  });
  closeSync(log);
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode}; see ${join(dir, 'broker.log')}`);
    if (await canConnect(port)) break;
    if (Date.now() > deadline) throw new Error(`${name} did not accept connections on port ${port} within 10 s`);
    await sleep(50);
  }
  return { name, pid: child.pid, port, dir, child, exited };
}

async function stopBroker(broker) {
  if (broker.child.exitCode === null) {
    process.kill(broker.pid, 'SIGTERM');
    const stopped = await Promise.race([broker.exited.then(() => true), sleep(10_000).then(() => false)]);
    if (!stopped) {
      process.stderr.write(`${broker.name} (pid ${broker.pid}) did not stop within 10 s of SIGTERM; sending SIGKILL\n`);
      process.kill(broker.pid, 'SIGKILL');
      await broker.exited;
    }
  }
  rmSync(broker.dir, { recursive: true, force: true });
}

function canConnect(port) {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

// ---- measurements ----------------------------------------------------------------------------

/** User plus system CPU time of a process and all its threads, in seconds (/proc/PID/stat). */
function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may contain spaces.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
}

/** Resident set size in bytes (/proc/PID/status VmRSS, or RssAnon for anonymous memory only). */
function residentBytes(pid, field = 'VmRSS') {
  const match = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match === null ? NaN : Number(match[1]) * 1024;
}

function tailOfFile(path, lineCount) {
  const lines = readFileSync(path, 'utf8').trimEnd().split('\n').slice(-lineCount);
  return lines.length === 0 || lines[0] === '' ? '' : `${lines.map((line) => `  | ${line}`).join('\n')}\n`;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---- scenarios -------------------------------------------------------------------------------

const SCENARIOS = {
  qos0: { label: 'QoS 0, 1 → 1', publishers: 1, subscribers: 1, qos: 0 },
  qos1: { label: 'QoS 1, 1 → 1', publishers: 1, subscribers: 1, qos: 1 },
  // The subscriber keeps its session (clean session 0), so Outpost with persistence stores every message.
  'qos1-session': { label: 'QoS 1, 1 → 1, stored session', publishers: 1, subscribers: 1, qos: 1, persistentSubscriber: true },
  fanout: { label: 'fan-out QoS 0, 1 → 100', publishers: 1, subscribers: 100, qos: 0 },
  fanin: { label: 'fan-in QoS 0, 100 → 1 (wildcard)', publishers: 100, subscribers: 1, qos: 0 },
};

async function runThroughput(broker, scenarioName) {
  const scenario = SCENARIOS[scenarioName];
  const tally = new Tally();
  const topic = (index) => (scenario.publishers > 1 ? `bench/${scenarioName}/${index}` : `bench/${scenarioName}`);
  const filter = scenario.publishers > 1 ? `bench/${scenarioName}/+` : `bench/${scenarioName}`;
  const subscribers = await openMany(broker.port, `sub-${scenarioName}`, scenario.subscribers, tally, 50, { clean: scenario.persistentSubscriber !== true });
  await Promise.all(subscribers.map((client) => client.subscribe(filter, scenario.qos)));
  const publishers = await openMany(broker.port, `pub-${scenarioName}`, scenario.publishers, tally, 50);
  await sleep(300);

  let running = true;
  const generatorStart = process.cpuUsage();
  const cpuStart = cpuSeconds(broker.pid);
  const startedAt = performance.now();
  const publishing = publishers.map((client, index) => runPublisher(client, topic(index), PAYLOAD, scenario.qos, () => running));
  await sleep(durationMs);
  running = false;
  await Promise.all(publishing);
  const expected = tally.published * scenario.subscribers;
  const drainStart = performance.now();
  let lastCount = -1;
  let lastChange = drainStart;
  while (tally.delivered < expected && performance.now() - drainStart < DRAIN_MAX_MS) {
    if (tally.delivered !== lastCount) {
      lastCount = tally.delivered;
      lastChange = performance.now();
    } else if (performance.now() - lastChange > DRAIN_IDLE_MS) {
      break;
    }
    await sleep(20);
  }
  const brokerCpu = cpuSeconds(broker.pid) - cpuStart;
  const generatorCpu = process.cpuUsage(generatorStart);
  const elapsed = (Math.max(tally.lastDeliveryAt, startedAt + 1) - startedAt) / 1000;
  for (const client of [...publishers, ...subscribers]) client.close();
  await sleep(500);
  return {
    broker: broker.name,
    scenario: scenarioName,
    published: tally.published,
    expected,
    delivered: tally.delivered,
    lost: expected - tally.delivered,
    seconds: elapsed,
    deliveredPerSecond: tally.delivered / elapsed,
    brokerCpuSeconds: brokerCpu,
    brokerCpuMicrosPerMessage: tally.delivered === 0 ? NaN : (brokerCpu * 1e6) / tally.delivered,
    brokerCpuShare: brokerCpu / elapsed,
    generatorCpuShare: (generatorCpu.user + generatorCpu.system) / 1e6 / ((performance.now() - startedAt) / 1000),
  };
}

async function runIdle(broker) {
  await sleep(1000);
  const result = { broker: broker.name, startBytes: residentBytes(broker.pid), startAnonBytes: residentBytes(broker.pid, 'RssAnon'), counts: {} };
  const tally = new Tally();
  const clients = [];
  let open = 0;
  for (const count of idleCounts) {
    clients.push(...(await openMany(broker.port, `idle-${open}`, count - open, tally, 100, { keepalive: 0 })));
    open = count;
    await sleep(2000);
    result.counts[count] = residentBytes(broker.pid);
  }
  for (const client of clients) client.close();
  await sleep(1000);
  return result;
}

// ---- report ----------------------------------------------------------------------------------

const MB = 1024 * 1024;

function throughputTable(results) {
  const lines = [
    '| scenario | broker | published | delivered | lost | delivered/s | broker CPU µs/msg | broker CPU | generator CPU |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of results) {
    lines.push(
      `| ${SCENARIOS[r.scenario].label} | ${BROKERS[r.broker].label} | ${r.published} | ${r.delivered} | ${r.lost} (${((100 * r.lost) / Math.max(1, r.expected)).toFixed(1)} %) | ${Math.round(r.deliveredPerSecond)} | ${r.brokerCpuMicrosPerMessage.toFixed(2)} | ${(100 * r.brokerCpuShare).toFixed(0)} % | ${(100 * r.generatorCpuShare).toFixed(0)} % |`,
    );
  }
  return lines.join('\n');
}

function idleTable(results) {
  const header = ['broker', 'RSS at start', 'of which anonymous', ...idleCounts.map((count) => `RSS with ${count} idle`), ...idleCounts.map((count) => `per connection (${count})`)];
  const lines = [`| ${header.join(' | ')} |`, `|---|${header.slice(1).map(() => '---:').join('|')}|`];
  for (const r of results) {
    const cells = [BROKERS[r.broker].label, `${(r.startBytes / MB).toFixed(1)} MB`, `${(r.startAnonBytes / MB).toFixed(1)} MB`];
    for (const count of idleCounts) cells.push(`${(r.counts[count] / MB).toFixed(1)} MB`);
    for (const count of idleCounts) cells.push(`${((r.counts[count] - r.startBytes) / count / 1024).toFixed(2)} KB`);
    lines.push(`| ${cells.join(' | ')} |`);
  }
  return lines.join('\n');
}

/** Outpost's CPU per message divided by each other broker's, per scenario. */
function ratioTable(results) {
  const lines = ['| scenario | Outpost ÷ Mosquitto | Outpost ÷ Aedes | Outpost (persistence off) ÷ Mosquitto |', '|---|---:|---:|---:|'];
  const cpu = (broker, scenario) => results.find((r) => r.broker === broker && r.scenario === scenario)?.brokerCpuMicrosPerMessage;
  const ratio = (a, b) => (a === undefined || b === undefined ? 'n/a' : (a / b).toFixed(2));
  for (const scenario of Object.keys(SCENARIOS)) {
    if (!results.some((r) => r.scenario === scenario)) continue;
    const outpost = cpu('outpost', scenario);
    lines.push(`| ${SCENARIOS[scenario].label} | ${ratio(outpost, cpu('mosquitto', scenario))} | ${ratio(outpost, cpu('aedes', scenario))} | ${ratio(cpu('outpost-memory', scenario), cpu('mosquitto', scenario))} |`);
  }
  return lines.join('\n');
}

/**
 * Checks that the open file limit (inherited by the brokers) allows the idle scenario. Raising it
 * needs CAP_SYS_RESOURCE, which containers often lack, so the limit is checked, not raised.
 */
function checkFileLimit() {
  if (!options.scenarios.split(',').includes('idle')) return;
  const limit = Number(execFileSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).trim());
  const needed = Math.max(...idleCounts) + 100;
  if (limit < needed) {
    throw new Error(`the open file limit is ${limit}, the idle scenario needs ${needed}; raise it (ulimit -n ${needed}, as root or within the hard limit) and run again`);
  }
}

// ---- main ------------------------------------------------------------------------------------

async function main() {
  execFileSync('taskset', ['-cp', GENERATOR_CPU, String(process.pid)], { stdio: 'ignore' });
  checkFileLimit();
  const brokerNames = options.brokers.split(',');
  const scenarioNames = options.scenarios.split(',');
  for (const name of brokerNames) if (!(name in BROKERS)) throw new Error(`unknown broker ${name}; use ${Object.keys(BROKERS).join(', ')}`);
  for (const name of scenarioNames) if (!(name in SCENARIOS) && name !== 'idle') throw new Error(`unknown scenario ${name}; use ${Object.keys(SCENARIOS).join(', ')}, idle`);

  const throughput = [];
  const idle = [];
  for (const scenarioName of scenarioNames) {
    for (const brokerName of brokerNames) {
      // A fresh broker per scenario, so no run inherits another's queues or heap.
      const broker = await startBroker(brokerName);
      try {
        if (scenarioName === 'idle') {
          const result = await runIdle(broker);
          idle.push(result);
          process.stderr.write(`idle ${brokerName}: start ${(result.startBytes / MB).toFixed(1)} MB ${JSON.stringify(result.counts)}\n`);
        } else {
          const result = await runThroughput(broker, scenarioName);
          throughput.push(result);
          // The broker's own warnings usually say why messages were lost.
          if (result.lost > 0) process.stderr.write(tailOfFile(join(broker.dir, 'broker.log'), 5));
          if (broker.child.exitCode !== null) process.stderr.write(`${brokerName} exited with ${broker.child.exitCode} during the run:\n${tailOfFile(join(broker.dir, 'broker.log'), 40)}`);
          process.stderr.write(
            `${scenarioName} ${brokerName}: ${Math.round(result.deliveredPerSecond)}/s, lost ${result.lost}, ${result.brokerCpuMicrosPerMessage.toFixed(2)} µs/msg\n`,
          );
        }
      } finally {
        await stopBroker(broker);
      }
    }
  }

  const sections = [];
  if (throughput.length > 0) sections.push(throughputTable(throughput), ratioTable(throughput));
  if (idle.length > 0) sections.push(idleTable(idle));
  process.stdout.write(`${sections.join('\n\n')}\n`);
  if (options.json !== undefined) writeFileSync(options.json, `${JSON.stringify({ durationMs, throughput, idle }, null, 2)}\n`);
}

await main();
