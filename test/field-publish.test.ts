/** Publishing options of the field adapter: JSON payloads, publish on change, Home Assistant discovery, availability. */

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { startGateway, type TestGateway } from './fixtures/field-gateway.js';
import { startTcpDevice, type TestDevice } from './fixtures/modbus-device.js';
import { delay } from './helpers/wait.js';

describe('field publishing', () => {
  let device: TestDevice;
  let gateway: TestGateway;

  beforeAll(async () => {
    device = await startTcpDevice({ units: { 1: { holding: { 0: 1000, 1: 1, 2: 50 }, coil: { 0: 1 } } } });
    gateway = await startGateway(`
payload_format: json
home_assistant_discovery: true
retain: true
buses:
  - name: plc
    protocol: tcp
    host: 127.0.0.1
    port: ${device.port}
    timeout_ms: 500
    poll_interval_ms: 100
    devices:
      - name: boiler
        unit_id: 1
        points:
          - { name: temperature, address: "40001", scale: 0.1, precision: 1, unit: °C, on_change: true, deadband: 0.5 }
          - { name: mode, address: "40002", on_change: true }
          - { name: setpoint, address: "40003", writable: true, unit: °C }
          - { name: burner, address: "00001", writable: true, qos: 1 }
`);
  }, 30_000);

  afterAll(async () => {
    await gateway?.stop();
    await device?.stop();
  });

  it('publishes JSON with value, unit and timestamp', async () => {
    const message = await gateway.next('outpost/boiler/temperature');
    const body = JSON.parse(message.payload) as { value: number; unit: string; timestamp: number };
    expect(body.value).toBe(100);
    expect(body.unit).toBe('°C');
    expect(Math.abs(body.timestamp - Date.now())).toBeLessThan(5000);
    expect(message.retain).toBe(false);
  });

  it('publishes on change beyond the deadband only', async () => {
    await gateway.next('outpost/boiler/temperature');
    await delay(400);
    // Polled about 4 times, published once: the value did not change.
    expect(gateway.on('outpost/boiler/temperature')).toHaveLength(1);
    await device.set(1, 'holding', 0, [1003]);
    await delay(400);
    expect(gateway.on('outpost/boiler/temperature')).toHaveLength(1);
    const since = Date.now();
    await device.set(1, 'holding', 0, [1010]);
    const changed = await gateway.next('outpost/boiler/temperature', () => true, 3000, since);
    expect(JSON.parse(changed.payload)).toMatchObject({ value: 101 });
  });

  it('publishes every poll without on_change', async () => {
    await delay(500);
    expect(gateway.on('outpost/boiler/setpoint').length).toBeGreaterThanOrEqual(3);
  });

  it('sends Home Assistant discovery messages', async () => {
    const sensor = await gateway.next('homeassistant/sensor/outpost_boiler/temperature/config');
    expect(sensor.retain).toBe(false);
    expect(JSON.parse(sensor.payload)).toMatchObject({
      unique_id: 'outpost_boiler_temperature',
      state_topic: 'outpost/boiler/temperature',
      availability_topic: 'outpost/boiler/availability',
      payload_available: 'online',
      payload_not_available: 'offline',
      unit_of_measurement: '°C',
      value_template: '{{ value_json.value }}',
      device: { identifiers: ['outpost_boiler'], name: 'boiler' },
    });
    const number = JSON.parse((await gateway.next('homeassistant/number/outpost_boiler/setpoint/config')).payload) as Record<string, unknown>;
    expect(number.command_topic).toBe('outpost/boiler/setpoint/set');
    expect(number).toMatchObject({ min: 0, max: 65535 });
    const toggle = JSON.parse((await gateway.next('homeassistant/switch/outpost_boiler/burner/config')).payload) as Record<string, unknown>;
    expect(toggle).toMatchObject({ command_topic: 'outpost/boiler/burner/set', payload_on: 'true', payload_off: 'false', state_on: 'true' });
  });

  it('accepts the switch command Home Assistant sends', async () => {
    const since = Date.now();
    await gateway.client.publishAsync('outpost/boiler/burner/set', 'false', { qos: 1 });
    const result = await gateway.next('outpost/boiler/burner/set/result', () => true, 3000, since);
    expect(JSON.parse(result.payload)).toMatchObject({ ok: true, value: false });
  });

  it('publishes offline when the adapter stops', async () => {
    await gateway.next('outpost/boiler/availability', (message) => message.payload === 'online');
    const since = Date.now();
    await gateway.restartAdapter();
    const offline = await gateway.next('outpost/boiler/availability', (message) => message.payload === 'offline', 3000, since);
    expect(offline.payload).toBe('offline');
    await gateway.next('outpost/boiler/availability', (message) => message.payload === 'online', 3000, since);
  });
});
