/**
 * Serial-line sensors: a test writes text lines into one end of a socat pty pair, and the field
 * adapter reads the other end and publishes what its rules find.
 */

import { SerialPort } from 'serialport';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { startGateway, type TestGateway } from './fixtures/field-gateway.js';
import { createPtyPair, makeTempDir, type PtyPair } from './fixtures/modbus-device.js';
import { delay, waitFor } from './helpers/wait.js';

describe('serial-line sensors', () => {
  let directory: { path: string; remove(): Promise<void> };
  let pty: PtyPair;
  let sensor: SerialPort;
  let gateway: TestGateway;

  const write = (text: string): Promise<void> =>
    new Promise((resolve, reject) => {
      sensor.write(text, (error) => (error ? reject(error) : sensor.drain(() => resolve())));
    });

  beforeAll(async () => {
    directory = await makeTempDir();
    pty = await createPtyPair(directory.path);
    gateway = await startGateway(`
home_assistant_discovery: true
serial_lines:
  - name: gps
    path: ${pty.adapterPath}
    baud_rate: 4800
    max_line_length: 120
    reconnect_min_ms: 100
    rules:
      - match: '^\\$(?<talker>G[PN])GGA,(?<time>[\\d.]+),(?<lat>[\\d.]+),(?<ns>[NS]),(?<lon>[\\d.]+),(?<ew>[EW]),(?<fix>\\d),(?<satellites>\\d+),(?<hdop>[\\d.]+),(?<altitude>[-\\d.]+),M'
        nmea_checksum: true
        topic: '{prefix}/{line}/{talker}/{name}'
        values:
          - { group: satellites, type: integer }
          - { group: altitude, unit: m }
          - { group: ns, type: string, name: hemisphere }
      - format: key_value
        match: '='
`);
    sensor = new SerialPort({ path: pty.devicePath, baudRate: 4800, autoOpen: false });
    await new Promise<void>((resolve, reject) => sensor.open((error) => (error ? reject(error) : resolve())));
    await gateway.next('outpost/gps/availability', (message) => message.payload === 'online');
  }, 20_000);

  afterAll(async () => {
    if (sensor?.isOpen) await new Promise<void>((resolve) => sensor.close(() => resolve()));
    await gateway?.stop();
    await pty?.stop();
    await directory?.remove();
  });

  it('parses an NMEA sentence with named groups', async () => {
    await write('$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n');
    expect((await gateway.next('outpost/gps/GP/satellites')).payload).toBe('8');
    expect((await gateway.next('outpost/gps/GP/altitude')).payload).toBe('545.4');
    expect((await gateway.next('outpost/gps/GP/hemisphere')).payload).toBe('N');
  });

  it('announces values to Home Assistant', async () => {
    await write('$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\n');
    const config = JSON.parse((await gateway.next('homeassistant/sensor/outpost_gps/altitude/config')).payload) as Record<string, unknown>;
    expect(config).toMatchObject({ state_topic: 'outpost/gps/GP/altitude', unit_of_measurement: 'm', availability_topic: 'outpost/gps/availability' });
  });

  it('skips a sentence with a wrong checksum', async () => {
    await write('$GNGGA,123520,4807.038,N,01131.000,E,1,09,0.9,600.0,M,46.9,M,,*00\n');
    await write('T=1\n');
    await gateway.next('outpost/gps/T', (message) => message.payload === '1');
    expect(gateway.on('outpost/gps/GN/altitude')).toHaveLength(0);
    expect(gateway.adapter.line('gps')?.stats.invalid).toBe(1);
  });

  it('parses key=value lines', async () => {
    await write('T=21.5 H=40 status=ok\n');
    expect((await gateway.next('outpost/gps/T', (message) => message.payload === '21.5')).payload).toBe('21.5');
    expect((await gateway.next('outpost/gps/H')).payload).toBe('40');
    expect((await gateway.next('outpost/gps/status')).payload).toBe('ok');
  });

  it('joins a line split across two writes', async () => {
    await write('T=1');
    await delay(100);
    await write('9.5 H=4');
    await delay(100);
    await write('1\r\n');
    expect((await gateway.next('outpost/gps/T', (message) => message.payload === '19.5')).payload).toBe('19.5');
    expect((await gateway.next('outpost/gps/H', (message) => message.payload === '41')).payload).toBe('41');
    expect(gateway.on('outpost/gps/T').map((message) => message.payload)).not.toContain('1 H');
  });

  it('drops an overlong line and keeps reading', async () => {
    await write(`T=${'9'.repeat(200)}\nT=7\n`);
    await gateway.next('outpost/gps/T', (message) => message.payload === '7');
    expect(gateway.on('outpost/gps/T').some((message) => message.payload.startsWith('999'))).toBe(false);
    await waitFor(() => gateway.logLines.some((line) => line.includes('dropped a line longer than max_line_length')), 2000, 'the overlong-line log');
  });

  it('ignores lines that match no rule', async () => {
    const before = gateway.adapter.line('gps')?.stats.unmatched ?? 0;
    await write('hello sensor\nT=3\n');
    await gateway.next('outpost/gps/T', (message) => message.payload === '3');
    expect(gateway.adapter.line('gps')?.stats.unmatched).toBe(before + 1);
  });
});
