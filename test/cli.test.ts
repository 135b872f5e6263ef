// End-to-end tests of the `outpost` command. They run the compiled dist/cli/main.js, which
// `npm test` builds first (the pretest script); after editing src/, run `npx tsc -p tsconfig.json`.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { connectAsync } from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

const repoRoot = fileURLToPath(new URL('..', import.meta.url));
const mainScript = join(repoRoot, 'dist/cli/main.js');
const packageVersion = (JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version;

interface Outcome {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

const started: ChildProcess[] = [];

/** Starts `node dist/cli/main.js` with `args`; afterEach kills it by PID if it is still running. */
function startOutpost(args: string[]): ChildProcess {
  const child = spawn(process.execPath, [mainScript, ...args], { cwd: repoRoot, env: { ...process.env, JOURNAL_STREAM: undefined } });
  started.push(child);
  return child;
}

/** Collects the output of `child` until it exits. */
function waitForExit(child: ChildProcess): Promise<Outcome> {
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

function runOutpost(args: string[]): Promise<Outcome> {
  return waitForExit(startOutpost(args));
}

/** Resolves with the first match of `pattern` in the stderr of `child`. */
function waitForStderr(child: ChildProcess, pattern: RegExp): Promise<RegExpExecArray> {
  let seen = '';
  return new Promise((resolve, reject) => {
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      seen += chunk;
      const match = pattern.exec(seen);
      if (match !== null) resolve(match);
    });
    child.on('close', (code) => reject(new Error(`outpost exited with code ${code} before logging ${pattern}; stderr:\n${seen}`)));
  });
}

let directory = '';

beforeAll(() => {
  if (!existsSync(mainScript)) throw new Error(`${mainScript} not found; run npx tsc -p tsconfig.json first`);
  directory = mkdtempSync(join(tmpdir(), 'outpost-cli-'));
});

afterEach(() => {
  for (const child of started.splice(0)) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
});

afterAll(() => {
  if (directory !== '') rmSync(directory, { recursive: true, force: true });
});

function writeConfig(name: string, text: string): string {
  const path = join(directory, name);
  writeFileSync(path, text);
  return path;
}

describe('outpost command line', () => {
  it('prints the package version', async () => {
    const outcome = await runOutpost(['--version']);
    expect(outcome.code).toBe(0);
    expect(outcome.stdout).toBe(`${packageVersion}\n`);
  });

  it('prints help', async () => {
    const outcome = await runOutpost(['--help']);
    expect(outcome.code).toBe(0);
    expect(outcome.stdout).toMatch(/^Usage: outpost \[-c FILE\] \[-p PORT\] \[-v\]/);
    expect(outcome.stdout).toContain('check-config');
  });

  it('rejects an unknown flag with exit 2', async () => {
    const outcome = await runOutpost(['--bogus']);
    expect(outcome.code).toBe(2);
    expect(outcome.stderr).toBe("outpost: unknown option --bogus\nRun 'outpost --help' for usage.\n");
  });

  it('rejects a flag without its value with exit 2', async () => {
    const outcome = await runOutpost(['-c']);
    expect(outcome.code).toBe(2);
    expect(outcome.stderr).toContain('-c, --config');
  });

  it('rejects an invalid port with exit 2', async () => {
    const outcome = await runOutpost(['-p', '65536']);
    expect(outcome.code).toBe(2);
    expect(outcome.stderr).toContain('outpost: invalid port "65536" for -p; use an integer from 0 to 65535');
  });

  it('rejects an unknown command with exit 2', async () => {
    const outcome = await runOutpost(['check-confg', '-c', 'x.yaml']);
    expect(outcome.code).toBe(2);
    expect(outcome.stderr).toContain('unknown command "check-confg"');
  });

  it('rejects check-config without a file', async () => {
    const outcome = await runOutpost(['check-config']);
    expect(outcome.code).toBe(2);
    expect(outcome.stderr).toContain('check-config needs the file to check');
  });
});

describe('outpost check-config', () => {
  it('accepts a valid file', async () => {
    const path = writeConfig('good.yaml', 'listeners:\n  - port: 0\n');
    const outcome = await runOutpost(['check-config', '-c', path]);
    expect(outcome.code).toBe(0);
    expect(outcome.stdout).toBe(`${path}: configuration is valid\n`);
    expect(outcome.stderr).toBe('');
  });

  it('accepts outpost.example.yaml', async () => {
    const outcome = await runOutpost(['check-config', '-c', 'outpost.example.yaml']);
    expect(outcome.code).toBe(0);
    expect(outcome.stdout).toBe('outpost.example.yaml: configuration is valid\n');
  });

  it('prints every problem of an invalid file', async () => {
    const path = writeConfig('bad.yaml', 'limits:\n  max_packet_size: 10\n  max_inflght_messages: 5\n');
    const outcome = await runOutpost(['check-config', '-c', path]);
    expect(outcome.code).toBe(1);
    expect(outcome.stdout).toBe('');
    expect(outcome.stderr.split('\n')).toEqual([
      `${path}:2:20: limits.max_packet_size: 10 is below the minimum 20 (allowed: integer 20..268435455 bytes)`,
      `${path}:3:3: limits.max_inflght_messages: unknown key; did you mean max_inflight_messages?`,
      'outpost: 2 configuration problems; the file is not valid',
      '',
    ]);
  });

  it('names a missing file', async () => {
    const path = join(directory, 'absent.yaml');
    const outcome = await runOutpost(['check-config', '-c', path]);
    expect(outcome.code).toBe(1);
    expect(outcome.stderr).toContain(`${path}: configuration file not found; check the path`);
  });
});

describe('outpost broker process', () => {
  it('exits 1 on an invalid configuration without a stack trace', async () => {
    const path = writeConfig('invalid-start.yaml', 'log:\n  level: loud\n');
    const outcome = await runOutpost(['-c', path]);
    expect(outcome.code).toBe(1);
    expect(outcome.stderr).toContain(`${path}:2:10: log.level: "loud" is not allowed`);
    expect(outcome.stderr).toContain('the broker was not started');
    expect(outcome.stderr).not.toMatch(/^\s+at /m);
  });

  it('serves clients and stops on SIGTERM', async () => {
    const dataDir = join(directory, 'data-sigterm');
    const path = writeConfig('start.yaml', `listeners:\n  - name: e2e\n    host: 127.0.0.1\n    port: 0\ndata_dir: ${JSON.stringify(dataDir)}\n`);
    const child = startOutpost(['-c', path]);
    const exit = waitForExit(child);
    const listening = await waitForStderr(child, /\blistening\b.*\blistener=e2e\b.*\bport=(\d+)/);
    const port = Number(listening[1]);
    expect(port).toBeGreaterThan(0);

    const client = await connectAsync({ host: '127.0.0.1', port, reconnectPeriod: 0, connectTimeout: 5000 });
    expect(client.connected).toBe(true);
    await client.endAsync();

    child.kill('SIGTERM');
    const outcome = await exit;
    expect(outcome.code).toBe(0);
    expect(outcome.stderr).toMatch(/\bstopping\b.*signal=SIGTERM/);
  });

  it('exits 1 when a port is taken', async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    try {
      const takenPort = (blocker.address() as AddressInfo).port;
      const dataDir = join(directory, 'data-taken');
      const path = writeConfig('taken.yaml', `listeners:\n  - port: ${takenPort}\ndata_dir: ${JSON.stringify(dataDir)}\n`);
      const outcome = await runOutpost(['-c', path]);
      expect(outcome.code).toBe(1);
      expect(outcome.stderr).toContain('failed to start the broker');
      expect(outcome.stderr).toContain('EADDRINUSE');
    } finally {
      await new Promise<void>((resolve) => blocker.close(() => resolve()));
    }
  });

  it('replaces the first listener port with -p', async () => {
    // The file names port 1883, but -p 0 must replace it, so the broker never binds 1883.
    const dataDir = join(directory, 'data-port');
    const path = writeConfig('port.yaml', `listeners:\n  - name: first\n    port: 1883\ndata_dir: ${JSON.stringify(dataDir)}\n`);
    const child = startOutpost(['-c', path, '-p', '0', '-v']);
    const exit = waitForExit(child);
    const listening = await waitForStderr(child, /\blistening\b.*\blistener=first\b.*\bport=(\d+)/);
    const port = Number(listening[1]);
    expect(port).not.toBe(1883);

    const client = await connectAsync({ host: '127.0.0.1', port, reconnectPeriod: 0, connectTimeout: 5000 });
    await client.endAsync();

    child.kill('SIGINT');
    const outcome = await exit;
    expect(outcome.code).toBe(0);
    expect(outcome.stderr).toMatch(/\bstopping\b.*signal=SIGINT/);
  });
});
