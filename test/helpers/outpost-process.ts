// Runs the compiled broker (dist/cli/main.js) as a child process, for tests that stop it with
// SIGTERM or SIGKILL and start it again on the same data directory. `npm test` builds dist/
// first; after editing src/, run `npx tsc -p tsconfig.json`.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { REPO_ROOT } from './repo-root.js';
import { withTimeout } from './wait.js';

export const OUTPOST_MAIN = join(REPO_ROOT, 'dist/cli/main.js');

/** Settings of the YAML file `writeOutpostConfig` writes; everything else keeps its default. */
export interface ProcessConfig {
  dataDir: string;
  /** Listener port; 0 lets the OS pick, and the port is then read from the `listening` log line. */
  port?: number;
  /** Lines appended under `limits:`, e.g. `max_queued_messages: 50000`. */
  limits?: Record<string, number | boolean>;
  /** Lines appended under `persistence:`. */
  persistence?: Record<string, number | boolean | string>;
}

/** Writes a YAML configuration with one loopback listener to `path` and returns `path`. */
export function writeOutpostConfig(path: string, config: ProcessConfig): string {
  const lines = [
    'listeners:',
    '  - name: default',
    '    host: 127.0.0.1',
    `    port: ${config.port ?? 0}`,
    '    protocol: mqtt',
    `data_dir: ${JSON.stringify(config.dataDir)}`,
    'log:',
    '  level: info',
    'sys:',
    '  interval_seconds: 0',
  ];
  if (config.limits !== undefined) {
    lines.push('limits:');
    for (const [key, value] of Object.entries(config.limits)) lines.push(`  ${key}: ${String(value)}`);
  }
  if (config.persistence !== undefined) {
    lines.push('persistence:');
    for (const [key, value] of Object.entries(config.persistence)) lines.push(`  ${key}: ${String(value)}`);
  }
  writeFileSync(path, `${lines.join('\n')}\n`);
  return path;
}

/** One running `outpost` process. */
export class OutpostProcess {
  readonly child: ChildProcess;
  readonly port: number;
  private readonly output: { stderr: string };
  private readonly exited: Promise<void>;

  private constructor(child: ChildProcess, port: number, output: { stderr: string }, exited: Promise<void>) {
    this.child = child;
    this.port = port;
    this.output = output;
    this.exited = exited;
  }

  /** Starts `outpost -c configPath` and resolves with the port of its first listener once it has started. */
  static async start(configPath: string, timeoutMs = 10_000): Promise<OutpostProcess> {
    if (!existsSync(OUTPOST_MAIN)) throw new Error(`${OUTPOST_MAIN} not found; run npx tsc -p tsconfig.json first`);
    const child = spawn(process.execPath, [OUTPOST_MAIN, '-c', configPath], {
      cwd: REPO_ROOT,
      env: { ...process.env, JOURNAL_STREAM: undefined },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    running.add(child);
    const output = { stderr: '' };
    const exited = new Promise<void>((resolve) => {
      child.once('exit', () => {
        running.delete(child);
        resolve();
      });
    });
    const listening = new Promise<number>((resolve, reject) => {
      child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
        output.stderr += chunk;
        // The signal handlers are in place once `broker started` is logged; a SIGTERM before
        // that would end the process without a graceful stop.
        const match = / listening .*\bport=(\d+)/.exec(output.stderr);
        if (match !== null && / broker started/.test(output.stderr)) resolve(Number(match[1]));
      });
      child.once('exit', (code, signal) =>
        reject(new Error(`outpost exited (code ${code}, signal ${signal}) before listening; stderr:\n${output.stderr}`)),
      );
    });
    try {
      const port = await withTimeout(listening, timeoutMs, 'the listening log line of outpost');
      return new OutpostProcess(child, port, output, exited);
    } catch (error) {
      child.kill('SIGKILL');
      throw error;
    }
  }

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  /** Everything the process wrote to stderr so far. */
  get stderr(): string {
    return this.output.stderr;
  }

  get pid(): number {
    const pid = this.child.pid;
    if (pid === undefined) throw new Error('outpost has no pid');
    return pid;
  }

  /** Sends `signal` and waits for the process to exit. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 10_000): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill(signal);
    await withTimeout(this.exited, timeoutMs, `outpost (pid ${this.pid}) to exit after ${signal}`);
  }

  /** Resolves when the stderr output matches `pattern`. */
  async waitForLog(pattern: RegExp, timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pattern.test(this.output.stderr)) {
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${pattern} in the log:\n${this.output.stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
}

const running = new Set<ChildProcess>();

/** Kills every outpost process a test left running, by its PID; for afterEach hooks. */
export async function killRunningOutposts(): Promise<void> {
  const waits: Array<Promise<unknown>> = [];
  for (const child of running) {
    waits.push(new Promise((resolve) => child.once('exit', resolve)));
    child.kill('SIGKILL');
  }
  await Promise.all(waits);
}
