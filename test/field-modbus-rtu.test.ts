/**
 * The field adapter on Modbus RTU over a socat pty pair: Debian's pymodbus serves the device
 * end, the adapter opens the other end as it would a USB RS-485 adapter.
 */

import { SerialPort } from 'serialport';
import { afterEach, describe, expect, it } from 'vitest';

import { startGateway, type TestGateway } from './fixtures/field-gateway.js';
import { createPtyPair, makeTempDir, startRtuDevice, type PtyPair, type TestDevice } from './fixtures/modbus-device.js';
import { delay, waitFor } from './helpers/wait.js';

/** Everything a test started, stopped in reverse order by afterEach. */
const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setUpBus(units: Parameters<typeof startRtuDevice>[1]): Promise<{ pty: PtyPair; device: TestDevice; directory: string }> {
  const directory = await makeTempDir();
  cleanups.push(() => directory.remove());
  const pty = await createPtyPair(directory.path);
  cleanups.push(() => pty.stop());
  const device = await startRtuDevice(pty.devicePath, units);
  cleanups.push(() => device.stop());
  return { pty, device, directory: directory.path };
}

async function gatewayFor(yaml: string): Promise<TestGateway> {
  const gateway = await startGateway(yaml);
  cleanups.push(() => gateway.stop());
  return gateway;
}

function rtuBus(path: string, devices: string, extra = ''): string {
  return `
buses:
  - name: rs485
    protocol: rtu
    path: ${path}
    baud_rate: 19200
    timeout_ms: 150
    retries: 1
    poll_interval_ms: 100
    offline_poll_max_ms: 2000
    reconnect_min_ms: 100
    reconnect_max_ms: 400${extra}
    devices:
${devices.replace(/^/gm, '      ')}`;
}

describe('field adapter over Modbus RTU', () => {
  it('reads types over RTU', async () => {
    const { pty } = await setUpBus({ units: { 1: { holding: { 0: 0x4148, 1: 0x0000, 2: 0xfffe }, coil: { 0: 1 } } } });
    const gateway = await gatewayFor(
      rtuBus(
        pty.adapterPath,
        `- name: meter
  unit_id: 1
  points:
    - { name: temperature, address: "40001", type: float32 }
    - { name: signed, address: "40003", type: int16 }
    - { name: pump, address: "00001" }`,
      ),
    );
    expect((await gateway.next('outpost/meter/temperature')).payload).toBe('12.5');
    expect((await gateway.next('outpost/meter/signed')).payload).toBe('-2');
    expect((await gateway.next('outpost/meter/pump')).payload).toBe('true');
    expect(gateway.adapter.bus('rs485')?.readRequestsPerPoll('meter')).toBe(2);
  });

  it('reports an exception over RTU', async () => {
    const { pty } = await setUpBus({ units: { 1: { holding: { 0: 1 } } } });
    const gateway = await gatewayFor(rtuBus(pty.adapterPath, `- name: meter\n  unit_id: 1\n  points:\n    - { name: absent, address: "40010" }`));
    const error = await gateway.next('outpost/meter/absent/error');
    expect(JSON.parse(error.payload)).toMatchObject({ error: 'ILLEGAL DATA ADDRESS', exception_code: 2 });
  });

  it('keeps the rate of present units beside an absent one', async () => {
    const { pty } = await setUpBus({ units: { 1: { holding: { 0: 11 } }, 2: { holding: { 0: 22 } } } });
    const device = (name: string, unit: number): string =>
      `- { name: ${name}, unit_id: ${unit}, poll_interval_ms: 200, timeout_ms: 100, points: [{ name: v, address: "40001" }] }`;
    const windowMs = 2000;

    /** Counts the successful polls of the present units during the window. */
    const measure = async (gateway: TestGateway): Promise<{ first: number; second: number }> => {
      const bus = gateway.adapter.bus('rs485');
      const successfulPolls = (name: string): number => bus?.deviceStats(name)?.successfulPolls ?? 0;
      const before = { first: successfulPolls('first'), second: successfulPolls('second') };
      await delay(windowMs);
      return { first: successfulPolls('first') - before.first, second: successfulPolls('second') - before.second };
    };

    // The rate without the absent unit, measured first on the same bus and machine, is the baseline.
    const baselineGateway = await startGateway(rtuBus(pty.adapterPath, [device('first', 1), device('second', 2)].join('\n')));
    await baselineGateway.next('outpost/second/availability', (message) => message.payload === 'online');
    const baseline = await measure(baselineGateway);
    await baselineGateway.stop();

    const gateway = await gatewayFor(rtuBus(pty.adapterPath, [device('first', 1), device('absent', 5), device('second', 2)].join('\n')));
    await gateway.next('outpost/absent/availability', (message) => message.payload === 'offline' && gateway.adapter.bus('rs485')?.isOnline('absent') === false);
    expect(gateway.logLines.some((line) => line.includes('device offline') && line.includes('device=absent'))).toBe(true);
    const absentBefore = gateway.adapter.bus('rs485')?.deviceStats('absent')?.polls ?? 0;
    const withAbsent = await measure(gateway);
    const absentPolls = (gateway.adapter.bus('rs485')?.deviceStats('absent')?.polls ?? 0) - absentBefore;

    // A 200 ms poll interval gives 10 polls in the window. The offline unit is polled after 200,
    // 400, 800, 1600 ms... and costs one 100 ms timeout each time, which fits between the polls
    // of the others, so they keep (nearly) their baseline rate.
    console.log(
      `RTU polls in ${windowMs} ms: baseline first ${baseline.first}, second ${baseline.second}; ` +
        `with an absent unit first ${withAbsent.first}, second ${withAbsent.second}, absent ${absentPolls}`,
    );
    expect(withAbsent.first).toBeGreaterThanOrEqual(Math.floor(baseline.first * 0.8));
    expect(withAbsent.second).toBeGreaterThanOrEqual(Math.floor(baseline.second * 0.8));
    expect(baseline.first).toBeGreaterThanOrEqual(5);
    expect(absentPolls).toBeLessThanOrEqual(4);
    expect(gateway.on('outpost/first/v').at(-1)?.payload).toBe('11');
    expect(gateway.on('outpost/second/v').at(-1)?.payload).toBe('22');
    const statuses = gateway.adapter.deviceStatuses();
    expect(statuses.find((status) => status.name === 'absent')).toMatchObject({ online: false, lastError: expect.stringContaining('timed out after') });
    expect(statuses.find((status) => status.name === 'first')).toMatchObject({ online: true });
  });

  it('reopens an unplugged adapter', async () => {
    const directory = await makeTempDir();
    cleanups.push(() => directory.remove());
    const units = { units: { 1: { holding: { 0: 5 } } } };
    let pty = await createPtyPair(directory.path);
    let device = await startRtuDevice(pty.devicePath, units);
    const gateway = await gatewayFor(rtuBus(pty.adapterPath, `- { name: meter, unit_id: 1, points: [{ name: v, address: "40001" }] }`));
    await gateway.next('outpost/meter/availability', (message) => message.payload === 'online');

    // Unplug: the pty disappears under the open port.
    const unpluggedAt = Date.now();
    await device.stop();
    await pty.stop();
    await gateway.next('outpost/meter/availability', (message) => message.payload === 'offline', 5000, unpluggedAt);
    expect(gateway.logLines.some((line) => line.includes('serial port closed; reopening'))).toBe(true);
    await delay(500);

    // Replug with the same link names and a new value.
    const pluggedAt = Date.now();
    pty = await createPtyPair(directory.path);
    device = await startRtuDevice(pty.devicePath, { units: { 1: { holding: { 0: 6 } } } });
    cleanups.push(() => pty.stop());
    cleanups.push(() => device.stop());
    await gateway.next('outpost/meter/availability', (message) => message.payload === 'online', 8000, pluggedAt);
    expect((await gateway.next('outpost/meter/v', (message) => message.payload === '6', 5000, pluggedAt)).payload).toBe('6');
    expect(gateway.logLines.some((line) => line.includes('serial port reopened'))).toBe(true);
  });

  it('starts without the port and opens it later', async () => {
    const directory = await makeTempDir();
    cleanups.push(() => directory.remove());
    const gateway = await gatewayFor(rtuBus(`${directory.path}/ttyAdapter`, `- { name: meter, unit_id: 1, points: [{ name: v, address: "40001" }] }`));
    await gateway.next('outpost/meter/availability', (message) => message.payload === 'offline');
    await delay(300);
    const pty = await createPtyPair(directory.path);
    cleanups.push(() => pty.stop());
    const device = await startRtuDevice(pty.devicePath, { units: { 1: { holding: { 0: 9 } } } });
    cleanups.push(() => device.stop());
    expect((await gateway.next('outpost/meter/v', () => true, 8000)).payload).toBe('9');
  });
});

/** CRC-16/MODBUS, written here again so the scripted device does not share Outpost's code. */
function crc(bytes: number[]): number {
  let value = 0xffff;
  for (const byte of bytes) {
    value ^= byte;
    for (let bit = 0; bit < 8; bit++) value = value & 1 ? (value >> 1) ^ 0xa001 : value >> 1;
  }
  return value;
}

function frame(bytes: number[]): Buffer {
  const checksum = crc(bytes);
  return Buffer.from([...bytes, checksum & 0xff, checksum >> 8]);
}

describe('RTU response matching', () => {
  it('discards foreign, corrupt and late responses', async () => {
    const directory = await makeTempDir();
    cleanups.push(() => directory.remove());
    const pty = await createPtyPair(directory.path);
    cleanups.push(() => pty.stop());

    // A scripted device on the device end. Unit 1 responds with 100 after a foreign frame (unit 9),
    // a frame with a wrong CRC and an exception frame of another function code. Unit 2 responds
    // with 777 only after its 150 ms timeout, so the response is late and must not reach unit 3, which
    // responds with 300.
    const port = new SerialPort({ path: pty.devicePath, baudRate: 19200, autoOpen: false });
    await new Promise<void>((resolve, reject) => port.open((error) => (error ? reject(error) : resolve())));
    cleanups.push(() => new Promise<void>((resolve) => port.close(() => resolve())));
    let received = Buffer.alloc(0);
    port.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      while (received.length >= 8) {
        const request = received.subarray(0, 8);
        received = received.subarray(8);
        const unit = request[0];
        if (unit === 1) {
          port.write(frame([9, 3, 2, 0x03, 0xe7]));
          const corrupt = frame([1, 3, 2, 0x00, 0x63]);
          corrupt[corrupt.length - 1] ^= 0xff;
          port.write(corrupt);
          port.write(frame([1, 0x84, 2]));
          port.write(frame([1, 3, 2, 0x00, 0x64]));
        } else if (unit === 2) {
          setTimeout(() => port.write(frame([2, 3, 2, 0x03, 0x09])), 180);
        } else if (unit === 3) {
          setTimeout(() => port.write(frame([3, 3, 2, 0x01, 0x2c])), 5);
        }
      }
    });

    const gateway = await gatewayFor(
      rtuBus(
        pty.adapterPath,
        `- { name: one, unit_id: 1, points: [{ name: v, address: "40001" }] }
- { name: two, unit_id: 2, points: [{ name: v, address: "40001" }] }
- { name: three, unit_id: 3, points: [{ name: v, address: "40001" }] }`,
      ),
    );
    await waitFor(() => gateway.on('outpost/three/v').length >= 5 && gateway.on('outpost/one/v').length >= 3, 8000, 'several polls');
    expect(new Set(gateway.on('outpost/one/v').map((message) => message.payload))).toEqual(new Set(['100']));
    expect(new Set(gateway.on('outpost/three/v').map((message) => message.payload))).toEqual(new Set(['300']));
    // RTU tells a late response from a new one only by its unit id. Unit 2 may therefore get its
    // own late response to its next, identical request, but the other units never get it.
    for (const message of gateway.on('outpost/two/v')) expect(message.payload).toBe('777');
    expect(gateway.adapter.bus('rs485')?.transport.stats.discarded).toBeGreaterThan(0);
  });
});
