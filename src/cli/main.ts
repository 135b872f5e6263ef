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
    case 'run':
      await run(command);
      return;
  }
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

async function run(command: Extract<Command, { kind: 'run' }>): Promise<void> {
  const config = command.configPath === undefined ? defaultConfig() : loadOrReport(command.configPath, 'the broker was not started');
  if (config === undefined) return;

  // Like Mosquitto's -p, the port option replaces the port of the first listener only.
  const firstListener = config.listeners[0];
  if (command.port !== undefined && firstListener !== undefined) firstListener.port = command.port;
  logger.setLevel(command.verbose ? 'debug' : config.log.level);

  // Imported here so that --help, --version and check-config do not load the broker.
  const { Broker } = await import('../broker/broker.js');
  const broker = new Broker(config, logger);
  try {
    await broker.start();
  } catch (error: unknown) {
    logger.error('failed to start the broker', { error: describeError(error) });
    await broker.stop().catch((stopError: unknown) => logger.error('failed to stop the broker', { error: describeError(stopError) }));
    process.exit(EXIT_FAILURE);
  }

  let stopping = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (stopping) {
      logger.warn('second signal; exiting without waiting for the broker to stop', { signal });
      process.exit(128 + constants.signals[signal]);
    }
    stopping = true;
    logger.info('stopping', { signal });
    broker.stop().then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error('failed to stop the broker', { error: describeError(error) });
        process.exit(EXIT_FAILURE);
      },
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}

await main(process.argv.slice(2));
