/** The field adapter's public face: starting and stopping it with the broker. */

import type { OutpostConfig } from '../config/schema.js';
import type { Logger } from '../service/logger.js';
import { FieldAdapter, type ClientFactory } from './adapter.js';
import { buildFieldModel } from './model.js';

export { FieldAdapter } from './adapter.js';

/** A running field adapter, or a placeholder when the configuration has no bus and no serial line. */
export interface FieldAdapterHandle {
  readonly adapter: FieldAdapter | null;
  stop(): Promise<void>;
}

/**
 * Starts the field adapter of `config.field` on a started broker. Call it after `broker.start()`
 * and call `stop()` on the result before `broker.stop()`, so the adapter's last `offline`
 * messages still reach the router.
 */
export async function startFieldAdapter(broker: ClientFactory, config: OutpostConfig, logger: Logger): Promise<FieldAdapterHandle> {
  const model = buildFieldModel(config.field);
  if (model.buses.length === 0 && model.lines.length === 0) return { adapter: null, stop: () => Promise.resolve() };
  const adapter = new FieldAdapter(model, logger);
  await adapter.start(broker);
  return { adapter, stop: () => adapter.stop() };
}
