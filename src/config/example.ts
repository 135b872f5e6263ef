/**
 * Renders outpost.example.yaml from the configuration schema and the built-in defaults: every key
 * with its description and its default value. Lists that are empty by default (bridges, field
 * buses) get one commented-out item that shows their keys. `scripts/gen-config-docs.mjs` writes
 * the file, and test/config.test.ts fails when the committed file differs.
 */

import { defaultConfig } from './defaults.js';
import { configSchema } from './schema.js';
import { ArraySchema, ObjectSchema, type Fields, type Schema } from './schema-kit.js';

const HEADER = [
  '# Outpost configuration: every key with its default value.',
  '# Loading this file gives the same configuration as running without -c. Copy it to',
  '# /etc/outpost/outpost.yaml (or anywhere, with outpost -c FILE), change what you need and',
  '# delete the rest: an omitted key takes its default. docs/configuration.md is the reference.',
  '# Generated from src/config/schema.ts by `node scripts/gen-config-docs.mjs`.',
];

const WRAP = 96;

/** Returns the text of outpost.example.yaml. */
export function renderExampleConfig(): string {
  const lines = [...HEADER, ''];
  renderFields(configSchema as ObjectSchema<Fields>, defaultConfig() as Record<string, unknown>, '', false, lines);
  return `${lines.join('\n')}\n`;
}

/** Renders the keys of an object; returns the index of the line of its first key. */
function renderFields(schema: ObjectSchema<Fields>, value: Record<string, unknown>, indent: string, commented: boolean, lines: string[]): number {
  let firstKeyLine = -1;
  for (const [key, field] of Object.entries(schema.fields)) {
    // Inside a commented-out example the descriptions get a second `#`, so that removing one
    // `# ` from every line of the example leaves valid YAML with its comments.
    const commentPrefix = commented ? `${indent}# # ` : `${indent}# `;
    for (const line of wrap(`${field.description} Allowed: ${field.describeAllowed()}.`, WRAP - commentPrefix.length)) {
      lines.push(`${commentPrefix}${line}`);
    }
    if (firstKeyLine < 0) firstKeyLine = lines.length;
    renderField(key, field, value[key], indent, commented, lines);
  }
  return firstKeyLine;
}

function renderField(key: string, field: Schema<unknown>, value: unknown, indent: string, commented: boolean, lines: string[]): void {
  const prefix = commented ? `${indent}# ` : indent;
  if (field instanceof ObjectSchema) {
    lines.push(`${prefix}${key}:`);
    renderFields(field as ObjectSchema<Fields>, (value ?? {}) as Record<string, unknown>, `${indent}  `, commented, lines);
    return;
  }
  if (field instanceof ArraySchema && field.item instanceof ObjectSchema) {
    const items = Array.isArray(value) ? (value as Array<Record<string, unknown>>) : [];
    const item = field.item as ObjectSchema<Fields>;
    if (items.length === 0) {
      lines.push(`${prefix}${key}: []`);
      lines.push(`${indent}# For example:`);
      lines.push(`${indent}# ${key}:`);
      renderItem(item, exampleItem(item), `${indent}  `, true, lines);
      return;
    }
    lines.push(`${prefix}${key}:`);
    for (const entry of items) renderItem(item, entry, `${indent}  `, commented, lines);
    return;
  }
  lines.push(`${prefix}${key}: ${scalar(value ?? placeholder(field))}`);
}

/** Renders one list item; its first key goes on the `- ` line, the rest below it. */
function renderItem(schema: ObjectSchema<Fields>, value: Record<string, unknown>, indent: string, commented: boolean, lines: string[]): void {
  const keyIndent = `${indent}  `;
  const first = renderFields(schema, value, keyIndent, commented, lines);
  if (first < 0) return;
  const keyPrefix = commented ? `${keyIndent}# ` : keyIndent;
  const body = lines[first].slice(keyPrefix.length);
  lines[first] = commented ? `${indent}# - ${body}` : `${indent}- ${body}`;
}

/** Builds an example item from the static defaults of an item schema; other keys get placeholders. */
function exampleItem(schema: ObjectSchema<Fields>): Record<string, unknown> {
  const item: Record<string, unknown> = {};
  for (const [key, field] of Object.entries(schema.fields)) {
    if (field.staticDefault !== undefined) {
      item[key] = field.staticDefault.value;
    } else if (field instanceof ObjectSchema) {
      item[key] = exampleItem(field as ObjectSchema<Fields>);
    } else if (field instanceof ArraySchema && field.item instanceof ObjectSchema) {
      item[key] = [exampleItem(field.item as ObjectSchema<Fields>)];
    } else {
      item[key] = placeholder(field);
    }
  }
  return item;
}

function placeholder(field: Schema<unknown>): unknown {
  if (field.derivedDefault !== undefined) return `<derived: ${field.derivedDefault.describe}>`;
  if (field instanceof ArraySchema) return [placeholder(field.item as Schema<unknown>)];
  return `<${field.describeAllowed()}>`;
}

function scalar(value: unknown): string {
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (value === null) return 'null';
  if (Array.isArray(value)) return `[${value.map(scalar).join(', ')}]`;
  if (typeof value === 'object') return JSON.stringify(value);
  const text = String(value);
  return /^[A-Za-z0-9_./-]+$/.test(text) && !/^(true|false|null|yes|no|on|off|~|[-+]?[0-9.]+)$/i.test(text) ? text : JSON.stringify(text);
}

function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/)) {
    if (line.length > 0 && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line.length === 0 ? word : `${line} ${word}`;
    }
  }
  if (line.length > 0) lines.push(line);
  return lines;
}
