import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import type { IClientOptions, MqttClient } from 'mqtt';
import { Broker } from '../../src/broker/broker.js';
import { defaultConfig } from '../../src/config/defaults.js';
import type { ListenerConfig, OutpostConfig } from '../../src/config/schema.js';
import { Logger, silentLogger } from '../../src/service/logger.js';
import { withTimeout } from './wait.js';

/**
 * Changes to the default configuration. Each listener entry is merged into the listener at the
 * same index, and the first listener binds 127.0.0.1 port 0 unless changed. Entries past the first
 * start from a copy of the first listener named `listener-<index>`.
 */
export interface ConfigOverrides {
  listeners?: Partial<ListenerConfig>[];
  data_dir?: string;
  log?: Partial<OutpostConfig['log']>;
  limits?: Partial<OutpostConfig['limits']>;
  sys?: Partial<OutpostConfig['sys']>;
}

export interface TestBroker {
  broker: Broker;
  /** Port of the first listener. */
  port: number;
  /** `mqtt://127.0.0.1:PORT` for the first listener. */
  url: string;
  /** Stops the broker; calling it again does nothing. */
  stop(): Promise<void>;
}

/** Builds the test configuration: defaults, loopback port 0, $SYS off, then `overrides`. */
export function buildTestConfig(overrides: ConfigOverrides = {}): OutpostConfig {
  const config = defaultConfig();
  const defaultListener = config.listeners[0];
  if (defaultListener === undefined) {
    throw new Error('defaultConfig() returned no listener');
  }
  const testListener: ListenerConfig = { ...defaultListener, host: '127.0.0.1', port: 0 };

  const listeners: ListenerConfig[] = [testListener];
  const listenerOverrides = overrides.listeners ?? [];
  listenerOverrides.forEach((override, index) => {
    const base = listeners[index] ?? { ...testListener, name: `listener-${index}` };
    listeners[index] = { ...base, ...override };
  });

  return {
    ...config,
    listeners,
    data_dir: overrides.data_dir ?? config.data_dir,
    log: { ...config.log, ...overrides.log },
    limits: { ...config.limits, ...overrides.limits },
    sys: { ...config.sys, interval_seconds: 0, ...overrides.sys },
  };
}

/**
 * Starts a broker on 127.0.0.1 with an OS-assigned port. Unless `overrides.data_dir` is given, its
 * data directory is a fresh temporary directory that `stop()` removes. It logs nothing unless the
 * environment sets OUTPOST_TEST_LOG=1, which logs at debug level to stderr.
 */
export async function startBroker(overrides: ConfigOverrides = {}): Promise<TestBroker> {
  const temporaryDataDir =
    overrides.data_dir === undefined ? await mkdtemp(path.join(os.tmpdir(), 'outpost-test-')) : null;
  const config = buildTestConfig({ ...overrides, data_dir: overrides.data_dir ?? temporaryDataDir ?? undefined });
  const logger = process.env.OUTPOST_TEST_LOG === '1' ? new Logger('debug') : silentLogger();
  const broker = new Broker(config, logger);
  const removeDataDir = async (): Promise<void> => {
    if (temporaryDataDir !== null) {
      await rm(temporaryDataDir, { recursive: true, force: true });
    }
  };

  try {
    await broker.start();
  } catch (error) {
    await removeDataDir();
    throw error;
  }
  const address = broker.listenerAddresses()[0];
  if (address === undefined) {
    await broker.stop();
    await removeDataDir();
    throw new Error('the broker started without a listener address');
  }

  let stopped: Promise<void> | null = null;
  return {
    broker,
    port: address.port,
    url: `mqtt://127.0.0.1:${address.port}`,
    stop(): Promise<void> {
      if (stopped === null) {
        stopped = broker.stop().finally(removeDataDir);
      }
      return stopped;
    },
  };
}

/**
 * Connects MQTT.js to `url` without automatic reconnects and resolves on CONNACK. Rejects with
 * the client's error (for example a CONNACK refusal) or after `timeoutMs`.
 */
export async function connectMqttJs(
  url: string,
  options: IClientOptions = {},
  timeoutMs = 3000,
): Promise<MqttClient> {
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: timeoutMs, ...options });
  try {
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        client.once('connect', () => resolve());
        client.once('error', reject);
        client.once('close', () => reject(new Error(`the connection to ${url} closed before CONNACK`)));
      }),
      timeoutMs,
      `CONNACK from ${url}`,
    );
  } catch (error) {
    client.end(true);
    throw error;
  }
  // MQTT.js emits 'error' for socket errors such as a reset by the broker, and an 'error' event
  // without a listener would crash the test worker. Tests that expect an error listen for it.
  client.on('error', () => undefined);
  return client;
}

/** Closes an MQTT.js client, sending DISCONNECT unless `force` is set. */
export function endMqttJs(client: MqttClient, force = false): Promise<void> {
  return new Promise((resolve) => {
    client.end(force, {}, () => resolve());
  });
}
