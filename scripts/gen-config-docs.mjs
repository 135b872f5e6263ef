#!/usr/bin/env node
// Writes docs/configuration.md and outpost.example.yaml from the configuration schema. Run `npm run build` first, because
// this script imports the compiled schema from dist/.

import { existsSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const compiled = new URL('../dist/config/reference.js', import.meta.url);
if (!existsSync(compiled)) {
  process.stderr.write(`${fileURLToPath(compiled)} not found; run npm run build first\n`);
  process.exit(1);
}

const { renderConfigReference } = await import(compiled.href);
const target = fileURLToPath(new URL('../docs/configuration.md', import.meta.url));
writeFileSync(target, renderConfigReference());
process.stdout.write(`wrote ${target}\n`);

const { renderExampleConfig } = await import(new URL('../dist/config/example.js', import.meta.url).href);
const example = fileURLToPath(new URL('../outpost.example.yaml', import.meta.url));
writeFileSync(example, renderExampleConfig());
process.stdout.write(`wrote ${example}\n`);
