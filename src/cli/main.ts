#!/usr/bin/env node
/**
 * The `outpost` command: runs the broker, or checks a configuration file with `check-config`.
 * Exit status: 0 after a clean stop, 1 for an invalid configuration or a failure, 2 for a usage error.
 */

import { readFileSync } from 'node:fs';
import { constants } from 'node:os';

import { defaultConfig } from '../config/defaults.js';
import { ConfigError, loadConfigFile } from '../config/load.js';
import type { OutpostConfig } from '../config/schema.js';
import { Logger } from '../service/logger.js';
import type { OpsServer } from '../service/http.js';
import { SystemdNotifier } from '../service/systemd.js';
import { parseCommandLine, USAGE, UsageError, type Command } from './args.js';

const EXIT_FAILURE = 1;
const EXIT_USAGE = 2;

const logger = new Logger('info');

// This handler writes an uncaught error to the log and exits, so the process never runs on in an
// unknown state. Node 20 raises unhandled promise rejections as exceptions, so they arrive here too.
process.on('uncaughtException', (error: unknown, origin: string) => {
  try {
    logger.error('uncaught exception; exiting', { origin, error: describeError(error), stack: error instanceof Error ? error.stack : undefined });
  } finally {
    process.exit(EXIT_FAILURE);
  }
});

function describeError(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

async function main(args: readonly string[]): Promise<void> {
  if (args[0] === 'passwd') {
    // `outpost passwd` takes the options of mosquitto_passwd, so it parses its own arguments.
    const { runPasswd } = await import('./passwd.js');
    process.exitCode = await runPasswd(args.slice(1));
    return;
  }
  if (args[0] === 'modbus') {
    // `outpost modbus` tries a Modbus device from the shell and parses its own arguments.
    const { runModbusCommand } = await import('../field/cli.js');
    process.exitCode = await runModbusCommand(args.slice(1));
    return;
  }
  let command: Command;
  try {
    command = parseCommandLine(args);
  } catch (error: unknown) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`outpost: ${error.message}\nRun 'outpost --help' for usage.\n`);
    process.exitCode = EXIT_USAGE;
    return;
  }

  switch (command.kind) {
    case 'help':
      process.stdout.write(USAGE);
      return;
    case 'version':
      process.stdout.write(`${readVersion()}\n`);
      return;
    case 'check-config':
      checkConfig(command.configPath);
      return;
    case 'status':
      await showStatus(command);
      return;
    case 'run':
      await run(command);
      return;
  }
}

/** Prints the status of a running gateway, found through --url or the `http` section of the configuration. */
async function showStatus(command: Extract<Command, { kind: 'status' }>): Promise<void> {
  const { operationsBaseUrl, printStatus, StatusError } = await import('./status.js');
  let baseUrl = command.url;
  if (baseUrl === undefined) {
    const config = command.configPath === undefined ? defaultConfig() : loadOrReport(command.configPath, 'the status was not read');
    if (config === undefined) return;
    try {
      baseUrl = operationsBaseUrl(config.http, command.configPath ?? 'the built-in defaults');
    } catch (error: unknown) {
      if (!(error instanceof StatusError)) throw error;
      process.stderr.write(`outpost: ${error.message}\n`);
      process.exitCode = EXIT_FAILURE;
      return;
    }
  }
  process.exitCode = await printStatus(baseUrl);
}

/** Returns the version from package.json, which sits two levels above this file in src/ and dist/. */
function readVersion(): string {
  const packageFile = new URL('../../package.json', import.meta.url);
  const manifest: unknown = JSON.parse(readFileSync(packageFile, 'utf8'));
  if (typeof manifest === 'object' && manifest !== null && 'version' in manifest && typeof manifest.version === 'string') {
    return manifest.version;
  }
  throw new Error(`no version string in ${packageFile.pathname}`);
}

function checkConfig(path: string): void {
  const config = loadOrReport(path, 'the file is not valid');
  if (config === undefined) return;
  process.stdout.write(`${path}: configuration is valid\n`);
}

/**
 * Loads the file, or prints every problem and then `outcome` to stderr, sets exit status 1 and
 * returns undefined.
 */
function loadOrReport(path: string, outcome: string): OutpostConfig | undefined {
  try {
    return loadConfigFile(path);
  } catch (error: unknown) {
    if (!(error instanceof ConfigError)) throw error;
    const count = error.problems.length;
    const summary = `${count} configuration ${count === 1 ? 'problem' : 'problems'}; ${outcome}`;
    process.stderr.write(`${error.problems.join('\n')}\noutpost: ${summary}\n`);
    process.exitCode = EXIT_FAILURE;
    return undefined;
  }
}

/**
 * Reads the password files, ACL files and TLS certificates and keys again (on SIGHUP) and logs
 * each file reloaded. A file with a problem is logged and its old contents stay in use.
 */
function reloadSecurityFiles(broker: { reloadSecurity(): { reloaded: string[]; failed: string[] } }): void {
  const { reloaded, failed } = broker.reloadSecurity();
  for (const file of reloaded) logger.info('reloaded', { file });
  for (const problem of failed) logger.error('reload failed; the old file stays in use', { problem });
  if (reloaded.length === 0 && failed.length === 0) logger.info('SIGHUP received; no password, ACL or TLS files are configured');
}

async function run(command: Extract<Command, { kind: 'run' }>): Promise<void> {
  const config = command.configPath === undefined ? defaultConfig() : loadOrReport(command.configPath, 'the broker was not started');
  if (config === undefined) return;
  const { ConfigReloader } = await import('../service/reload.js');
  const { armStopDeadline, reloadConfiguration, startOpsServer } = await import('./service-control.js');
  // SIGHUP compares the file with its contents at start, before -p changed the configuration.
  const reloader = command.configPath === undefined ? null : new ConfigReloader(command.configPath, config, logger, command.verbose);

  // Like Mosquitto's -p, the port option replaces the port of the first listener only.
  const firstListener = config.listeners[0];
  if (command.port !== undefined && firstListener !== undefined) firstListener.port = command.port;
  logger.setLevel(command.verbose ? 'debug' : config.log.level);

  // Signals are handled from the start: a stop requested while starting waits until the start
  // is complete, and then stops everything that was started.
  let pendingSignal: NodeJS.Signals | null = null;
  let onSignal = (signal: NodeJS.Signals): void => {
    pendingSignal = signal;
  };
  process.on('SIGINT', (signal: NodeJS.Signals) => onSignal(signal));
  process.on('SIGTERM', (signal: NodeJS.Signals) => onSignal(signal));

  // Under systemd (Type=notify) these calls send STATUS=, READY=1 and STOPPING=1; elsewhere they do nothing.
  const systemd = new SystemdNotifier(logger);
  await systemd.notifyStatus('starting: opening the store and binding the listeners');

  // Imported here so that --help, --version and check-config do not load the broker.
  const { Broker } = await import('../broker/broker.js');
  // Loaded before the broker starts, so that loading it does not delay the signal handlers below.
  const { startFieldAdapter } = await import('../field/index.js');
  const { BridgeManager } = await import('../bridge/index.js');
  const broker = new Broker(config, logger);
  // Bridges subscribe before the listeners bind, so that no accepted message misses an outbox;
  // their outboxes live in the broker's store, so they connect after it opened.
  const bridges = new BridgeManager(broker, config.bridges, logger);
  bridges.attach();
  try {
    await broker.start();
  } catch (error: unknown) {
    logger.error('failed to start the broker', { error: describeError(error) });
    await systemd.notifyStatus(`failed to start: ${describeError(error)}`);
    await broker.stop().catch((stopError: unknown) => logger.error('failed to stop the broker', { error: describeError(stopError) }));
    process.exit(EXIT_FAILURE);
  }

  // Registered before any further await, so a signal right after start neither ends the process
  // (the default action of SIGHUP and SIGTERM) nor skips the graceful stop.
  process.on('SIGHUP', () => {
    if (reloader !== null) reloadConfiguration(reloader, logger);
    reloadSecurityFiles(broker);
  });
  let ops: OpsServer | null = null;
  let field: Awaited<ReturnType<typeof startFieldAdapter>> | null = null;
  let stopping = false;
  onSignal = (signal: NodeJS.Signals): void => {
    if (stopping) {
      logger.warn('second signal; exiting without waiting for the broker to stop', { signal });
      process.exit(128 + constants.signals[signal]);
    }
    stopping = true;
    logger.info('stopping', { signal });
    armStopDeadline(logger);
    const stoppingSent = systemd.notifyStopping('stopping: disconnecting clients');
    bridges.stop();
    (field?.stop() ?? Promise.resolve())
      .catch((error: unknown) => logger.error('failed to stop the field adapter', { error: describeError(error) }))
      .then(() => broker.stop())
      .then(() => ops?.close())
      .then(() => stoppingSent)
      .then(
        () => process.exit(0),
        (error: unknown) => {
          logger.error('failed to stop the broker', { error: describeError(error) });
          process.exit(EXIT_FAILURE);
        },
      );
  };
  if (pendingSignal !== null) onSignal(pendingSignal);

  ops = await startOpsServer(config, broker, logger).catch(async (error: unknown) => {
    logger.error('failed to start the operations endpoint', { error: describeError(error) });
    await broker.stop().catch((stopError: unknown) => logger.error('failed to stop the broker', { error: describeError(stopError) }));
    process.exit(EXIT_FAILURE);
  });

  bridges.start();

  // The field adapter publishes through the broker, so it starts after it and stops before it.
  try {
    field = await startFieldAdapter(broker, config, logger);
  } catch (error: unknown) {
    logger.error('failed to start the field adapter', { error: describeError(error) });
    bridges.stop();
    await broker.stop().catch((stopError: unknown) => logger.error('failed to stop the broker', { error: describeError(stopError) }));
    process.exit(EXIT_FAILURE);
  }

  ops?.setBridgeSource(() => bridges.statuses());
  const fieldAdapter = field.adapter;
  if (fieldAdapter !== null) ops?.setDeviceSource(() => fieldAdapter.deviceStatuses());

  // READY=1 only now: the store is open, every listener is bound and the adapters have started.
  const addresses = broker.listenerAddresses().map((address) => `${address.address}:${address.port}`);
  await systemd.notifyReady(`running: listening on ${addresses.join(', ')}`);
  systemd.startWatchdog();

  logger.info('ready', { listeners: addresses.join(' ') });
}

await main(process.argv.slice(2));
