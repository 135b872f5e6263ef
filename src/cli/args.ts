/** Parsing of the `outpost` command line into one of its commands. */

import { parseArgs } from 'node:util';

export const USAGE = `Usage: outpost [-c FILE] [-p PORT] [-v]
       outpost check-config -c FILE
       outpost status [-c FILE] [--url URL]
       outpost passwd [-c | -D] [-b] FILE USER [PASSWORD]
       outpost modbus read|write (--tcp HOST[:PORT] | --rtu PATH) --unit ID --address ADDR ...

Runs the Outpost MQTT broker.

Options:
  -c, --config FILE  read the configuration from FILE (YAML); without it the
                     built-in defaults apply: one listener on 127.0.0.1 port 1883
  -p, --port PORT    listen on TCP port PORT (0..65535, 0 picks a free port)
                     instead of the port of the first listener
  -v, --verbose      log at level debug, overriding log.level in the file
      --url URL      (status only) base URL of the operations endpoint, e.g.
                     http://127.0.0.1:9183; overrides http.host and http.port
  -h, --help         print this help and exit
      --version      print the version and exit

Commands:
  check-config       check the file given with -c and print every problem,
                     without starting the broker
  status             print listeners, clients, messages, store, bridges and
                     devices of the gateway running with the configuration in
                     FILE (built-in defaults without -c), read from its
                     operations endpoint (http.enabled must be true); exit
                     status 1 when it cannot be read or reports a problem
  passwd             set or delete a user in a Mosquitto password file, with
                     the options of mosquitto_passwd; see outpost passwd --help
  modbus             read or write one Modbus address of a device and print the
                     value in every byte and word order, to try a device before
                     configuring it; see outpost modbus --help

Exit status: 0 after a clean stop or a valid check, 1 for an invalid
configuration or a failure, 2 for a usage error.
The configuration keys are described in docs/configuration.md.
`;

export type Command =
  | { kind: 'run'; configPath: string | undefined; port: number | undefined; verbose: boolean }
  | { kind: 'check-config'; configPath: string }
  | { kind: 'status'; configPath: string | undefined; url: string | undefined }
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
  url: { type: 'string' },
} as const;

/** Parses the arguments after the program name. Throws UsageError for a bad command line. */
export function parseCommandLine(args: readonly string[]): Command {
  const { values, positionals } = parseOptions(args);
  if (values.help === true) return { kind: 'help' };
  if (values.version === true) return { kind: 'version' };

  if (positionals.length > 1) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[1])}`);
  const subcommand = positionals[0];

  if (subcommand === undefined) {
    if (values.url !== undefined) throw new UsageError('option --url applies to the status command only: outpost status --url URL');
    const port = values.port === undefined ? undefined : parsePort(values.port);
    return { kind: 'run', configPath: values.config, port, verbose: values.verbose === true };
  }
  if (subcommand === 'status') return parseStatus(values);
  if (subcommand !== 'check-config') throw new UsageError(`unknown command ${JSON.stringify(subcommand)}; the commands are check-config, status, passwd and modbus`);

  if (values.config === undefined) throw new UsageError('check-config needs the file to check: outpost check-config -c FILE');
  if (values.port !== undefined) throw new UsageError('option -p does not apply to check-config');
  if (values.verbose === true) throw new UsageError('option -v does not apply to check-config');
  if (values.url !== undefined) throw new UsageError('option --url does not apply to check-config');
  return { kind: 'check-config', configPath: values.config };
}

type ParsedValues = ReturnType<typeof parseOptions>['values'];

function parseStatus(values: ParsedValues): Command {
  if (values.port !== undefined) throw new UsageError('option -p does not apply to status; use --url http://HOST:PORT for the operations endpoint');
  if (values.verbose === true) throw new UsageError('option -v does not apply to status');
  const url = values.url;
  if (url !== undefined && !/^https?:\/\/[^/\s]+/.test(url)) {
    throw new UsageError(`invalid URL ${JSON.stringify(url)} for --url; use http://HOST:PORT, e.g. http://127.0.0.1:9183`);
  }
  return { kind: 'status', configPath: values.config, url };
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
