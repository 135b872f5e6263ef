import { parseConfig } from './load.js';
import type { OutpostConfig } from './schema.js';

/**
 * Returns a fresh copy of the built-in configuration, the same as an empty file gives:
 * one mqtt listener named `default` on 127.0.0.1:1883 that allows anonymous clients,
 * data kept in `./data`.
 */
export function defaultConfig(): OutpostConfig {
  return parseConfig('', '<built-in defaults>');
}
