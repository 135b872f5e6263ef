/** Reading and validating the YAML configuration file. */

import { readFileSync } from 'node:fs';

import { LineCounter, parseDocument, Scalar, type YAMLError } from 'yaml';

import { configSchema, type OutpostConfig } from './schema.js';
import { INVALID, keyPaths, ValidationContext, type Problem } from './schema-kit.js';

/** The configuration file is missing, unreadable or invalid; `problems` has one line per problem. */
export class ConfigError extends Error {
  readonly code = 'ERR_CONFIG_INVALID';

  constructor(readonly problems: string[]) {
    super(problems.join('\n'));
    this.name = 'ConfigError';
  }
}

/**
 * Reads, validates and fills in defaults for the configuration file at `path`.
 * Throws ConfigError when the file cannot be read or has any problem.
 */
export function loadConfigFile(path: string): OutpostConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error: unknown) {
    throw new ConfigError([`${path}: ${describeReadError(error)}`]);
  }
  return parseConfig(text, path);
}

function describeReadError(error: unknown): string {
  const code = error instanceof Error && 'code' in error ? error.code : undefined;
  switch (code) {
    case 'ENOENT':
      return 'configuration file not found; check the path';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied reading the configuration file';
    case 'EISDIR':
      return 'is a directory, not a configuration file';
    default:
      return `cannot read the configuration file: ${error instanceof Error ? error.message : String(error)}`;
  }
}

/**
 * Validates configuration `text` and fills in defaults; an empty text means all defaults.
 * `fileName` starts every problem line. Throws ConfigError listing every problem in file order.
 */
export function parseConfig(text: string, fileName: string): OutpostConfig {
  const lineCounter = new LineCounter();
  const document = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });

  const locate = (offset: number | undefined): string => {
    if (offset === undefined) return fileName;
    const { line, col } = lineCounter.linePos(offset);
    return `${fileName}:${line}:${col}`;
  };

  // Syntax problems make the tree unreliable, so validation only runs on a clean parse.
  const syntaxProblems = [...document.errors, ...document.warnings];
  if (syntaxProblems.length > 0) {
    throw new ConfigError(syntaxProblems.map((error) => `${locate(error.pos[0])}: ${describeYamlError(error)}`));
  }

  const context = new ValidationContext(document, keyPaths(configSchema));
  const root = document.contents ?? new Scalar(null);
  const config = configSchema.validate(root, { path: '', offset: root.range?.[0] }, context);
  if (config === INVALID || context.problems.length > 0) {
    throw new ConfigError(sortByOffset(context.problems).map((problem) => formatProblem(problem, locate)));
  }
  return config;
}

function describeYamlError(error: YAMLError): string {
  if (error.code === 'MULTIPLE_DOCS') {
    return 'YAML syntax error: the file contains more than one YAML document; remove the `---` line that starts the second';
  }
  const kind = error.name === 'YAMLWarning' ? 'YAML warning' : 'YAML syntax error';
  return `${kind}: ${error.message}`;
}

function sortByOffset(problems: Problem[]): Problem[] {
  return [...problems].sort((a, b) => (a.offset ?? 0) - (b.offset ?? 0));
}

function formatProblem(problem: Problem, locate: (offset: number | undefined) => string): string {
  const where = locate(problem.offset);
  if (problem.path === '') return `${where}: top level: ${problem.message}`;
  return `${where}: ${problem.path}: ${problem.message}`;
}
