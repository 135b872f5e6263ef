import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { hashPassword } from '../../src/auth/password-file.js';
import { Broker } from '../../src/broker/broker.js';
import type { OutpostConfig } from '../../src/config/schema.js';
import { Logger, silentLogger, type LogSink } from '../../src/service/logger.js';
import { buildTestConfig, type ConfigOverrides } from './broker.js';

/** PBKDF2 iterations for test password files: fast, and still the `$7$` code path. */
export const TEST_ITERATIONS = 1000;

/** A temporary directory for password, ACL, plugin and certificate files of one test file. */
export interface TempDir {
  dir: string;
  /** Writes `text` to `name` in the directory and returns its path. */
  write(name: string, text: string): Promise<string>;
  remove(): Promise<void>;
}

export async function createTempDir(prefix = 'outpost-auth-'): Promise<TempDir> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  return {
    dir,
    async write(name: string, text: string): Promise<string> {
      const file = path.join(dir, name);
      await writeFile(file, text);
      return file;
    },
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}

/** Returns password file text with a `$7$` line per user, as `outpost passwd` writes it. */
export async function passwordFileText(users: Record<string, string>): Promise<string> {
  const lines: string[] = [];
  for (const [username, password] of Object.entries(users)) {
    lines.push(`${username}:${await hashPassword(Buffer.from(password), 'sha512-pbkdf2', TEST_ITERATIONS)}`);
  }
  return `${lines.join('\n')}\n`;
}

/** Log lines written by a test broker, to check what is and is not logged. */
export class CapturedLog implements LogSink {
  readonly lines: string[] = [];

  write(line: string): void {
    this.lines.push(line);
  }

  get text(): string {
    return this.lines.join('');
  }
}

export interface SecureBroker {
  broker: Broker;
  config: OutpostConfig;
  /** Port of each listener, in listener order. */
  ports: number[];
  stop(): Promise<void>;
}

/**
 * Starts a broker like `startBroker` does, with `auth` settings changed as well (the failed-login
 * delay is off unless set) and an optional log capture.
 */
export async function startSecureBroker(
  overrides: ConfigOverrides,
  auth: Partial<OutpostConfig['auth']> = {},
  log?: CapturedLog,
): Promise<SecureBroker> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'outpost-test-'));
  const config = buildTestConfig({ ...overrides, data_dir: dataDir });
  config.auth = { ...config.auth, login_delay_initial_ms: 0, ...auth };
  const logger = log !== undefined ? new Logger('debug', { sink: log, journald: false }) : process.env.OUTPOST_TEST_LOG === '1' ? new Logger('debug') : silentLogger();
  const broker = new Broker(config, logger);
  try {
    await broker.start();
  } catch (error) {
    await rm(dataDir, { recursive: true, force: true });
    throw error;
  }
  const ports = broker.listenerAddresses().map((address) => address.port);
  let stopped: Promise<void> | null = null;
  return {
    broker,
    config,
    ports,
    stop(): Promise<void> {
      stopped ??= broker.stop().finally(() => rm(dataDir, { recursive: true, force: true }));
      return stopped;
    },
  };
}
