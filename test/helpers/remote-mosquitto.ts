// Helpers for bridge tests: Debian's mosquitto as the "cloud" broker (mosquitto-process.ts), a
// counting subscriber for the remote side, and an in-process broker with a bridge.

import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { BridgeManager, type Bridge, type BridgeConfig } from '../../src/bridge/index.js';
import { parseConfig } from '../../src/config/load.js';
import { startBroker, type ConfigOverrides, type TestBroker } from './broker.js';
import { delay, withTimeout } from './wait.js';

export { freePort, RemoteMosquitto, type RemoteMosquittoOptions } from './mosquitto-process.js';

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

/** Parses the YAML of one `bridges:` list item (indented by four spaces under `  - `) with defaults filled in. */
export function parseBridgeConfig(itemYaml: string): BridgeConfig {
  const config = parseConfig(`bridges:\n  - ${itemYaml.trim().split('\n').join('\n    ')}\n`, '<bridge test config>');
  const bridge = config.bridges[0];
  if (bridge === undefined) throw new Error('the bridge test config has no bridge');
  return bridge;
}

export interface BridgedBroker {
  test: TestBroker;
  bridges: BridgeManager;
  bridge: Bridge;
  /** Stops the bridges, then the broker. */
  stop(): Promise<void>;
}

/** Starts an in-process broker with one bridge configured by `itemYaml` (see `parseBridgeConfig`). */
export async function startBridgedBroker(itemYaml: string, overrides: ConfigOverrides = {}): Promise<BridgedBroker> {
  const test = await startBroker(overrides);
  const bridges = new BridgeManager(test.broker, [parseBridgeConfig(itemYaml)], test.broker.logger);
  bridges.start();
  const bridge = bridges.bridges[0];
  if (bridge === undefined) throw new Error('no bridge was created');
  let stopped = false;
  return {
    test,
    bridges,
    bridge,
    async stop(): Promise<void> {
      if (stopped) return;
      stopped = true;
      bridges.stop();
      await test.stop();
      bridges.close();
    },
  };
}
