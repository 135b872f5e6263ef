#!/usr/bin/env node
// Lists the normative statement ids of the MQTT specifications, such as [MQTT-3.1.2-4], that
// the source tags where it enforces them (src/) and the tests tag where they check them (test/).
//
//   node scripts/spec-coverage.mjs            table: id, source files, test files
//   node scripts/spec-coverage.mjs --missing  ids tagged in src/ but in no test
//
// An id counts wherever it appears in a .ts, .mts, .js or .mjs file, in a comment, a string or
// a test name. The same id can name different statements in MQTT 3.1.1 and MQTT 5.0, so this
// script only matches the text. Exit status: 0, or 2 for an unknown option.

import { readdirSync, readFileSync, existsSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const repositoryRoot = join(dirname(fileURLToPath(import.meta.url)), '..');
const sourceExtensions = /\.(ts|mts|js|mjs)$/;
const statementIdPattern = /MQTT-\d+(?:\.\d+)+-\d+/g;

const usage = 'usage: node scripts/spec-coverage.mjs [--missing]';

const options = process.argv.slice(2);
if (options.includes('--help') || options.includes('-h')) {
  console.log(usage);
  process.exit(0);
}
const unknown = options.filter((option) => option !== '--missing');
if (unknown.length > 0) {
  console.error(`spec-coverage: unknown option ${unknown.join(' ')}\n${usage}`);
  process.exit(2);
}

const enforcedIn = collectStatementIds('src');
const testedIn = collectStatementIds('test');

if (options.includes('--missing')) {
  printMissing(enforcedIn, testedIn);
} else {
  printTable(enforcedIn, testedIn);
}

/** Maps each statement id found under `folder` to the sorted files (relative to the repository) that contain it. */
function collectStatementIds(folder) {
  const idsToFiles = new Map();
  const absoluteFolder = join(repositoryRoot, folder);
  if (!existsSync(absoluteFolder)) {
    return idsToFiles;
  }

  const files = readdirSync(absoluteFolder, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile() && sourceExtensions.test(entry.name))
    .map((entry) => relative(repositoryRoot, join(entry.parentPath ?? entry.path, entry.name)))
    .sort();

  for (const file of files) {
    const text = readFileSync(join(repositoryRoot, file), 'utf8');
    for (const match of text.matchAll(statementIdPattern)) {
      const id = match[0];
      if (!idsToFiles.has(id)) {
        idsToFiles.set(id, new Set());
      }
      idsToFiles.get(id).add(file);
    }
  }
  return idsToFiles;
}

/** Orders ids by their numbers, so MQTT-3.1.2-10 follows MQTT-3.1.2-9. */
function compareStatementIds(left, right) {
  const leftNumbers = left.match(/\d+/g).map(Number);
  const rightNumbers = right.match(/\d+/g).map(Number);
  for (let index = 0; index < Math.max(leftNumbers.length, rightNumbers.length); index += 1) {
    const difference = (leftNumbers[index] ?? -1) - (rightNumbers[index] ?? -1);
    if (difference !== 0) {
      return difference;
    }
  }
  return 0;
}

function formatFiles(files) {
  return files ? [...files].join(', ') : '-';
}

function printTable(enforced, tested) {
  const ids = [...new Set([...enforced.keys(), ...tested.keys()])].sort(compareStatementIds);
  if (ids.length === 0) {
    console.log('spec-coverage: no statement ids such as [MQTT-3.1.2-4] found in src/ or test/');
    return;
  }

  const rows = ids.map((id) => [id, formatFiles(enforced.get(id)), formatFiles(tested.get(id))]);
  const header = ['id', 'enforced in (src)', 'tested in (test)'];
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column].length)));
  const formatRow = (cells) => `| ${cells.map((cell, column) => cell.padEnd(widths[column])).join(' | ')} |`;

  console.log(formatRow(header));
  console.log(`|${widths.map((width) => '-'.repeat(width + 2)).join('|')}|`);
  for (const row of rows) {
    console.log(formatRow(row));
  }

  const untested = ids.filter((id) => enforced.has(id) && !tested.has(id)).length;
  const unenforced = ids.filter((id) => !enforced.has(id)).length;
  console.log(`\n${ids.length} ids: ${enforced.size} in src/, ${tested.size} in test/, ${untested} in src/ but in no test, ${unenforced} only in tests`);
}

function printMissing(enforced, tested) {
  const missing = [...enforced.keys()].filter((id) => !tested.has(id)).sort(compareStatementIds);
  const idWidth = Math.max(0, ...missing.map((id) => id.length));
  for (const id of missing) {
    console.log(`${id.padEnd(idWidth)}  ${formatFiles(enforced.get(id))}`);
  }
  console.log(`${missing.length} of ${enforced.size} ids tagged in src/ are in no test`);
}
