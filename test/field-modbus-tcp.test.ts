/**
 * The field adapter against a real Modbus TCP device (Debian's pymodbus on 127.0.0.1): decoding
 * of every type and word order, grouping of reads, exception responses and write-back from an
 * MQTT client.
 */

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { startGateway, type TestGateway } from './fixtures/field-gateway.js';
import { startTcpDevice, type TestDevice } from './fixtures/modbus-device.js';
import { delay, waitFor } from './helpers/wait.js';

interface TypeCase {
  name: string;
  type: string;
  order: string;
  registers: number[];
  expected: string;
  extra?: string;
}

// Known register contents, one case per type and order. float32 12.5 is 0x41480000 and int64
// 0x0123456789ABCDEF is 81985529216486895; each order rearranges the same bytes.
const CASES: TypeCase[] = [
  { name: 'int16_abcd', type: 'int16', order: 'ABCD', registers: [0xfffe], expected: '-2' },
  { name: 'int16_badc', type: 'int16', order: 'BADC', registers: [0xfeff], expected: '-2' },
  { name: 'uint16_abcd', type: 'uint16', order: 'ABCD', registers: [0xfffe], expected: '65534' },
  { name: 'uint16_dcba', type: 'uint16', order: 'DCBA', registers: [0x3412], expected: '4660' },
  { name: 'float32_abcd', type: 'float32', order: 'ABCD', registers: [0x4148, 0x0000], expected: '12.5' },
  { name: 'float32_cdab', type: 'float32', order: 'CDAB', registers: [0x0000, 0x4148], expected: '12.5' },
  { name: 'float32_badc', type: 'float32', order: 'BADC', registers: [0x4841, 0x0000], expected: '12.5' },
  { name: 'float32_dcba', type: 'float32', order: 'DCBA', registers: [0x0000, 0x4841], expected: '12.5' },
  { name: 'int32_abcd', type: 'int32', order: 'ABCD', registers: [0xf8a4, 0x32eb], expected: '-123456789' },
  { name: 'int32_cdab', type: 'int32', order: 'CDAB', registers: [0x32eb, 0xf8a4], expected: '-123456789' },
  { name: 'int32_badc', type: 'int32', order: 'BADC', registers: [0xa4f8, 0xeb32], expected: '-123456789' },
  { name: 'int32_dcba', type: 'int32', order: 'DCBA', registers: [0xeb32, 0xa4f8], expected: '-123456789' },
  { name: 'uint32_abcd', type: 'uint32', order: 'ABCD', registers: [0xee6b, 0x2800], expected: '4000000000' },
  { name: 'uint32_cdab', type: 'uint32', order: 'CDAB', registers: [0x2800, 0xee6b], expected: '4000000000' },
  { name: 'int64_abcd', type: 'int64', order: 'ABCD', registers: [0x0123, 0x4567, 0x89ab, 0xcdef], expected: '81985529216486895' },
  { name: 'int64_cdab', type: 'int64', order: 'CDAB', registers: [0xcdef, 0x89ab, 0x4567, 0x0123], expected: '81985529216486895' },
  { name: 'int64_badc', type: 'int64', order: 'BADC', registers: [0x2301, 0x6745, 0xab89, 0xefcd], expected: '81985529216486895' },
  { name: 'int64_dcba', type: 'int64', order: 'DCBA', registers: [0xefcd, 0xab89, 0x6745, 0x2301], expected: '81985529216486895' },
  { name: 'int64_negative', type: 'int64', order: 'ABCD', registers: [0xffff, 0xffff, 0xffff, 0xfffe], expected: '-2' },
  // Above 2^53: published with every digit.
  { name: 'uint64_abcd', type: 'uint64', order: 'ABCD', registers: [0xfedc, 0xba98, 0x7654, 0x3210], expected: '18364758544493064720' },
  { name: 'uint64_dcba', type: 'uint64', order: 'DCBA', registers: [0x1032, 0x5476, 0x98ba, 0xdcfe], expected: '18364758544493064720' },
  { name: 'float64_abcd', type: 'float64', order: 'ABCD', registers: [0x3ff8, 0x0000, 0x0000, 0x0000], expected: '1.5' },
  { name: 'float64_cdab', type: 'float64', order: 'CDAB', registers: [0x0000, 0x0000, 0x0000, 0x3ff8], expected: '1.5' },
  { name: 'float64_badc', type: 'float64', order: 'BADC', registers: [0xf83f, 0x0000, 0x0000, 0x0000], expected: '1.5' },
  { name: 'float64_dcba', type: 'float64', order: 'DCBA', registers: [0x0000, 0x0000, 0x0000, 0xf83f], expected: '1.5' },
  { name: 'string_abcd', type: 'string', order: 'ABCD', registers: [0x4f75, 0x7470, 0x6f73, 0x7421], expected: 'Outpost!', extra: 'length: 4' },
  { name: 'string_badc', type: 'string', order: 'BADC', registers: [0x754f, 0x7074, 0x736f, 0x2174], expected: 'Outpost!', extra: 'length: 4' },
  { name: 'string_padded', type: 'string', order: 'ABCD', registers: [0x4869, 0x0000], expected: 'Hi', extra: 'length: 2' },
  { name: 'bool_register', type: 'bool', order: 'ABCD', registers: [0x0002], expected: 'true' },
  { name: 'bool_bit3', type: 'bool', order: 'ABCD', registers: [0x0008], expected: 'true', extra: 'bit: 3' },
  { name: 'bool_bit2', type: 'bool', order: 'ABCD', registers: [0x0008], expected: 'false', extra: 'bit: 2' },
  { name: 'scaled', type: 'uint16', order: 'ABCD', registers: [2305], expected: '230.5', extra: 'scale: 0.1\n      precision: 1' },
  { name: 'offset', type: 'int16', order: 'ABCD', registers: [0xff9c], expected: '-50', extra: 'scale: 0.5\n      offset: 0' },
];

/** Lays the cases out one after another from address 100 and returns the registers and points. */
function layOut(cases: TypeCase[]): { holding: Record<number, number>; points: string } {
  const holding: Record<number, number> = {};
  const points: string[] = [];
  let address = 100;
  for (const testCase of cases) {
    testCase.registers.forEach((register, index) => {
      holding[address + index] = register;
    });
    points.push(`    - name: ${testCase.name}\n      table: holding_register\n      address: ${address}\n      type: ${testCase.type}\n      order: ${testCase.order}${testCase.extra === undefined ? '' : `\n      ${testCase.extra}`}`);
    address += testCase.registers.length;
  }
  return { holding, points: points.join('\n') };
}

describe('field adapter over Modbus TCP', () => {
  let device: TestDevice;
  let gateway: TestGateway;
  const layout = layOut(CASES);

  beforeAll(async () => {
    device = await startTcpDevice({
      units: {
        1: {
          holding: {
            ...layout.holding,
            // Grouped block: 0..3 and 6 (a gap of 2 within max_read_gap), 300 far away.
            0: 1,
            1: 2,
            2: 3,
            3: 4,
            4: 0,
            5: 0,
            6: 7,
            300: 30,
            // Writable points.
            400: 0,
            401: 0,
            402: 0,
            403: 0,
            404: 0,
            405: 0,
            406: 0,
            407: 0,
          },
          input: { 0: 111 },
          coil: { 0: 1, 1: 0, 2: 1, 10: 0 },
          discrete: { 0: 1 },
          failing_holding: [500],
        },
        2: { holding: { 0: 42, 1: 43 } },
      },
    });
    gateway = await startGateway(`
topic_prefix: plant
buses:
  - name: tcp
    protocol: tcp
    host: 127.0.0.1
    port: ${device.port}
    timeout_ms: 500
    poll_interval_ms: 200
    max_read_gap: 2
    devices:
      - name: types
        unit_id: 1
        poll_interval_ms: 300
        points:
${layout.points.replace(/^/gm, '      ')}
      - name: grouped
        unit_id: 2
        poll_interval_ms: 60000
        points:
          - { name: a, address: "40001" }
          - { name: b, address: "4x0002" }
      - name: meter
        unit_id: 1
        points:
          - { name: r0, table: holding_register, address: 0 }
          - { name: r1, table: holding_register, address: 1 }
          - { name: r2_3, table: holding_register, address: 2, type: uint32 }
          - { name: r6, table: holding_register, address: 6 }
          - { name: r300, table: holding_register, address: 300 }
          - { name: in0, table: input_register, address: 0, unit: kWh }
          - { name: c0, table: coil, address: 0 }
          - { name: c1, table: coil, address: 1 }
          - { name: c2, table: coil, address: 2 }
          - { name: d0, address: "10001" }
          - { name: missing, table: holding_register, address: 900 }
          - { name: failing, table: holding_register, address: 500 }
          - { name: setpoint, table: holding_register, address: 400, type: float32, order: CDAB, writable: true, unit: °C }
          - { name: scaled_set, table: holding_register, address: 402, scale: 0.1, precision: 1, writable: true }
          - { name: counter, table: holding_register, address: 404, type: uint64, order: DCBA, writable: true }
          - { name: flag, table: holding_register, address: 403, type: bool, bit: 4, writable: true }
          - { name: relay, table: coil, address: 10, writable: true }
          - { name: readonly, table: input_register, address: 0 }
          - { name: nowhere, table: holding_register, address: 901, writable: true }
`);
  }, 30_000);

  afterAll(async () => {
    await gateway?.stop();
    await device?.stop();
  });

  it.each(CASES)('decodes $name', async (testCase) => {
    const message = await gateway.next(`plant/types/${testCase.name}`);
    expect(message.payload).toBe(testCase.expected);
  });

  it('publishes availability online, retained', async () => {
    const message = await gateway.next('plant/types/availability', (candidate) => candidate.payload === 'online');
    expect(message.retain).toBe(false);
    await gateway.next('plant/meter/availability', (candidate) => candidate.payload === 'online');
    // A new subscriber gets the retained state.
    const retained = await new Promise<string>((resolve) => {
      const listener = (topic: string, payload: Buffer, packet: { retain: boolean }): void => {
        if (topic === 'plant/meter/availability' && packet.retain) {
          gateway.client.removeListener('message', listener);
          resolve(payload.toString());
        }
      };
      gateway.client.on('message', listener);
      void gateway.client.subscribeAsync('plant/meter/availability');
    });
    expect(retained).toBe('online');
  });

  it('reads a Modicon address string', async () => {
    expect((await gateway.next('plant/grouped/a')).payload).toBe('42');
    expect((await gateway.next('plant/grouped/b')).payload).toBe('43');
  });

  it('groups contiguous points into few requests', async () => {
    await gateway.next('plant/meter/missing/error');
    const bus = gateway.adapter.bus('tcp');
    // Holding 0..6 in one request (the unused 4..5 are within max_read_gap 2), then 300, 400..407
    // and 500. Holding 900..901 was one request until the device rejected it, and is now read as
    // two. Input 0, coils 0..2, coil 10 and discrete input 0 take one request each: 10 in all.
    expect(bus?.readRequestsPerPoll('meter')).toBe(10);
    expect(device.requests).toContain('REQ 1 3 0 7');
    expect(device.requests).toContain('REQ 1 3 400 8');
    expect(device.requests).toContain('REQ 1 1 0 3');
    // The grouped device's two points take one request on the device side.
    const unit2Reads = device.requests.filter((line) => line.startsWith('REQ 2 3 '));
    expect(unit2Reads[0]).toBe('REQ 2 3 0 2');
    // The type points sit in contiguous registers from 100: one request for all of them.
    const typeRegisters = CASES.reduce((sum, testCase) => sum + testCase.registers.length, 0);
    expect(bus?.readRequestsPerPoll('types')).toBe(1);
    expect(device.requests).toContain(`REQ 1 3 100 ${typeRegisters}`);
  });

  it('publishes values of a grouped read', async () => {
    expect((await gateway.next('plant/meter/r0')).payload).toBe('1');
    expect((await gateway.next('plant/meter/r2_3')).payload).toBe(String(3 * 65536 + 4));
    expect((await gateway.next('plant/meter/r6')).payload).toBe('7');
    expect((await gateway.next('plant/meter/r300')).payload).toBe('30');
    expect((await gateway.next('plant/meter/in0')).payload).toBe('111');
    expect((await gateway.next('plant/meter/c0')).payload).toBe('true');
    expect((await gateway.next('plant/meter/c1')).payload).toBe('false');
    expect((await gateway.next('plant/meter/d0')).payload).toBe('true');
  });

  it('reports ILLEGAL DATA ADDRESS per point', async () => {
    const message = await gateway.next('plant/meter/missing/error');
    const body = JSON.parse(message.payload) as { error: string; exception_code: number };
    expect(body.error).toBe('ILLEGAL DATA ADDRESS');
    expect(body.exception_code).toBe(2);
    // The device stays online: an exception is a response.
    expect(gateway.adapter.bus('tcp')?.isOnline('meter')).toBe(true);
  });

  it('reports SERVER DEVICE FAILURE per point', async () => {
    const message = await gateway.next('plant/meter/failing/error');
    expect(JSON.parse(message.payload)).toMatchObject({ error: 'SERVER DEVICE FAILURE', exception_code: 4 });
  });

  it('publishes an error once, not every poll', async () => {
    await gateway.next('plant/meter/missing/error');
    await delay(700);
    expect(gateway.on('plant/meter/missing/error')).toHaveLength(1);
  });

  it('writes a float32 from MQTT and reads it back', async () => {
    const since = Date.now();
    await gateway.client.publishAsync('plant/meter/setpoint/set', '21.5', { qos: 1 });
    const result = await gateway.next('plant/meter/setpoint/set/result', () => true, 5000, since);
    expect(JSON.parse(result.payload)).toMatchObject({ ok: true, value: 21.5 });
    const value = await gateway.next('plant/meter/setpoint', (message) => message.payload === '21.5', 5000, since);
    expect(value.payload).toBe('21.5');
    // 21.5 is 0x41AC0000, stored word-swapped (CDAB).
    const check = await startTcpCheck(device, 400, 2);
    expect(check).toEqual([0x0000, 0x41ac]);
  });

  it('writes with inverse scaling', async () => {
    const since = Date.now();
    await gateway.client.publishAsync('plant/meter/scaled_set/set', '{"value": 42.3}', { qos: 1 });
    const result = await gateway.next('plant/meter/scaled_set/set/result', () => true, 5000, since);
    expect(JSON.parse(result.payload)).toMatchObject({ ok: true, value: 42.3 });
    expect(await startTcpCheck(device, 402, 1)).toEqual([423]);
  });

  it('writes a uint64 beyond 2^53 exactly', async () => {
    const since = Date.now();
    await gateway.client.publishAsync('plant/meter/counter/set', '18364758544493064720', { qos: 1 });
    const result = await gateway.next('plant/meter/counter/set/result', () => true, 5000, since);
    expect(result.payload).toContain('"value":18364758544493064720');
    expect(await startTcpCheck(device, 404, 4)).toEqual([0x1032, 0x5476, 0x98ba, 0xdcfe]);
  });

  it('writes one bit of a register', async () => {
    await device.set(1, 'holding', 403, [0x0101]);
    const since = Date.now();
    await gateway.client.publishAsync('plant/meter/flag/set', 'ON', { qos: 1 });
    const result = await gateway.next('plant/meter/flag/set/result', () => true, 5000, since);
    expect(JSON.parse(result.payload)).toMatchObject({ ok: true, value: true });
    expect(await startTcpCheck(device, 403, 1)).toEqual([0x0111]);
  });

  it('writes a coil with function code 5', async () => {
    const since = Date.now();
    await gateway.client.publishAsync('plant/meter/relay/set', 'true', { qos: 1 });
    const result = await gateway.next('plant/meter/relay/set/result', () => true, 5000, since);
    expect(JSON.parse(result.payload)).toMatchObject({ ok: true, value: true });
    expect(gateway.logLines.some((line) => line.includes('write done') && line.includes('point=relay'))).toBe(true);
  });

  it('rejects a write to a read-only point', async () => {
    const since = Date.now();
    await gateway.client.publishAsync('plant/meter/readonly/set', '5', { qos: 1 });
    const result = await gateway.next('plant/meter/readonly/set/result', () => true, 5000, since);
    const body = JSON.parse(result.payload) as { ok: boolean; error: string };
    expect(body.ok).toBe(false);
    expect(body.error).toContain('read-only');
  });

  it('reports the exception of a rejected write', async () => {
    const since = Date.now();
    await gateway.client.publishAsync('plant/meter/nowhere/set', '5', { qos: 1 });
    const result = await gateway.next('plant/meter/nowhere/set/result', () => true, 5000, since);
    expect(JSON.parse(result.payload)).toMatchObject({ ok: false, error: 'ILLEGAL DATA ADDRESS' });
    expect(gateway.logLines.some((line) => line.includes('write failed') && line.includes('point=nowhere') && line.includes('"ILLEGAL DATA ADDRESS"'))).toBe(true);
  });

  it('rejects a value that does not parse', async () => {
    const since = Date.now();
    await gateway.client.publishAsync('plant/meter/setpoint/set', 'warm', { qos: 1 });
    const result = await gateway.next('plant/meter/setpoint/set/result', () => true, 5000, since);
    expect(JSON.parse(result.payload)).toMatchObject({ ok: false, error: '"warm" is not a number' });
  });

  it('rejects a value outside the type range', async () => {
    const since = Date.now();
    await gateway.client.publishAsync('plant/meter/scaled_set/set', '7000', { qos: 1 });
    const result = await gateway.next('plant/meter/scaled_set/set/result', () => true, 5000, since);
    const body = JSON.parse(result.payload) as { ok: boolean; error: string };
    expect(body.ok).toBe(false);
    expect(body.error).toContain('outside the uint16 range');
  });

  it('ignores a retained set message replayed at start', async () => {
    await gateway.client.publishAsync('plant/meter/scaled_set/set', '1', { qos: 1, retain: true });
    await gateway.next('plant/meter/scaled_set/set/result', (message) => message.payload.includes('"value":1,'));
    // Counting the results, not comparing times: the result above may share its millisecond with the restart.
    const resultsBefore = gateway.on('plant/meter/scaled_set/set/result').length;
    const since = Date.now();
    await gateway.restartAdapter();
    await gateway.next('plant/meter/availability', (message) => message.payload === 'online', 5000, since);
    await delay(300);
    expect(gateway.on('plant/meter/scaled_set/set/result')).toHaveLength(resultsBefore);
    expect(gateway.logLines.some((line) => line.includes('ignored a retained write command'))).toBe(true);
    await gateway.client.publishAsync('plant/meter/scaled_set/set', '', { qos: 1, retain: true });
  });
});

/** Reads registers straight from the device with a second, independent Modbus client (pymodbus's). */
async function startTcpCheck(device: TestDevice, address: number, count: number): Promise<number[]> {
  const { execFile } = await import('node:child_process');
  const script = [
    'import sys',
    'from pymodbus.client import ModbusTcpClient',
    `client = ModbusTcpClient("127.0.0.1", port=${device.port})`,
    'client.connect()',
    `result = client.read_holding_registers(${address}, ${count}, slave=1)`,
    'print(" ".join(str(value) for value in result.registers))',
    'client.close()',
  ].join('\n');
  const output = await new Promise<string>((resolve, reject) => {
    execFile('/usr/bin/python3', ['-c', script], { timeout: 5000 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${error.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
  return output.trim().split(' ').map(Number);
}

describe('Modbus TCP connection', () => {
  it('reconnects to a restarted device', async () => {
    let device = await startTcpDevice({ units: { 1: { holding: { 0: 1 } } } });
    const port = device.port;
    const gateway = await startGateway(`
buses:
  - name: tcp
    protocol: tcp
    host: 127.0.0.1
    port: ${port}
    timeout_ms: 300
    poll_interval_ms: 100
    reconnect_min_ms: 100
    reconnect_max_ms: 300
    devices:
      - { name: meter, unit_id: 1, points: [{ name: v, address: "40001" }] }
`);
    try {
      await gateway.next('outpost/meter/v', (message) => message.payload === '1');
      const stoppedAt = Date.now();
      await device.stop();
      await gateway.next('outpost/meter/availability', (message) => message.payload === 'offline', 5000, stoppedAt);
      await delay(300);
      device = await startTcpDevice({ units: { 1: { holding: { 0: 2 } } } }, port);
      await gateway.next('outpost/meter/v', (message) => message.payload === '2', 8000);
      expect(gateway.logLines.some((line) => line.includes('Modbus TCP connection closed; reconnecting'))).toBe(true);
      expect(gateway.logLines.some((line) => line.includes('Modbus TCP connection reopened'))).toBe(true);
    } finally {
      await gateway.stop();
      await device.stop();
    }
  });

  it('bounds the write queue', async () => {
    // Unit 7 does not exist, so every write waits for its 300 ms timeout.
    const device = await startTcpDevice({ units: { 1: { holding: { 0: 1 } } } });
    const gateway = await startGateway(`
buses:
  - name: tcp
    protocol: tcp
    host: 127.0.0.1
    port: ${device.port}
    timeout_ms: 300
    poll_interval_ms: 60000
    max_pending_writes: 2
    devices:
      - { name: ghost, unit_id: 7, points: [{ name: v, address: "40001", writable: true }] }
`);
    try {
      await gateway.next('outpost/ghost/availability');
      for (let i = 0; i < 6; i++) await gateway.client.publishAsync('outpost/ghost/v/set', String(i), { qos: 1 });
      await waitFor(() => gateway.on('outpost/ghost/v/set/result').length === 6, 8000, 'six write results');
      const errors = gateway.on('outpost/ghost/v/set/result').map((message) => (JSON.parse(message.payload) as { error: string }).error);
      expect(errors.filter((error) => error.includes('max_pending_writes')).length).toBeGreaterThanOrEqual(3);
      expect(errors.filter((error) => error.startsWith('timed out after')).length).toBeGreaterThanOrEqual(2);
    } finally {
      await gateway.stop();
      await device.stop();
    }
  });
});
