/**
 * Re-reading of the configuration file on SIGHUP: applies the settings that can change while
 * the broker runs and lists the changed settings that only take effect after a restart.
 */

import { isDeepStrictEqual } from 'node:util';

import { ConfigError, loadConfigFile } from '../config/load.js';
import type { OutpostConfig } from '../config/schema.js';
import type { Logger } from './logger.js';

/**
 * Keys whose new value a reload applies (log.level) or whose files a reload reads again (the
 * password, ACL and TLS files, re-read by `Broker.reloadSecurity` under the same paths).
 */
const RELOADABLE_KEYS = new Set(['log.level']);

export interface ReloadOutcome {
  /** Changes the reload applied, e.g. `log.level info -> debug`. */
  applied: string[];
  /** Keys whose value changed in the file but that need a restart, e.g. `listeners.0.port`. */
  restartNeeded: string[];
  /** Problems in the file; when not empty, nothing was applied. */
  problems: string[];
}

/** Holds the configuration as last read from the file, to tell what a reload changes. */
export class ConfigReloader {
  private readonly path: string;
  private readonly logger: Logger;
  private readonly verbose: boolean;
  private current: OutpostConfig;

  /**
   * `fileConfig` is the configuration as read from `path` at start, before command-line options
   * such as `-p` changed it. `verbose` (`-v`) keeps the log level at debug whatever the file sets.
   */
  constructor(path: string, fileConfig: OutpostConfig, logger: Logger, verbose: boolean) {
    this.path = path;
    this.current = structuredClone(fileConfig);
    this.logger = logger;
    this.verbose = verbose;
  }

  /** Reads the file again and applies what can change without a restart. */
  reload(): ReloadOutcome {
    let next: OutpostConfig;
    try {
      next = loadConfigFile(this.path);
    } catch (error: unknown) {
      if (!(error instanceof ConfigError)) throw error;
      return { applied: [], restartNeeded: [], problems: error.problems };
    }
    const changed = changedKeys(this.current, next);
    const applied: string[] = [];
    const oldLevel = this.current.log.level;
    const newLevel = next.log.level;
    if (oldLevel !== newLevel) {
      if (this.verbose) {
        applied.push(`log.level ${newLevel} noted, but -v keeps the level at debug`);
      } else {
        this.logger.setLevel(newLevel);
        applied.push(`log.level ${oldLevel} -> ${newLevel}`);
      }
    }
    this.current = next;
    return { applied, restartNeeded: changed.filter((key) => !RELOADABLE_KEYS.has(key)), problems: [] };
  }
}

/** Lists the dotted paths of the leaves that differ between two configurations. */
export function changedKeys(before: unknown, after: unknown, prefix = ''): string[] {
  if (isDeepStrictEqual(before, after)) return [];
  const bothObjects = typeof before === 'object' && before !== null && typeof after === 'object' && after !== null;
  if (!bothObjects || Array.isArray(before) !== Array.isArray(after)) return [prefix === '' ? '(whole file)' : prefix];
  if (Array.isArray(before) && Array.isArray(after) && before.length !== after.length) return [prefix];
  const keys = new Set([...Object.keys(before), ...Object.keys(after)]);
  const changed: string[] = [];
  for (const key of keys) {
    const path = prefix === '' ? key : `${prefix}.${key}`;
    changed.push(...changedKeys((before as Record<string, unknown>)[key], (after as Record<string, unknown>)[key], path));
  }
  return changed;
}
