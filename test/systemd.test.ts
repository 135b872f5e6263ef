// Tests of the systemd notification module and of its use by the `outpost` command, against a
// real unix datagram socket given as NOTIFY_SOCKET, with the real `systemd-notify` program
// (package systemd) as the sender. Node.js cannot open unix datagram sockets, so the receiving
// end is a small python3 program that prints each datagram as one JSON line. The CLI tests run
// the compiled dist/cli/main.js, which `npm test` builds first.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { connectAsync } from 'mqtt';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { Logger } from '../src/service/logger.js';
import { SystemdNotifier } from '../src/service/systemd.js';
import { delay, waitFor } from './helpers/wait.js';

const repoRoot = fileURLToPath(new URL('..', import.meta.url));
const mainScript = join(repoRoot, 'dist/cli/main.js');

/**
 * Binds a unix datagram socket and prints {"at": seconds, "data": text} per datagram. File
 * descriptors that arrive with a datagram (systemd-notify sends one with BARRIER=1 and waits
 * until it is closed) are closed at once, as systemd does.
 */
const RECEIVER_PROGRAM = `
import array, json, os, socket, sys, time
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(sys.argv[1])
print(json.dumps({"bound": True}), flush=True)
while True:
    data, ancillary, flags, address = sock.recvmsg(65536, socket.CMSG_SPACE(64 * 4))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - len(payload) % 4])
            for fd in fds:
                os.close(fd)
    print(json.dumps({"at": time.monotonic(), "data": data.decode("utf-8", "replace")}), flush=True)
`;

interface Datagram {
  at: number;
  data: string;
}

/** The receiving end of NOTIFY_SOCKET: a python3 process and the datagrams it printed so far. */
class NotifySocket {
  readonly datagrams: Datagram[] = [];

  private constructor(
    readonly path: string,
    private readonly process: ChildProcess,
  ) {}

  static async open(directory: string): Promise<NotifySocket> {
    const path = join(directory, 'notify.sock');
    const child = spawn('/usr/bin/python3', ['-c', RECEIVER_PROGRAM, path], { stdio: ['ignore', 'pipe', 'inherit'] });
    const socket = new NotifySocket(path, child);
    const lines = createInterface({ input: child.stdout! });
    let bound = false;
    lines.on('line', (line) => {
      const parsed = JSON.parse(line) as { bound?: boolean } & Partial<Datagram>;
      if (parsed.bound === true) bound = true;
      else if (typeof parsed.data === 'string' && typeof parsed.at === 'number') socket.datagrams.push({ at: parsed.at, data: parsed.data });
    });
    await waitFor(() => bound, 10_000, 'the python3 receiver to bind its socket');
    return socket;
  }

  /** Messages other than the BARRIER=1 that systemd-notify sends after each one. */
  messages(): string[] {
    return this.datagrams.map((datagram) => datagram.data).filter((data) => data !== 'BARRIER=1');
  }

  watchdogPings(): Datagram[] {
    return this.datagrams.filter((datagram) => datagram.data === 'WATCHDOG=1');
  }

  close(): void {
    this.process.kill('SIGTERM');
  }
}

function capturingLogger(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const logger = new Logger('debug', { sink: { write: (line: string) => lines.push(line) }, journald: false });
  return { logger, lines };
}

let directory: string;
let notifySocket: NotifySocket | undefined;
const children: ChildProcess[] = [];

beforeEach(() => {
  directory = mkdtempSync(join(tmpdir(), 'outpost-systemd-'));
});

afterEach(() => {
  for (const child of children.splice(0)) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
  notifySocket?.close();
  notifySocket = undefined;
  rmSync(directory, { recursive: true, force: true });
});

describe('SystemdNotifier without NOTIFY_SOCKET', () => {
  it('sends nothing and starts no watchdog', async () => {
    const { logger, lines } = capturingLogger();
    // A program that does not exist would log an error if the notifier tried to run it.
    const notifier = new SystemdNotifier(logger, { env: { WATCHDOG_USEC: '1000000' }, program: join(directory, 'missing') });

    expect(notifier.enabled).toBe(false);
    await notifier.notifyStatus('starting');
    await notifier.notifyReady('running');
    await notifier.notifyStopping();
    expect(notifier.startWatchdog()).toBeUndefined();
    expect(lines).toEqual([]);
  });

  it('treats an empty NOTIFY_SOCKET as unset', () => {
    const notifier = new SystemdNotifier(capturingLogger().logger, { env: { NOTIFY_SOCKET: '' } });
    expect(notifier.enabled).toBe(false);
  });
});

describe('SystemdNotifier with a notification socket', () => {
  beforeEach(async () => {
    notifySocket = await NotifySocket.open(directory);
  });

  it('sends READY=1 with STATUS', async () => {
    const socket = notifySocket!;
    const notifier = new SystemdNotifier(capturingLogger().logger, { env: { NOTIFY_SOCKET: socket.path, PATH: process.env.PATH } });

    await notifier.notifyReady('running: 1 listener');
    await waitFor(() => socket.messages().length >= 1, 5000, 'READY=1');

    expect(socket.messages()).toEqual(['READY=1\nSTATUS=running: 1 listener']);
  });

  it('keeps the order of queued messages', async () => {
    const socket = notifySocket!;
    const notifier = new SystemdNotifier(capturingLogger().logger, { env: { NOTIFY_SOCKET: socket.path, PATH: process.env.PATH } });

    // Not awaited one by one: the notifier itself must keep them in order.
    await Promise.all([notifier.notifyStatus('opening the store'), notifier.notifyReady(), notifier.notifyStopping('stopping')]);
    await waitFor(() => socket.messages().length >= 3, 5000, 'three messages');

    expect(socket.messages()).toEqual(['STATUS=opening the store', 'READY=1', 'STOPPING=1\nSTATUS=stopping']);
  });

  it('replaces newlines in STATUS', async () => {
    const socket = notifySocket!;
    const notifier = new SystemdNotifier(capturingLogger().logger, { env: { NOTIFY_SOCKET: socket.path, PATH: process.env.PATH } });

    await notifier.notifyStatus('line one\nREADY=1');
    await waitFor(() => socket.messages().length >= 1, 5000, 'STATUS');

    expect(socket.messages()).toEqual(['STATUS=line one READY=1']);
  });

  it('pings the watchdog at half of WATCHDOG_USEC', async () => {
    const socket = notifySocket!;
    const notifier = new SystemdNotifier(capturingLogger().logger, {
      env: { NOTIFY_SOCKET: socket.path, PATH: process.env.PATH, WATCHDOG_USEC: '400000', WATCHDOG_PID: String(process.pid) },
    });

    const watchdog = notifier.startWatchdog();
    expect(watchdog?.intervalMs).toBe(200);
    await waitFor(() => socket.watchdogPings().length >= 3, 5000, 'three watchdog pings');
    watchdog?.stop();

    // After stop(), at most a ping already on its way arrives.
    await delay(100);
    const countAtStop = socket.watchdogPings().length;
    await delay(600);
    expect(socket.watchdogPings().length).toBe(countAtStop);
  });

  it('sends no watchdog ping while the event loop is blocked', async () => {
    const socket = notifySocket!;
    const notifier = new SystemdNotifier(capturingLogger().logger, {
      env: { NOTIFY_SOCKET: socket.path, PATH: process.env.PATH, WATCHDOG_USEC: '100000' },
    });

    const watchdog = notifier.startWatchdog();
    await waitFor(() => socket.watchdogPings().length >= 2, 5000, 'two watchdog pings');
    const blockMs = 1000;
    const blockedUntil = Date.now() + blockMs;
    while (Date.now() < blockedUntil) {
      // Busy wait: the timer that sends pings cannot run.
    }
    await waitFor(() => socket.watchdogPings().length >= 6, 5000, 'pings after the block');
    watchdog?.stop();

    const pings = socket.watchdogPings();
    const gaps = pings.slice(1).map((ping, index) => ping.at - pings[index]!.at);
    // Pings come every 50 ms outside the block; one gap spans most of the blocked second.
    expect(Math.max(...gaps)).toBeGreaterThan(0.8);
  });

  it('starts no watchdog for another WATCHDOG_PID', () => {
    const notifier = new SystemdNotifier(capturingLogger().logger, {
      env: { NOTIFY_SOCKET: notifySocket!.path, WATCHDOG_USEC: '1000000', WATCHDOG_PID: '1' },
      pid: 4242,
    });
    expect(notifier.startWatchdog()).toBeUndefined();
  });

  it('rejects an invalid WATCHDOG_USEC with a warning', () => {
    const { logger, lines } = capturingLogger();
    const notifier = new SystemdNotifier(logger, { env: { NOTIFY_SOCKET: notifySocket!.path, WATCHDOG_USEC: '30s' } });

    expect(notifier.startWatchdog()).toBeUndefined();
    expect(lines.join('')).toMatch(/invalid WATCHDOG_USEC.*watchdog_usec=30s/);
  });

  it('logs an error when systemd-notify is missing', async () => {
    const { logger, lines } = capturingLogger();
    const notifier = new SystemdNotifier(logger, { env: { NOTIFY_SOCKET: notifySocket!.path }, program: join(directory, 'missing') });

    await notifier.notifyReady();

    expect(lines.join('')).toMatch(/ERROR systemd-notify program not found/);
  });

  it('logs a warning when the socket does not exist', async () => {
    const { logger, lines } = capturingLogger();
    const notifier = new SystemdNotifier(logger, { env: { NOTIFY_SOCKET: join(directory, 'absent.sock'), PATH: process.env.PATH } });

    await notifier.notifyReady();

    expect(lines.join('')).toMatch(/WARN failed to send a notification to systemd.*variable=READY/);
  });
});

describe('outpost command under a notification socket', () => {
  beforeEach(async () => {
    notifySocket = await NotifySocket.open(directory);
  });

  function startOutpost(): { child: ChildProcess; stderr: () => string } {
    const config = join(directory, 'outpost.yaml');
    writeFileSync(config, `listeners:\n  - host: 127.0.0.1\n    port: 0\ndata_dir: ${JSON.stringify(join(directory, 'data'))}\n`);
    const child = spawn(process.execPath, [mainScript, '-c', config], {
      env: { ...process.env, JOURNAL_STREAM: undefined, NOTIFY_SOCKET: notifySocket!.path, WATCHDOG_USEC: '2000000' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    children.push(child);
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    return { child, stderr: () => stderr };
  }

  it('sends READY=1 once the listener accepts clients', async () => {
    const socket = notifySocket!;
    const { stderr } = startOutpost();

    await waitFor(() => socket.messages().some((message) => message.startsWith('READY=1')), 15_000, 'READY=1');

    // By READY=1 the listener is bound: its log line is written and a client connects.
    const port = /listening .*port=(\d+)/.exec(stderr())?.[1];
    expect(port).toBeDefined();
    const client = await connectAsync(`mqtt://127.0.0.1:${port}`, { reconnectPeriod: 0, connectTimeout: 5000 });
    await client.endAsync();
    const ready = socket.messages().find((message) => message.startsWith('READY=1'));
    expect(ready).toMatch(/STATUS=/);
  });

  it('pings the watchdog and sends STOPPING=1 on SIGTERM', async () => {
    const socket = notifySocket!;
    const { child } = startOutpost();
    await waitFor(() => socket.messages().some((message) => message.startsWith('READY=1')), 15_000, 'READY=1');
    // WATCHDOG_USEC is 2 s, so a ping comes every second.
    await waitFor(() => socket.watchdogPings().length >= 1, 5000, 'a watchdog ping');

    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    child.kill('SIGTERM');

    expect(await exited).toBe(0);
    expect(socket.messages().some((message) => message.startsWith('STOPPING=1'))).toBe(true);
  });
});
