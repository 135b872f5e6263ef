/**
 * Renders docs/configuration.md from the configuration schema. `scripts/gen-config-docs.mjs`
 * writes the file, and test/config.test.ts fails when the committed file differs.
 */

import { configSchema } from './schema.js';
import { ArraySchema, formatDefault, joinPath, ObjectSchema, type Fields, type Schema } from './schema-kit.js';

const INTRO = `Outpost reads one YAML file, given with \`outpost -c FILE\`. Without \`-c\` it runs with the
defaults below. Every key is optional: an omitted key takes its default, and an empty file means
all defaults. \`outpost.example.yaml\` shows every key with its default.

Outpost rejects a file with unknown keys, values of the wrong type or values out of range, and
lists every problem with the file, line, column and key path, for example:

\`\`\`
outpost.yaml:7:20: limits.max_packet_size: 10 is below the minimum 20 (allowed: integer 20..268435455 bytes)
\`\`\`

Run \`outpost check-config -c FILE\` to check a file without starting the broker.
Strings such as \`yes\` and \`on\` are not booleans in YAML 1.2: write \`true\` or \`false\`.`;

/** Returns the Markdown text of docs/configuration.md. */
export function renderConfigReference(): string {
  const sections: string[] = [
    '# Configuration reference',
    '<!-- Generated from src/config/schema.ts by `node scripts/gen-config-docs.mjs`. Edit the schema, not this file. -->',
    INTRO,
  ];
  collectSections(configSchema as ObjectSchema<Fields>, '', sections);
  return `${sections.join('\n\n')}\n`;
}

/** Adds one section with a table for `schema`, then one for each nested object or list of objects. */
function collectSections(schema: ObjectSchema<Fields>, path: string, sections: string[]): void {
  const title = path === '' ? 'Top level' : `\`${path}\``;
  const rows = ['| Key | Allowed values | Default | Description |', '| --- | --- | --- | --- |'];
  const nested: [ObjectSchema<Fields>, string][] = [];

  for (const [key, field] of Object.entries(schema.fields)) {
    const fieldPath = joinPath(path, key);
    rows.push(`| \`${fieldPath}\` | ${cell(field.describeAllowed())} | ${cell(describeDefault(field))} | ${cell(field.description)} |`);
    if (field instanceof ObjectSchema) nested.push([field as ObjectSchema<Fields>, fieldPath]);
    if (field instanceof ArraySchema && field.item instanceof ObjectSchema) {
      nested.push([field.item as ObjectSchema<Fields>, `${fieldPath}[]`]);
    }
  }

  sections.push(`## ${title}`, schema.description, rows.join('\n'));
  for (const [child, childPath] of nested) collectSections(child, childPath, sections);
}

function describeDefault(schema: Schema<unknown>): string {
  if (schema.staticDefault !== undefined) return `\`${formatDefault(schema.staticDefault.value)}\``;
  if (schema.derivedDefault !== undefined) return `derived: ${schema.derivedDefault.describe}`;
  if (schema instanceof ObjectSchema) return 'see the section below';
  return 'required';
}

function cell(text: string): string {
  return text.replaceAll('|', '\\|').replaceAll('\n', ' ');
}
