// Re-reading the configuration file on SIGHUP: what is applied, what is reported as needing a
// restart, and what happens with a broken file.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { loadConfigFile } from '../src/config/load.js';
import { Logger } from '../src/service/logger.js';
import { changedKeys, ConfigReloader } from '../src/service/reload.js';

let directory = '';

beforeEach(() => {
  directory = mkdtempSync(join(tmpdir(), 'outpost-reload-'));
});

afterEach(() => {
  rmSync(directory, { recursive: true, force: true });
});

function writeConfig(level: string, port: number): string {
  const path = join(directory, 'outpost.yaml');
  writeFileSync(path, `listeners:\n  - {name: main, host: 127.0.0.1, port: ${port}}\nlog:\n  level: ${level}\n`);
  return path;
}

function quietLogger(): Logger {
  return new Logger('info', { sink: { write: () => undefined }, journald: false });
}

describe('ConfigReloader', () => {
  it('applies a new log level', () => {
    const path = writeConfig('info', 1883);
    const logger = quietLogger();
    const reloader = new ConfigReloader(path, loadConfigFile(path), logger, false);
    writeConfig('debug', 1883);
    const outcome = reloader.reload();
    expect(outcome.applied).toEqual(['log.level info -> debug']);
    expect(outcome.restartNeeded).toEqual([]);
    expect(logger.isEnabled('debug')).toBe(true);
  });

  it('lists changes that need a restart', () => {
    const path = writeConfig('info', 1883);
    const reloader = new ConfigReloader(path, loadConfigFile(path), quietLogger(), false);
    writeConfig('info', 1884);
    const outcome = reloader.reload();
    expect(outcome.applied).toEqual([]);
    expect(outcome.restartNeeded).toEqual(['listeners.0.port']);
  });

  it('keeps debug under -v', () => {
    const path = writeConfig('info', 1883);
    const logger = new Logger('debug', { sink: { write: () => undefined }, journald: false });
    const reloader = new ConfigReloader(path, loadConfigFile(path), logger, true);
    writeConfig('warn', 1883);
    const outcome = reloader.reload();
    expect(outcome.applied).toEqual(['log.level warn noted, but -v keeps the level at debug']);
    expect(logger.isEnabled('debug')).toBe(true);
  });

  it('applies nothing from an invalid file', () => {
    const path = writeConfig('info', 1883);
    const logger = quietLogger();
    const reloader = new ConfigReloader(path, loadConfigFile(path), logger, false);
    writeFileSync(path, 'log:\n  level: loud\n');
    const outcome = reloader.reload();
    expect(outcome.problems.length).toBeGreaterThan(0);
    expect(outcome.problems.join('\n')).toContain('log.level');
    expect(outcome.applied).toEqual([]);
    expect(logger.isEnabled('debug')).toBe(false);
  });
});

describe('changedKeys', () => {
  it('names changed leaves and resized lists', () => {
    expect(changedKeys({ a: { b: 1, c: 2 }, d: [1] }, { a: { b: 1, c: 3 }, d: [1] })).toEqual(['a.c']);
    expect(changedKeys({ d: [1] }, { d: [1, 2] })).toEqual(['d']);
    expect(changedKeys({ a: 1 }, { a: 1 })).toEqual([]);
  });
});
