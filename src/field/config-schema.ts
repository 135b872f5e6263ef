/**
 * The `field` section of the configuration: Modbus buses with their devices and points, and
 * serial-line sensors. src/config/schema.ts includes `fieldSchema` as the top-level key `field`.
 */

import { array, boolean, enumOf, integer, number, object, string, type Infer, type ObjectOutput } from '../config/schema-kit.js';
import { isBitTable, isWritableTable, MODBUS_TABLES } from './address.js';
import { DATA_TYPES, registerCount, WORD_ORDERS } from './codec.js';
import { AddressSchema, checkedObject, inherited, type ReportProblem } from './schema-parts.js';
import { templatePlaceholders } from './topic-template.js';

const NAME_FORMAT = {
  describe: 'name of letters, digits, `_`, `-` and `.`',
  test: (value: string): boolean => /^[A-Za-z0-9_.-]{1,64}$/.test(value),
};

const MAX_TIMER_MS = 2_147_483_647;

const serialSettings = {
  baud_rate: integer({ description: 'Serial line speed.', default: 9600, min: 50, max: 4_000_000, unit: 'bit/s' }),
  parity: enumOf(['none', 'even', 'odd'], { description: 'Parity bit of each character.', default: 'none' }),
  data_bits: integer({ description: 'Data bits of each character.', default: 8, min: 5, max: 8 }),
  stop_bits: integer({ description: 'Stop bits of each character.', default: 1, min: 1, max: 2 }),
};

const reconnectSettings = {
  reconnect_min_ms: integer({
    description: 'First wait before a closed serial port or TCP connection is opened again; it doubles after each failure.',
    default: 500,
    min: 10,
    max: MAX_TIMER_MS,
    unit: 'milliseconds',
  }),
  reconnect_max_ms: integer({
    description: 'Longest wait between attempts to open a serial port or TCP connection again.',
    default: 30_000,
    min: 10,
    max: MAX_TIMER_MS,
    unit: 'milliseconds',
  }),
};

const qosSchema = integer({ description: 'MQTT QoS of published readings.', min: 0, max: 2 });
const retainSchema = boolean({ description: 'Publish readings with the RETAIN flag, so new subscribers get the last value at once.' });

const pointFields = {
  name: string({ description: 'Point name, the last topic level by default.', format: NAME_FORMAT }),
  table: inherited(
    enumOf(MODBUS_TABLES, { description: 'Modbus table the point is in.' }),
    'the table of a Modicon `address` string; required with a numeric address',
  ),
  address: new AddressSchema(
    'Address of the first register or bit. A number is the 0-based address sent on the wire (the first holding register is 0). A Modicon reference string is 1-based and names the table by its first digit: "40001" and "4x0001" are holding register 0, "30001" input register 0, "00001" coil 0, "10001" discrete input 0.',
  ),
  type: inherited(enumOf(DATA_TYPES, { description: 'Data type of the value.' }), '`bool` for coils and discrete inputs, `uint16` for registers'),
  order: enumOf(WORD_ORDERS, {
    description: 'Byte and word order of multi-byte values: ABCD big-endian, CDAB word-swapped, BADC byte-swapped, DCBA little-endian (A = most significant byte).',
    default: 'ABCD',
  }),
  length: inherited(integer({ description: 'Number of registers of a `string` point (2 characters each).', min: 1, max: 125 }), 'required for type string'),
  bit: inherited(integer({ description: 'Bit of a register (0 = least significant) that a `bool` point in a register table reads.', min: 0, max: 15 }), 'the whole register: not 0 is true'),
  scale: number({ description: 'Factor applied to the raw value: published = raw * scale + offset. Writes apply the inverse.', default: 1 }),
  offset: number({ description: 'Added to the raw value after scaling.', default: 0 }),
  precision: inherited(integer({ description: 'Decimal places the published value is rounded to.', min: 0, max: 15 }), 'no rounding'),
  unit: string({ description: 'Unit of the value, e.g. `V` or `°C`, for JSON payloads and Home Assistant.', default: '' }),
  on_change: boolean({ description: 'Publish only when the value changes by more than `deadband` (or the point has not been published yet).', default: false }),
  deadband: number({ description: 'Change below which an `on_change` point is not published again.', default: 0 }),
  writable: boolean({ description: 'Accept writes on `<point topic>/set`. Only coils and holding registers can be written.', default: false }),
  qos: inherited(qosSchema, 'the device value'),
  retain: inherited(retainSchema, 'the device value'),
  topic: inherited(
    string({ description: 'Topic of the point; placeholders `{prefix}`, `{bus}`, `{device}`, `{unit_id}`, `{point}`.', minLength: 1 }),
    '`field.topic_template`',
  ),
};

const pointSchema = checkedObject(
  pointFields,
  { description: 'One value of a device: where it is and how it is decoded and published.', name: 'point' },
  checkPoint,
);

function checkPoint(point: ObjectOutput<typeof pointFields>, report: ReportProblem): void {
  const { table: addressTable } = point.address;
  if (point.table !== undefined && addressTable !== undefined && point.table !== addressTable) {
    report('table', `the table ${point.table} differs from ${addressTable} named by the Modicon address; remove one of them`);
    return;
  }
  const table = point.table ?? addressTable;
  if (table === undefined) {
    report('table', `missing table for the numeric address ${point.address.address} (allowed: one of ${MODBUS_TABLES.join(', ')})`);
    return;
  }
  const type = point.type ?? (isBitTable(table) ? 'bool' : 'uint16');
  if (isBitTable(table) && type !== 'bool') {
    report('type', `type ${type} does not fit table ${table}, whose values are single bits; use type bool or a register table`);
  }
  if (type === 'string' && point.length === undefined) report('length', 'missing length: a string point needs its number of registers (2 characters each)');
  if (type !== 'string' && point.length !== undefined) report('length', `length applies to type string only, not ${type}`);
  if (point.bit !== undefined && (type !== 'bool' || isBitTable(table))) {
    report('bit', 'bit applies to type bool in a register table only');
  }
  if (point.writable && !isWritableTable(table)) report('writable', `table ${table} is read-only in Modbus; only coils and holding registers can be written`);
  if (point.scale === 0) report('scale', 'scale 0 would publish the offset whatever the device sends; use a non-zero factor');
  if (point.deadband < 0) report('deadband', `deadband ${point.deadband} is negative; use 0 or more`);
  const count = isBitTable(table) ? 1 : registerCount(type, point.length ?? 1);
  if (point.address.address + count > 0x10000) {
    report('address', `the value takes ${count} registers from address ${point.address.address}, past the last address 65535`);
  }
  if (point.topic !== undefined) checkTemplate(point.topic, MODBUS_PLACEHOLDERS, report, 'topic');
}

const MODBUS_PLACEHOLDERS = ['prefix', 'bus', 'device', 'unit_id', 'point'];

function checkTemplate(template: string, allowed: readonly string[], report: ReportProblem, key: string): void {
  const placeholders = templatePlaceholders(template);
  if (typeof placeholders === 'string') {
    report(key, placeholders);
    return;
  }
  for (const name of placeholders) {
    if (!allowed.includes(name)) report(key, `unknown placeholder {${name}} (allowed here: ${allowed.map((item) => `{${item}}`).join(', ')})`);
  }
  if (/[+#]/.test(template) || template.includes('\0')) report(key, 'a topic must not contain the wildcards + and # or U+0000');
}

const deviceSchema = object(
  {
    name: string({ description: 'Device name, the topic level before the point.', format: NAME_FORMAT }),
    unit_id: integer({ description: 'Modbus unit id (slave address). Serial devices use 1..247; Modbus TCP devices often 1, 0 or 255.', min: 0, max: 255 }),
    poll_interval_ms: inherited(integer({ description: 'Time between the starts of two polls of this device.', min: 10, max: MAX_TIMER_MS, unit: 'milliseconds' }), 'the bus value'),
    timeout_ms: inherited(integer({ description: 'Time to wait for a response.', min: 10, max: 60_000, unit: 'milliseconds' }), 'the bus value'),
    retries: inherited(integer({ description: 'Failed polls in a row after which the device is marked offline.', min: 0, max: 100 }), 'the bus value'),
    max_read_gap: inherited(
      integer({ description: 'Unused registers or bits between two points that may still be read in one request.', min: 0, max: 1999 }),
      'the bus value',
    ),
    max_registers_per_read: inherited(integer({ description: 'Largest register read this device accepts.', min: 1, max: 125, unit: 'registers' }), 'the bus value'),
    qos: inherited(qosSchema, '`field.qos`'),
    retain: inherited(retainSchema, '`field.retain`'),
    points: array(pointSchema, {
      description: 'Values read from the device.',
      itemName: 'point',
      minItems: 1,
      unique: { describe: 'name', key: (point) => point.name },
    }),
  },
  { description: 'One Modbus device (unit) on a bus.', name: 'device' },
);

const busFields = {
  name: string({ description: 'Bus name, used in logs and the `{bus}` placeholder.', format: NAME_FORMAT }),
  protocol: enumOf(['rtu', 'tcp'], { description: '`rtu`: Modbus RTU over a serial port. `tcp`: Modbus TCP.' }),
  path: inherited(
    string({ description: 'Serial device of an `rtu` bus. Prefer a stable `/dev/serial/by-id/...` link over `/dev/ttyUSB0`, whose number can change when adapters are plugged in.', minLength: 1 }),
    'required for protocol rtu',
  ),
  ...serialSettings,
  host: inherited(string({ description: 'Host name or address of a `tcp` bus.', minLength: 1 }), 'required for protocol tcp'),
  port: integer({ description: 'TCP port of a `tcp` bus.', default: 502, min: 1, max: 65_535 }),
  timeout_ms: integer({ description: 'Time to wait for the response to one request.', default: 1000, min: 10, max: 60_000, unit: 'milliseconds' }),
  retries: integer({ description: 'Failed polls in a row after which a device is marked offline. Each failed poll costs at most one timeout.', default: 2, min: 0, max: 100 }),
  delay_ms: integer({
    description: 'Pause after each response or timeout before the next request. RTU buses also keep the 3.5-character silent interval.',
    default: 0,
    min: 0,
    max: 60_000,
    unit: 'milliseconds',
  }),
  poll_interval_ms: integer({ description: 'Time between the starts of two polls of a device.', default: 1000, min: 10, max: MAX_TIMER_MS, unit: 'milliseconds' }),
  offline_poll_max_ms: integer({
    description: 'An offline device is polled again after its poll interval, doubled after each failure up to this time.',
    default: 30_000,
    min: 10,
    max: MAX_TIMER_MS,
    unit: 'milliseconds',
  }),
  max_read_gap: integer({ description: 'Unused registers or bits between two points that may still be read in one request.', default: 0, min: 0, max: 1999 }),
  max_registers_per_read: integer({ description: 'Largest register read (Modbus allows 125).', default: 125, min: 1, max: 125, unit: 'registers' }),
  max_pending_writes: integer({ description: 'Writes that may wait for the bus; more are rejected with a result message.', default: 32, min: 1, max: 10_000, unit: 'writes' }),
  ...reconnectSettings,
  devices: array(deviceSchema, {
    description: 'Devices on this bus.',
    itemName: 'device',
    default: [],
    unique: { describe: 'name', key: (device) => device.name },
  }),
};

const busSchema = checkedObject(
  busFields,
  { description: 'One Modbus bus: a serial port (RTU) or a TCP connection, and the devices behind it.', name: 'bus' },
  checkBus,
);

const SERIAL_KEYS = ['path', 'baud_rate', 'parity', 'data_bits', 'stop_bits'];
const TCP_KEYS = ['host', 'port'];

function checkBus(bus: ObjectOutput<typeof busFields>, report: ReportProblem, present: ReadonlySet<string>): void {
  if (bus.protocol === 'rtu' && bus.path === undefined) report('path', 'missing path: an rtu bus needs its serial device, e.g. /dev/serial/by-id/usb-FTDI_...-if00-port0');
  if (bus.protocol === 'tcp' && bus.host === undefined) report('host', 'missing host: a tcp bus needs the address of the Modbus TCP device or gateway');
  const foreign = bus.protocol === 'rtu' ? TCP_KEYS : SERIAL_KEYS;
  for (const key of foreign) {
    if (present.has(key)) report(key, `${key} does not apply to protocol ${bus.protocol}; remove it or change protocol`);
  }
  if (bus.reconnect_max_ms < bus.reconnect_min_ms) report('reconnect_max_ms', `reconnect_max_ms ${bus.reconnect_max_ms} is below reconnect_min_ms ${bus.reconnect_min_ms}`);
  // On a serial line unit id 0 is the broadcast address, which never responds. Modbus TCP devices
  // often accept 0 (or 255) because the IP address already selects the device.
  for (const device of bus.devices) {
    if (bus.protocol === 'rtu' && device.unit_id === 0) {
      report('devices', `device ${device.name}: unit id 0 is the broadcast address of a serial line, which never responds to a read; use the device address 1..247`);
    }
  }

}

const lineValueSchema = object(
  {
    group: string({ description: 'Named group of `match` that contains the value.', minLength: 1 }),
    name: inherited(string({ description: 'Name of the value in its topic (`{name}`).', format: NAME_FORMAT }), 'the group name'),
    type: enumOf(['number', 'integer', 'string', 'boolean'], {
      description: 'How the text is published: `number` and `integer` are parsed (and scaled), `boolean` accepts 1/0, true/false, on/off.',
      default: 'number',
    }),
    scale: number({ description: 'Factor applied to a number: published = value * scale + offset.', default: 1 }),
    offset: number({ description: 'Added to a number after scaling.', default: 0 }),
    precision: inherited(integer({ description: 'Decimal places a number is rounded to.', min: 0, max: 15 }), 'no rounding'),
    unit: string({ description: 'Unit for JSON payloads and Home Assistant.', default: '' }),
  },
  { description: 'One value taken from a named group of a line.', name: 'line value' },
);

const LINE_PLACEHOLDERS = ['prefix', 'line', 'name'];

const lineRuleFields = {
  format: enumOf(['regex', 'key_value'], {
    description: '`regex`: `match` picks values by named groups. `key_value`: every `key=value` (or `key:value`) pair of the line is a value named by its key.',
    default: 'regex',
  }),
  match: inherited(
    string({ description: 'JavaScript regular expression a line must match. With format `regex` its named groups `(?<name>...)` carry the values.', minLength: 1 }),
    'required for format regex; with key_value every line matches',
  ),
  nmea_checksum: boolean({ description: 'Skip lines whose NMEA 0183 checksum (`*hh` after the sentence) is missing or wrong.', default: false }),
  topic: string({
    description: 'Topic of each value; placeholders `{prefix}`, `{line}`, `{name}` and every named group of `match`.',
    default: '{prefix}/{line}/{name}',
  }),
  values: array(lineValueSchema, {
    description: 'Values of a `regex` rule. When empty, every named group is published, as a number when it reads as one.',
    itemName: 'value',
    default: [],
  }),
};

const lineRuleSchema = checkedObject(
  lineRuleFields,
  { description: 'How lines that match are turned into topics and values. The first rule that matches a line applies.', name: 'line rule' },
  checkLineRule,
);

function checkLineRule(rule: ObjectOutput<typeof lineRuleFields>, report: ReportProblem): void {
  let groups: string[] = [];
  if (rule.match !== undefined) {
    try {
      groups = namedGroupsOf(new RegExp(rule.match));
    } catch (error: unknown) {
      report('match', `invalid regular expression: ${error instanceof Error ? error.message : String(error)}`);
      return;
    }
  }
  if (rule.format === 'regex') {
    if (rule.match === undefined) {
      report('match', 'missing match: a regex rule needs a regular expression with named groups, e.g. ^T=(?<temperature>[-\\d.]+)$');
      return;
    }
    if (groups.length === 0) report('match', 'the regular expression has no named group (?<name>...), so it yields no value');
    for (const value of rule.values) {
      if (!groups.includes(value.group)) report('values', `group ${JSON.stringify(value.group)} is not a named group of match (named groups: ${groups.join(', ') || 'none'})`);
    }
  } else if (rule.values.length > 0) {
    report('values', 'values apply to format regex only; a key_value rule publishes every pair by its key');
  }
  checkTemplate(rule.topic, [...LINE_PLACEHOLDERS, ...groups], report, 'topic');
}

/** Returns the names of the named groups `(?<name>...)` written in the source of `pattern`. */
export function namedGroupsOf(pattern: RegExp): string[] {
  const names = new Set<string>();
  for (const match of pattern.source.matchAll(/\(\?<([A-Za-z_$][\w$]*)>/g)) {
    if (match[1] !== undefined) names.add(match[1]);
  }
  return [...names];
}

const serialLineSchema = checkedObject(
  {
    name: string({ description: 'Name of the serial line, the `{line}` placeholder.', format: NAME_FORMAT }),
    path: string({ description: 'Serial device, preferably a `/dev/serial/by-id/...` link.', minLength: 1 }),
    ...serialSettings,
    delimiter: string({ description: 'Text that ends a line. A `\\r` before a `\\n` delimiter is removed too.', default: '\n', minLength: 1 }),
    max_line_length: integer({ description: 'Maximum length of a line; a longer line is dropped and logged.', default: 1024, min: 16, max: 65_536, unit: 'bytes' }),
    qos: inherited(qosSchema, '`field.qos`'),
    retain: inherited(retainSchema, '`field.retain`'),
    ...reconnectSettings,
    rules: array(lineRuleSchema, { description: 'Rules tried in order on each line.', itemName: 'rule', minItems: 1 }),
  },
  { description: 'A serial port on which a sensor prints text lines.', name: 'serial line' },
  (line, report) => {
    if (line.reconnect_max_ms < line.reconnect_min_ms) report('reconnect_max_ms', `reconnect_max_ms ${line.reconnect_max_ms} is below reconnect_min_ms ${line.reconnect_min_ms}`);
  },
);

const fieldFields = {
  topic_prefix: string({ description: 'First topic level of every reading, the `{prefix}` placeholder.', default: 'outpost', minLength: 1 }),
  topic_template: string({
    description: 'Topic of a Modbus point; placeholders `{prefix}`, `{bus}`, `{device}`, `{unit_id}`, `{point}`. Availability goes to `{prefix}/{device}/availability`.',
    default: '{prefix}/{device}/{point}',
  }),
  payload_format: enumOf(['plain', 'json'], {
    description: '`plain`: the value as text. `json`: `{"value":..., "unit":..., "timestamp":...}` with the time in milliseconds since 1970.',
    default: 'plain',
  }),
  qos: integer({ description: 'MQTT QoS of published readings, unless a device or point sets its own.', default: 0, min: 0, max: 2 }),
  retain: boolean({ description: 'Publish readings with the RETAIN flag, unless a device or point sets its own.', default: false }),
  home_assistant_discovery: boolean({ description: 'Publish Home Assistant MQTT discovery messages for every point and serial-line value.', default: false }),
  discovery_prefix: string({ description: 'Topic prefix Home Assistant watches for discovery messages.', default: 'homeassistant', minLength: 1 }),
  buses: array(busSchema, {
    description: 'Modbus buses.',
    itemName: 'bus definition',
    default: [],
    unique: { describe: 'name', key: (bus) => bus.name },
  }),
  serial_lines: array(serialLineSchema, {
    description: 'Serial ports of sensors that print text lines.',
    itemName: 'serial line',
    default: [],
    unique: { describe: 'name', key: (line) => line.name },
  }),
};

export const fieldSchema = checkedObject(
  fieldFields,
  { description: 'The field adapter: Modbus RTU and TCP devices and serial-line sensors, published as MQTT topics.' },
  checkField,
);

function checkField(field: ObjectOutput<typeof fieldFields>, report: ReportProblem): void {
  checkTemplate(field.topic_template, MODBUS_PLACEHOLDERS, report, 'topic_template');
  const deviceNames = new Map<string, string>();
  for (const bus of field.buses) {
    for (const device of bus.devices) {
      const other = deviceNames.get(device.name);
      if (other !== undefined) report('buses', `device name ${device.name} is used on buses ${other} and ${bus.name}; device names are topic levels and must be unique`);
      deviceNames.set(device.name, bus.name);
    }
  }
  const paths = new Map<string, string>();
  const claim = (path: string | undefined, owner: string, key: string): void => {
    if (path === undefined) return;
    const other = paths.get(path);
    if (other !== undefined) report(key, `${owner} and ${other} both use serial port ${path}; one port serves one bus or line`);
    paths.set(path, owner);
  };
  for (const bus of field.buses) claim(bus.path, `bus ${bus.name}`, 'buses');
  for (const line of field.serial_lines) claim(line.path, `serial line ${line.name}`, 'serial_lines');
}

export type FieldConfig = Infer<typeof fieldSchema>;
export type BusConfig = FieldConfig['buses'][number];
export type DeviceConfig = BusConfig['devices'][number];
export type PointConfig = DeviceConfig['points'][number];
export type SerialLineConfig = FieldConfig['serial_lines'][number];
export type LineRuleConfig = SerialLineConfig['rules'][number];
