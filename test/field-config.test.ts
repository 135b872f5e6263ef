/** The `field` section of the configuration: defaults, inherited values and clear errors. */

import { describe, expect, it } from 'vitest';

import { ConfigError, parseConfig } from '../src/config/load.js';
import { buildFieldModel } from '../src/field/model.js';

/** Returns the problem lines for a configuration file, or [] when it is valid. */
function problemsOf(text: string): string[] {
  try {
    parseConfig(text, 'outpost.yaml');
    return [];
  } catch (error) {
    if (error instanceof ConfigError) return error.problems;
    throw error;
  }
}

/** Builds a file with one TCP bus and one device whose points are `points` (YAML flow items, one per line). */
function withPoints(...points: string[]): string {
  return `field:
  buses:
    - name: plc
      protocol: tcp
      host: 127.0.0.1
      devices:
        - name: meter
          unit_id: 1
          points:
${points.map((point) => `            - ${point}`).join('\n')}
`;
}

describe('field configuration', () => {
  it('defaults to no buses and no serial lines', () => {
    const config = parseConfig('', 'outpost.yaml');
    expect(config.field.buses).toEqual([]);
    expect(config.field.serial_lines).toEqual([]);
    expect(config.field.topic_template).toBe('{prefix}/{device}/{point}');
  });

  it('resolves inherited values and Modicon addresses', () => {
    const config = parseConfig(
      `field:
  topic_prefix: site
  qos: 1
  buses:
    - name: rs485
      protocol: rtu
      path: /dev/serial/by-id/usb-FTDI_FT232R-if00-port0
      baud_rate: 19200
      parity: even
      timeout_ms: 300
      poll_interval_ms: 2000
      devices:
        - name: meter
          unit_id: 7
          timeout_ms: 500
          points:
            - { name: voltage, address: "30001", type: float32, order: CDAB, unit: V }
            - { name: relay, address: "00017", writable: true, retain: true }
            - { name: serial, table: holding_register, address: 100, type: string, length: 8, topic: 'meters/{unit_id}/serial' }
`,
      'outpost.yaml',
    );
    const model = buildFieldModel(config.field);
    const device = model.buses[0]?.devices[0];
    expect(device?.timeoutMs).toBe(500);
    expect(device?.pollIntervalMs).toBe(2000);
    expect(device?.retries).toBe(2);
    expect(device?.availabilityTopic).toBe('site/meter/availability');
    expect(device?.points[0]).toMatchObject({ table: 'input_register', address: 0, type: 'float32', order: 'CDAB', count: 2, qos: 1, retain: false, topic: 'site/meter/voltage' });
    expect(device?.points[1]).toMatchObject({ table: 'coil', address: 16, type: 'bool', writable: true, retain: true });
    expect(device?.points[2]).toMatchObject({ type: 'string', count: 8, topic: 'meters/7/serial' });
  });

  it('requires a table with a numeric address', () => {
    expect(problemsOf(withPoints('{ name: v, address: 5 }'))).toEqual([
      'outpost.yaml:10:15: field.buses[0].devices[0].points[0].table: missing table for the numeric address 5 (allowed: one of coil, discrete_input, input_register, holding_register)',
    ]);
  });

  it('rejects a table that differs from the Modicon address', () => {
    const [problem] = problemsOf(withPoints('{ name: v, table: coil, address: "40001" }'));
    expect(problem).toContain('points[0].table: the table coil differs from holding_register named by the Modicon address');
  });

  it('rejects an address that is no Modicon reference', () => {
    expect(problemsOf(withPoints('{ name: v, address: "70001" }'))[0]).toContain('"70001" is not a Modbus address; write a 0-based integer without quotes, or a Modicon reference');
    expect(problemsOf(withPoints('{ name: v, address: "40000" }'))[0]).toContain('the number after the table digit must be 1..65536');
    expect(problemsOf(withPoints('{ name: v, table: coil, address: 70000 }'))[0]).toContain('70000 is not a Modbus address');
  });

  it('rejects a multi-register type in a bit table', () => {
    expect(problemsOf(withPoints('{ name: v, table: coil, address: 0, type: float32 }'))[0]).toContain(
      'points[0].type: type float32 does not fit table coil, whose values are single bits',
    );
  });

  it('requires length for strings', () => {
    expect(problemsOf(withPoints('{ name: v, table: holding_register, address: 0, type: string }'))[0]).toContain('missing length: a string point needs its number of registers');
    expect(problemsOf(withPoints('{ name: v, table: holding_register, address: 0, length: 2 }'))[0]).toContain('length applies to type string only, not uint16');
  });

  it('rejects a writable input register', () => {
    expect(problemsOf(withPoints('{ name: v, table: input_register, address: 0, writable: true }'))[0]).toContain(
      'points[0].writable: table input_register is read-only in Modbus',
    );
  });

  it('rejects a value past the last address', () => {
    expect(problemsOf(withPoints('{ name: v, table: holding_register, address: 65534, type: float64 }'))[0]).toContain('the value takes 4 registers from address 65534');
  });

  it('rejects an unknown word order with a suggestion', () => {
    expect(problemsOf(withPoints('{ name: v, table: holding_register, address: 0, type: int32, order: ABDC }'))[0]).toContain('"ABDC" is not allowed');
  });

  it('rejects a point name that is no topic level', () => {
    expect(problemsOf(withPoints('{ name: "a/b", table: holding_register, address: 0 }'))[0]).toContain('"a/b" is not a valid name of letters, digits');
  });

  it('rejects duplicate point names', () => {
    const problems = problemsOf(withPoints('{ name: v, table: holding_register, address: 0 }', '{ name: v, table: holding_register, address: 1 }'));
    expect(problems.join('\n')).toContain('name');
    expect(problems.length).toBeGreaterThan(0);
  });

  it('suggests a misspelled key', () => {
    const problems = problemsOf(withPoints('{ name: v, table: holding_register, adress: 0 }'));
    expect(problems).toContain('outpost.yaml:10:51: field.buses[0].devices[0].points[0].adress: unknown key; did you mean address?');
  });

  it('requires path for an rtu bus and host for a tcp bus', () => {
    const problems = problemsOf(`field:
  buses:
    - { name: a, protocol: rtu }
    - { name: b, protocol: tcp, baud_rate: 9600 }
`);
    expect(problems[0]).toContain('field.buses[0].path: missing path: an rtu bus needs its serial device');
    expect(problems[1]).toContain('field.buses[1].host: missing host');
    expect(problems[2]).toContain('field.buses[1].baud_rate: baud_rate does not apply to protocol tcp');
  });

  it('rejects unit id 0 on a serial line', () => {
    const bus = (protocol: string): string => `field:
  buses:
    - name: plc
      protocol: ${protocol}
      ${protocol === 'rtu' ? 'path: /dev/ttyUSB0' : 'host: 10.0.0.5'}
      devices:
        - { name: meter, unit_id: 0, points: [{ name: v, address: "40001" }] }
`;
    expect(problemsOf(bus('rtu'))[0]).toContain('device meter: unit id 0 is the broadcast address of a serial line');
    expect(problemsOf(bus('tcp'))).toEqual([]);
  });

  it('rejects one device name on two buses', () => {
    const problems = problemsOf(`field:
  buses:
    - { name: a, protocol: tcp, host: 10.0.0.5, devices: [{ name: meter, unit_id: 1, points: [{ name: v, address: "40001" }] }] }
    - { name: b, protocol: tcp, host: 10.0.0.6, devices: [{ name: meter, unit_id: 1, points: [{ name: v, address: "40001" }] }] }
`);
    expect(problems[0]).toContain('device name meter is used on buses a and b');
  });

  it('rejects one serial port used twice', () => {
    const problems = problemsOf(`field:
  buses:
    - { name: a, protocol: rtu, path: /dev/ttyUSB0 }
  serial_lines:
    - { name: gps, path: /dev/ttyUSB0, rules: [{ format: key_value }] }
`);
    expect(problems[0]).toContain('serial line gps and bus a both use serial port /dev/ttyUSB0');
  });

  it('rejects an unknown placeholder in a topic template', () => {
    const problems = problemsOf('field:\n  topic_template: "{prefix}/{devise}/{point}"\n');
    expect(problems[0]).toContain('unknown placeholder {devise}');
    expect(problemsOf('field:\n  topic_template: "{prefix}/+/{point}"\n')[0]).toContain('wildcards');
  });

  it('reports an invalid regular expression', () => {
    const problems = problemsOf(`field:
  serial_lines:
    - name: gps
      path: /dev/ttyS0
      rules:
        - match: '^(?<value>[0-9+$'
`);
    expect(problems[0]).toMatch(/outpost\.yaml:6:11: field\.serial_lines\[0\]\.rules\[0\]\.match: invalid regular expression: /);
  });

  it('rejects a value group missing from the expression', () => {
    const problems = problemsOf(`field:
  serial_lines:
    - name: weather
      path: /dev/ttyS0
      rules:
        - match: '^T=(?<temperature>[-0-9.]+)$'
          values: [{ group: humidity }]
`);
    expect(problems[0]).toContain('group "humidity" is not a named group of match (named groups: temperature)');
  });

  it('requires match for a regex rule', () => {
    const problems = problemsOf('field:\n  serial_lines:\n    - { name: s, path: /dev/ttyS0, rules: [{ topic: "x/{name}" }] }\n');
    expect(problems[0]).toContain('missing match: a regex rule needs a regular expression with named groups');
  });
});
