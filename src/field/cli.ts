/**
 * `outpost modbus read|write`: tries a bus, unit, address and type from the shell before they go
 * into the configuration, and prints the registers with their value decoded in every word order.
 */

import { parseArgs } from 'node:util';

import { Logger } from '../service/logger.js';
import { formatModiconAddress, isBitTable, isWritableTable, MODBUS_TABLES, parseModiconAddress, readFunctionCode, type ModbusTable } from './address.js';
import { DATA_TYPES, decodeRegisters, registerCount, WORD_ORDERS, type DataType, type FieldValue, type WordOrder } from './codec.js';
import { describeModbusError } from './modbus/errors.js';
import type { ModbusRequest } from './modbus/pdu.js';
import { RtuTransport } from './modbus/rtu-transport.js';
import { TcpTransport } from './modbus/tcp-transport.js';
import type { ModbusTransport } from './modbus/transport.js';
import type { PointSpec } from './model.js';
import { parseSetPayload } from './values.js';
import { prepareWrite } from './write-request.js';

export const MODBUS_USAGE = `Usage: outpost modbus read  CONNECTION --unit ID --address ADDR [options]
       outpost modbus write CONNECTION --unit ID --address ADDR --value VALUE [options]

Reads or writes one Modbus address and prints the registers with the value
decoded in every byte and word order (ABCD, CDAB, BADC, DCBA).

Connection (one of):
  --tcp HOST[:PORT]     Modbus TCP device or gateway; PORT defaults to 502
  --rtu PATH            Modbus RTU on the serial device PATH, with
    --baud N            line speed in bit/s (default 9600)
    --parity P          none, even or odd (default none)
    --data-bits N       5..8 (default 8)
    --stop-bits N       1 or 2 (default 1)

Options:
  --unit ID             unit id (slave address), 0..255
  --address ADDR        0-based address, or a Modicon reference such as 40001
                        or 4x0001 (which also sets the table)
  --table T             holding_register (default), input_register, coil or
                        discrete_input; short forms: holding, input, coil, discrete
  --type T              ${DATA_TYPES.join(', ')};
                        default uint16 (bool for coils and discrete inputs)
  --order O             byte and word order for write (default ABCD)
  --length N            registers of a string (2 characters each)
  --count N             registers or bits to read (default: what the type needs)
  --value V             value to write: a number, true/false, or text;
                        write negative numbers as --value=-3.75
  --timeout MS          response timeout in milliseconds (default 1000)
  -h, --help            print this help

Exit status: 0 on success, 1 when the device does not respond or rejects the
request, 2 for a usage error.
`;

export interface CliOutput {
  stdout(text: string): void;
  stderr(text: string): void;
}

const defaultOutput: CliOutput = {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
};

class CliUsageError extends Error {}

const OPTIONS = {
  tcp: { type: 'string' },
  rtu: { type: 'string' },
  baud: { type: 'string' },
  parity: { type: 'string' },
  'data-bits': { type: 'string' },
  'stop-bits': { type: 'string' },
  unit: { type: 'string' },
  address: { type: 'string' },
  table: { type: 'string' },
  type: { type: 'string' },
  order: { type: 'string' },
  length: { type: 'string' },
  count: { type: 'string' },
  value: { type: 'string' },
  timeout: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

const TABLE_ALIASES: Record<string, ModbusTable> = { holding: 'holding_register', input: 'input_register', discrete: 'discrete_input', coil: 'coil' };

interface CliRequest {
  action: 'read' | 'write';
  connection: { kind: 'tcp'; host: string; port: number } | { kind: 'rtu'; path: string; baud: number; parity: 'none' | 'even' | 'odd'; dataBits: number; stopBits: number };
  unit: number;
  table: ModbusTable;
  address: number;
  type: DataType;
  order: WordOrder;
  length: number;
  count: number;
  value: string | undefined;
  timeoutMs: number;
}

/** Runs `outpost modbus ...` with the arguments after `modbus`. Returns the exit status. */
export async function runModbusCommand(args: readonly string[], output: CliOutput = defaultOutput): Promise<number> {
  let request: CliRequest;
  try {
    const parsed = parseCliArgs(args);
    if (parsed === 'help') {
      output.stdout(MODBUS_USAGE);
      return 0;
    }
    request = parsed;
  } catch (error: unknown) {
    if (!(error instanceof CliUsageError)) throw error;
    output.stderr(`outpost modbus: ${error.message}\nRun 'outpost modbus --help' for usage.\n`);
    return 2;
  }

  const logger = new Logger('error', { sink: { write: (line) => output.stderr(line) }, journald: false });
  const transport = await openTransport(request, logger);
  if (typeof transport === 'string') {
    output.stderr(`outpost modbus: ${transport}\n`);
    return 1;
  }
  try {
    if (request.action === 'write') await performWrite(request, transport, output);
    await performRead(request, transport, output);
    return 0;
  } catch (error: unknown) {
    output.stderr(`outpost modbus: ${request.action} failed: ${describeModbusError(error)}\n`);
    return 1;
  } finally {
    await transport.stop();
  }
}

function parseCliArgs(args: readonly string[]): CliRequest | 'help' {
  let parsed: ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>;
  try {
    parsed = parseArgs({ args: [...args], options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error: unknown) {
    const message = error instanceof Error ? (error.message.split('\n')[0] ?? error.message) : String(error);
    // parseArgs takes `--value -3` for two options; the `=` form keeps a negative number a value.
    const hint = message.includes('ambiguous') ? '; write a negative value as --value=-3.75' : '';
    throw new CliUsageError(`${message}${hint}`);
  }
  const { values, positionals } = parsed;
  if (values.help === true) return 'help';
  const action = positionals[0];
  if (action !== 'read' && action !== 'write') throw new CliUsageError(action === undefined ? 'missing action: read or write' : `unknown action ${JSON.stringify(action)}; use read or write`);
  if (positionals.length > 1) throw new CliUsageError(`unexpected argument ${JSON.stringify(positionals[1])}`);

  if ((values.tcp === undefined) === (values.rtu === undefined)) throw new CliUsageError('give exactly one connection: --tcp HOST[:PORT] or --rtu PATH');
  const connection: CliRequest['connection'] =
    values.tcp !== undefined
      ? parseTcp(values.tcp)
      : {
          kind: 'rtu',
          path: values.rtu ?? '',
          baud: parseInteger('--baud', values.baud, 9600, 50, 4_000_000),
          parity: parseChoice('--parity', values.parity ?? 'none', ['none', 'even', 'odd'] as const),
          dataBits: parseInteger('--data-bits', values['data-bits'], 8, 5, 8),
          stopBits: parseInteger('--stop-bits', values['stop-bits'], 1, 1, 2),
        };

  if (values.unit === undefined) throw new CliUsageError('missing --unit ID');
  if (values.address === undefined) throw new CliUsageError('missing --address ADDR');
  const { table, address } = parseAddress(values.address, values.table);
  let type: DataType = isBitTable(table) ? 'bool' : 'uint16';
  if (values.type !== undefined) type = parseChoice('--type', values.type, DATA_TYPES);
  if (isBitTable(table) && type !== 'bool') throw new CliUsageError(`--type ${type} does not fit table ${table}, whose values are bits`);
  const length = parseInteger('--length', values.length, type === 'string' ? 0 : 1, 1, 125);
  if (type === 'string' && values.length === undefined) throw new CliUsageError('type string needs --length N (registers)');
  const needed = isBitTable(table) ? 1 : registerCount(type, length);
  const count = parseInteger('--count', values.count, needed, 1, isBitTable(table) ? 2000 : 125);
  if (count < needed) throw new CliUsageError(`--count ${count} is below the ${needed} registers type ${type} needs`);
  if (address + count > 0x10000) throw new CliUsageError(`address ${address} plus count ${count} passes the last address 65535`);
  if (action === 'write') {
    if (values.value === undefined) throw new CliUsageError('write needs --value VALUE');
    if (!isWritableTable(table)) throw new CliUsageError(`table ${table} is read-only in Modbus; write to a coil or holding register`);
  }

  return {
    action,
    connection,
    unit: parseInteger('--unit', values.unit, 1, 0, 255),
    table,
    address,
    type,
    order: parseChoice('--order', values.order ?? 'ABCD', WORD_ORDERS),
    length,
    count,
    value: values.value,
    timeoutMs: parseInteger('--timeout', values.timeout, 1000, 10, 60_000),
  };
}

function parseTcp(text: string): CliRequest['connection'] {
  const match = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(text);
  if (match === null) throw new CliUsageError(`invalid --tcp ${JSON.stringify(text)}; use HOST or HOST:PORT`);
  const host = (match[1] ?? '').replace(/^\[|\]$/g, '');
  return { kind: 'tcp', host, port: parseInteger('--tcp port', match[2], 502, 1, 65_535) };
}

function parseAddress(text: string, tableOption: string | undefined): { table: ModbusTable; address: number } {
  const optionTable = tableOption === undefined ? undefined : (TABLE_ALIASES[tableOption] ?? parseChoice('--table', tableOption, MODBUS_TABLES));
  if (/^\d+$/.test(text) && optionTable !== undefined) {
    return { table: optionTable, address: parseInteger('--address', text, 0, 0, 65_535) };
  }
  if (/^\d+$/.test(text) && !/^[0134](\d{4,5})$/.test(text)) {
    return { table: 'holding_register', address: parseInteger('--address', text, 0, 0, 65_535) };
  }
  if (/^\d+$/.test(text) && optionTable === undefined) {
    throw new CliUsageError(
      `--address ${text} is ambiguous: add --table for the 0-based address ${text}, or write the Modicon reference with an x, e.g. ${text[0]}x${text.slice(1)}`,
    );
  }
  const parsed = parseModiconAddress(text);
  if (typeof parsed === 'string') throw new CliUsageError(`--address: ${parsed}`);
  if (optionTable !== undefined && optionTable !== parsed.table) throw new CliUsageError(`--table ${optionTable} differs from table ${parsed.table} of address ${text}`);
  return parsed;
}

function parseInteger(option: string, text: string | undefined, fallback: number, min: number, max: number): number {
  if (text === undefined) return fallback;
  const value = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!(value >= min && value <= max)) throw new CliUsageError(`invalid ${option} ${JSON.stringify(text)}; use an integer from ${min} to ${max}`);
  return value;
}

function parseChoice<const V extends string>(option: string, text: string, allowed: readonly V[]): V {
  const match = allowed.find((value) => value === text);
  if (match === undefined) throw new CliUsageError(`invalid ${option} ${JSON.stringify(text)}; use one of ${allowed.join(', ')}`);
  return match;
}

async function openTransport(request: CliRequest, logger: Logger): Promise<ModbusTransport | string> {
  let opened = (): void => undefined;
  const openedPromise = new Promise<void>((resolve) => {
    opened = resolve;
  });
  const events = { open: () => opened(), close: () => undefined };
  const connection = request.connection;
  const transport: ModbusTransport =
    connection.kind === 'tcp'
      ? new TcpTransport('cli', { host: connection.host, port: connection.port, reconnect_min_ms: 60_000, reconnect_max_ms: 60_000, connect_timeout_ms: request.timeoutMs + 2000 }, events, logger)
      : new RtuTransport(
          'cli',
          {
            path: connection.path,
            baud_rate: connection.baud,
            parity: connection.parity,
            data_bits: connection.dataBits,
            stop_bits: connection.stopBits,
            reconnect_min_ms: 60_000,
            reconnect_max_ms: 60_000,
          },
          events,
          logger,
        );
  transport.start();
  const waitMs = request.timeoutMs + 2000;
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), waitMs);
  });
  // A failed open schedules a retry a minute later, so the first failure ends the command.
  const failed = new Promise<'failed'>((resolve) => {
    const check = setInterval(() => {
      if (!transport.isOpen && transport.failedAttempts > 0) {
        clearInterval(check);
        resolve('failed');
      }
    }, 20);
    void openedPromise.then(() => clearInterval(check));
    void timedOut.then(() => clearInterval(check));
  });
  const outcome = await Promise.race([openedPromise.then(() => 'open' as const), timedOut, failed]);
  clearTimeout(timer);
  if (outcome === 'open') return transport;
  const reason = transport.closedReason;
  await transport.stop();
  const target = connection.kind === 'tcp' ? `${connection.host}:${connection.port}` : connection.path;
  return outcome === 'timeout' ? `could not open ${target} within ${waitMs} ms` : `could not open ${target}: ${reason}`;
}

function cliPoint(request: CliRequest): PointSpec {
  return {
    name: 'cli',
    deviceName: 'cli',
    table: request.table,
    address: request.address,
    type: request.type,
    order: request.order,
    stringRegisters: request.length,
    bit: undefined,
    count: isBitTable(request.table) ? 1 : registerCount(request.type, request.length),
    scale: 1,
    offset: 0,
    precision: undefined,
    unit: '',
    onChange: false,
    deadband: 0,
    writable: true,
    qos: 0,
    retain: false,
    topic: 'cli',
  };
}

async function performWrite(request: CliRequest, transport: ModbusTransport, output: CliOutput): Promise<void> {
  const point = cliPoint(request);
  const value = parseSetPayload(point, Buffer.from(request.value ?? ''));
  if (typeof value === 'object') throw new Error(`--value: ${value.error}`);
  const prepared = prepareWrite(point, value);
  if (prepared.kind !== 'request') throw new Error('bit writes are not supported here');
  const started = performance.now();
  await transport.transact(request.unit, prepared.request, request.timeoutMs);
  let registers: number[] = [];
  if (prepared.request.kind === 'write-registers') registers = prepared.request.values;
  if (prepared.request.kind === 'write-register') registers = [prepared.request.value];
  const detail = registers.length > 0 ? ` registers ${registers.map(hex).join(' ')}` : '';
  output.stdout(`wrote ${String(value)} as ${request.type} ${request.order} to unit ${request.unit} ${request.table} ${request.address}${detail} in ${Math.round(performance.now() - started)} ms; reading back:\n`);
}

async function performRead(request: CliRequest, transport: ModbusTransport, output: CliOutput): Promise<void> {
  const modbusRequest: ModbusRequest = { kind: 'read', functionCode: readFunctionCode(request.table), address: request.address, count: request.count };
  const started = performance.now();
  const response = await transport.transact(request.unit, modbusRequest, request.timeoutMs);
  const elapsed = Math.round(performance.now() - started);
  const last = request.address + request.count - 1;
  output.stdout(
    `unit ${request.unit} ${request.table} ${request.address}..${last} (${formatModiconAddress(request.table, request.address)}..${formatModiconAddress(request.table, last)}), function code ${modbusRequest.functionCode}, ${elapsed} ms\n`,
  );
  if (isBitTable(request.table)) {
    response.bits.forEach((bit, index) => output.stdout(`${String(request.address + index).padEnd(7)} ${bit ? 1 : 0}\n`));
    return;
  }
  output.stdout(formatRegisterTable(request.address, request.table, response.registers));
  output.stdout(formatDecodedValues(response.registers, request));
}

function hex(register: number): string {
  return `0x${register.toString(16).padStart(4, '0')}`;
}

/** Formats one line per register: address, Modicon reference, hex, unsigned and signed value. */
export function formatRegisterTable(address: number, table: ModbusTable, registers: readonly number[]): string {
  const lines = ['address reference hex     uint16 int16'];
  registers.forEach((register, index) => {
    const signed = register >= 0x8000 ? register - 0x10000 : register;
    lines.push(`${String(address + index).padEnd(7)} ${formatModiconAddress(table, address + index).padEnd(9)} ${hex(register)}  ${String(register).padEnd(6)} ${signed}`);
  });
  return `${lines.join('\n')}\n`;
}

/** Decodes the registers from the first address as the requested type (or every wider type) in every order. */
export function formatDecodedValues(registers: readonly number[], request: Pick<CliRequest, 'type' | 'length'>): string {
  const types: DataType[] = request.type === 'uint16' ? (['int32', 'uint32', 'float32', 'int64', 'uint64', 'float64'] as const).filter((type) => registerCount(type, 1) <= registers.length) : [request.type];
  const lines: string[] = [];
  for (const type of types) {
    const needed = registerCount(type, request.length);
    if (needed > registers.length) continue;
    const slice = registers.slice(0, needed);
    const cells = WORD_ORDERS.map((order) => `${order} ${formatValue(decodeRegisters(slice, type, order), type)}`);
    lines.push(`${type.padEnd(8)} ${cells.join('  ')}`);
  }
  return lines.length === 0 ? '' : `${lines.join('\n')}\n`;
}

function formatValue(value: FieldValue, type: DataType): string {
  if (typeof value === 'string') return JSON.stringify(value);
  // A float32 has about 7 significant decimal digits; more would show binary noise (231.399994).
  if (type === 'float32' && typeof value === 'number') return String(Number(value.toPrecision(7)));
  return String(value);
}
