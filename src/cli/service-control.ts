/**
 * The process shell around the broker that `outpost` runs: the operations endpoint, the bound
 * on a graceful stop, and the configuration reload on SIGHUP.
 */

import type { Broker } from '../broker/broker.js';
import type { OutpostConfig } from '../config/schema.js';
import { OpsServer } from '../service/http.js';
import type { Logger } from '../service/logger.js';
import type { ConfigReloader } from '../service/reload.js';

/**
 * Time a graceful stop may take after SIGTERM or SIGINT before the process exits anyway. It
 * covers closing the connections (each socket gets at most 1 s to flush) and the last commit.
 */
export const STOP_TIMEOUT_MS = 10_000;

/** Starts the operations endpoint when `http.enabled` is set; throws OpsListenError when it cannot bind. */
export async function startOpsServer(config: OutpostConfig, broker: Broker, logger: Logger): Promise<OpsServer | null> {
  if (!config.http.enabled) return null;
  const server = new OpsServer(config.http, broker, logger);
  await server.listen();
  return server;
}

/**
 * Exits with status 1 and an error line if the stop started now has not finished within
 * `timeoutMs`. The timer does not keep the process alive.
 */
export function armStopDeadline(logger: Logger, timeoutMs = STOP_TIMEOUT_MS): void {
  const timer = setTimeout(() => {
    logger.error('graceful stop timed out; exiting without waiting further', { timeout_ms: timeoutMs });
    process.exit(1);
  }, timeoutMs);
  timer.unref();
}

/** Re-reads the configuration file and logs what was applied and what needs a restart. */
export function reloadConfiguration(reloader: ConfigReloader, logger: Logger): void {
  const outcome = reloader.reload();
  if (outcome.problems.length > 0) {
    logger.error('configuration not reloaded: the file has problems; the running settings stay in use', { problems: outcome.problems.join('; ') });
    return;
  }
  logger.info('configuration reloaded', {
    applied: outcome.applied.length === 0 ? 'nothing' : outcome.applied.join('; '),
    restart_needed: outcome.restartNeeded.length === 0 ? undefined : outcome.restartNeeded.join(','),
  });
  if (outcome.restartNeeded.length > 0) {
    logger.warn('changed settings take effect only after a restart', { keys: outcome.restartNeeded.join(',') });
  }
}
