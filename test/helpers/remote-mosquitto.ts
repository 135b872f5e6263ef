// Helpers for bridge tests: Debian's mosquitto as the "cloud" broker and a counting subscriber
// for the remote side (both in mosquitto-process.ts), and an in-process broker with a bridge.

import { BridgeManager, type Bridge, type BridgeConfig } from '../../src/bridge/index.js';
import { parseConfig } from '../../src/config/load.js';
import { startBroker, type ConfigOverrides, type TestBroker } from './broker.js';

export { freePort, RemoteCounter, RemoteMosquitto, type DeliveryReport, type RemoteMosquittoOptions } from './mosquitto-process.js';

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
