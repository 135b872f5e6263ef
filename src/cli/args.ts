/** Parsing of the `outpost` command line into one of its commands. */

import { parseArgs } from 'node:util';

export const USAGE = `Usage: outpost [-c FILE] [-p PORT] [-v]
       outpost check-config -c FILE

Runs the Outpost MQTT broker.

Options:
  -c, --config FILE  read the configuration from FILE (YAML); without it the
                     built-in defaults apply: one listener on 127.0.0.1 port 1883
  -p, --port PORT    listen on TCP port PORT (0..65535, 0 picks a free port)
                     instead of the port of the first listener
  -v, --verbose      log at level debug, overriding log.level in the file
  -h, --help         print this help and exit
      --version      print the version and exit

Commands:
  check-config       check the file given with -c and print every problem,
                     without starting the broker

Exit status: 0 after a clean stop or a valid check, 1 for an invalid
configuration or a failure, 2 for a usage error.
The configuration keys are described in docs/configuration.md.
`;

export type Command =
  | { kind: 'run'; configPath: string | undefined; port: number | undefined; verbose: boolean }
  | { kind: 'check-config'; configPath: string }
  | { kind: 'help' }
  | { kind: 'version' };

/** An invalid command line. The message names the argument and what is wrong with it. */
export class UsageError extends Error {
  readonly code = 'ERR_USAGE';

  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

const OPTIONS = {
  config: { type: 'string', short: 'c' },
  port: { type: 'string', short: 'p' },
  verbose: { type: 'boolean', short: 'v' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean' },
} as const;

/** Parses the arguments after the program name. Throws UsageError for a bad command line. */
export function parseCommandLine(args: readonly string[]): Command {
  const { values, positionals } = parseOptions(args);
  if (values.help === true) return { kind: 'help' };
  if (values.version === true) return { kind: 'version' };

  if (positionals.length > 1) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[1])}`);
  const subcommand = positionals[0];

  if (subcommand === undefined) {
    const port = values.port === undefined ? undefined : parsePort(values.port);
    return { kind: 'run', configPath: values.config, port, verbose: values.verbose === true };
  }
  if (subcommand !== 'check-config') throw new UsageError(`unknown command ${JSON.stringify(subcommand)}; the only command is check-config`);

  if (values.config === undefined) throw new UsageError('check-config needs the file to check: outpost check-config -c FILE');
  if (values.port !== undefined) throw new UsageError('option -p does not apply to check-config');
  if (values.verbose === true) throw new UsageError('option -v does not apply to check-config');
  return { kind: 'check-config', configPath: values.config };
}

function parseOptions(args: readonly string[]): ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>> {
  try {
    return parseArgs({ args: [...args], options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error: unknown) {
    throw new UsageError(describeParseError(error));
  }
}

function describeParseError(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const code = 'code' in error ? error.code : undefined;
  if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
    // Node's message names the option in quotes and then explains `--`, which does not apply here.
    const option = /'([^']*)'/.exec(error.message)?.[1];
    return option === undefined ? error.message : `unknown option ${option}`;
  }
  return error.message;
}

function parsePort(text: string): number {
  const port = /^\d{1,5}$/.test(text) ? Number(text) : NaN;
  if (!(port >= 0 && port <= 65535)) throw new UsageError(`invalid port ${JSON.stringify(text)} for -p; use an integer from 0 to 65535`);
  return port;
}
