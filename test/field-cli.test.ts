/** Tests of `outpost modbus read|write` and of `outpost -c FILE` with a field section, against the pymodbus test device. */

import { execFile, spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { runModbusCommand } from '../src/field/cli.js';
import { createPtyPair, makeTempDir, startRtuDevice, startTcpDevice, type PtyPair, type TestDevice } from './fixtures/modbus-device.js';
import { connectMqttJs, endMqttJs } from './helpers/broker.js';
import { waitFor } from './helpers/wait.js';

async function run(args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const status = await runModbusCommand(args, { stdout: (text) => (stdout += text), stderr: (text) => (stderr += text) });
  return { status, stdout, stderr };
}

describe('outpost modbus over TCP', () => {
  let device: TestDevice;
  let target: string;

  beforeAll(async () => {
    device = await startTcpDevice({ units: { 1: { holding: { 0: 0x4148, 1: 0x0000, 2: 0, 3: 0, 10: 0 }, coil: { 0: 1, 1: 0 } } } });
    target = `127.0.0.1:${device.port}`;
  }, 20_000);

  afterAll(async () => {
    await device?.stop();
  });

  it('reads registers and decodes every order', async () => {
    const result = await run(['read', '--tcp', target, '--unit', '1', '--address', '4x0001', '--type', 'float32']);
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    expect(result.stdout).toContain('unit 1 holding_register 0..1 (400001..400002), function code 3');
    expect(result.stdout).toMatch(/^0 +400001 +0x4148 +16712 +16712$/m);
    expect(result.stdout).toMatch(/^float32 +ABCD 12\.5 +CDAB \S+ +BADC 197632 +DCBA \S+$/m);
  });

  it('decodes wider types without --type', async () => {
    const result = await run(['read', '--tcp', target, '--unit', '1', '--address', '0', '--table', 'holding', '--count', '4']);
    expect(result.status).toBe(0);
    expect(result.stdout).toMatch(/^int32 +ABCD 1095237632 /m);
    expect(result.stdout).toMatch(/^float64 +ABCD /m);
  });

  it('reads coils', async () => {
    const result = await run(['read', '--tcp', target, '--unit', '1', '--address', '0', '--table', 'coil', '--count', '2']);
    expect(result.stderr).toBe('');
    expect(result.stdout).toMatch(/^0 +1\n1 +0\n$/m);
  });

  it('writes a value and reads it back', async () => {
    const result = await run(['write', '--tcp', target, '--unit', '1', '--address', '4x0003', '--type', 'float32', '--order', 'CDAB', '--value=-3.75']);
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    expect(result.stdout).toContain('wrote -3.75 as float32 CDAB to unit 1 holding_register 2 registers 0x0000 0xc070');
    expect(result.stdout).toMatch(/^float32 +ABCD \S+ +CDAB -3\.75 /m);
  });

  it('names the exception of a rejected read', async () => {
    const result = await run(['read', '--tcp', target, '--unit', '1', '--address', '4x0100']);
    expect(result.status).toBe(1);
    expect(result.stderr).toBe('outpost modbus: read failed: ILLEGAL DATA ADDRESS\n');
  });

  it('times out on an absent unit', async () => {
    const result = await run(['read', '--tcp', target, '--unit', '9', '--address', '4x0001', '--timeout', '200']);
    expect(result.status).toBe(1);
    expect(result.stderr).toBe('outpost modbus: read failed: timed out after 200 ms waiting for a response from unit 9\n');
  });

  it('reports a refused connection', async () => {
    const result = await run(['read', '--tcp', '127.0.0.1:1', '--unit', '1', '--address', '4x0001']);
    expect(result.status).toBe(1);
    expect(result.stderr).toContain('could not open 127.0.0.1:1: connect ECONNREFUSED');
  });
});

describe('outpost modbus over RTU', () => {
  let directory: { path: string; remove(): Promise<void> };
  let pty: PtyPair;
  let device: TestDevice;

  beforeAll(async () => {
    directory = await makeTempDir();
    pty = await createPtyPair(directory.path);
    device = await startRtuDevice(pty.devicePath, { units: { 3: { input: { 4: 0x0000, 5: 0x4148 } } } });
  }, 20_000);

  afterAll(async () => {
    await device?.stop();
    await pty?.stop();
    await directory?.remove();
  });

  it('reads input registers', async () => {
    const result = await run(['read', '--rtu', pty.adapterPath, '--baud', '19200', '--unit', '3', '--address', '4', '--table', 'input', '--type', 'float32']);
    expect(result.stderr).toBe('');
    expect(result.stdout).toMatch(/CDAB 12\.5/);
  });

  it('reports a missing serial device', async () => {
    const result = await run(['read', '--rtu', `${directory.path}/missing`, '--unit', '1', '--address', '4x0001']);
    expect(result.status).toBe(1);
    expect(result.stderr).toContain(`could not open ${directory.path}/missing`);
  });
});

describe('outpost modbus usage', () => {
  it.each([
    [['read', '--unit', '1', '--address', '0'], 'give exactly one connection: --tcp HOST[:PORT] or --rtu PATH'],
    [['read', '--tcp', 'h', '--address', '0'], 'missing --unit ID'],
    [['read', '--tcp', 'h', '--unit', '1', '--address', '40001'], '--address 40001 is ambiguous: add --table for the 0-based address 40001, or write the Modicon reference with an x, e.g. 4x0001'],
    [['read', '--tcp', 'h', '--unit', '300', '--address', '0'], 'invalid --unit "300"; use an integer from 0 to 255'],
    [['read', '--tcp', 'h', '--unit', '1', '--address', '0', '--type', 'float'], 'invalid --type "float"; use one of bool, int16'],
    [['write', '--tcp', 'h', '--unit', '1', '--address', '3x0001', '--value', '1'], 'table input_register is read-only in Modbus'],
    [['read', '--tcp', 'h', '--unit', '1', '--address', '40001', '--table', 'coil', '--type', 'int16'], '--type int16 does not fit table coil'],
    [['write', '--tcp', 'h', '--unit', '1', '--address', '4x0001'], 'write needs --value VALUE'],
    [['write', '--tcp', 'h', '--unit', '1', '--address', '4x0001', '--value', '-1'], 'write a negative value as --value=-3.75'],
    [['erase'], 'unknown action "erase"; use read or write'],
  ])('rejects %j', async (args, message) => {
    const result = await run(args);
    expect(result.status).toBe(2);
    expect(result.stderr).toContain(message);
  });

  it('prints help', async () => {
    const result = await run(['--help']);
    expect(result.status).toBe(0);
    expect(result.stdout).toContain('Usage: outpost modbus read');
  });
});

describe('outpost command with the field adapter', () => {
  const mainScript = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));

  it('runs outpost modbus read', async () => {
    const device = await startTcpDevice({ units: { 1: { holding: { 0: 0x4148, 1: 0 } } } });
    try {
      const result = await new Promise<{ status: number | null; stdout: string }>((resolve) => {
        execFile(process.execPath, [mainScript, 'modbus', 'read', '--tcp', `127.0.0.1:${device.port}`, '--unit', '1', '--address', '4x0001', '--type', 'float32'], { timeout: 10_000 }, (error, stdout) => {
          resolve({ status: error === null ? 0 : (error.code as number | null), stdout });
        });
      });
      expect(result.status).toBe(0);
      expect(result.stdout).toContain('float32  ABCD 12.5');
    } finally {
      await device.stop();
    }
  });

  it('publishes readings and stops cleanly', async () => {
    const device = await startTcpDevice({ units: { 1: { holding: { 0: 77 } } } });
    const directory = await makeTempDir();
    const configPath = path.join(directory.path, 'outpost.yaml');
    await writeFile(
      configPath,
      `listeners:
  - { host: 127.0.0.1, port: 0 }
data_dir: ${directory.path}/data
sys: { interval_seconds: 0 }
field:
  retain: true
  buses:
    - name: plc
      protocol: tcp
      host: 127.0.0.1
      port: ${device.port}
      poll_interval_ms: 200
      devices:
        - { name: meter, unit_id: 1, points: [{ name: v, address: "40001" }] }
`,
    );
    const child = spawn(process.execPath, [mainScript, '-c', configPath], { env: { ...process.env, JOURNAL_STREAM: undefined } });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      await waitFor(() => /listening.* port=(\d+)/.test(stderr), 10_000, 'the broker to listen');
      const port = Number(/listening.* port=(\d+)/.exec(stderr)?.[1]);
      await waitFor(() => stderr.includes('device online'), 10_000, 'the device to come online');
      const client = await connectMqttJs(`mqtt://127.0.0.1:${port}`);
      const received = new Map<string, string>();
      client.on('message', (topic, payload) => received.set(topic, payload.toString()));
      await client.subscribeAsync('outpost/#');
      await waitFor(() => received.get('outpost/meter/v') === '77' && received.get('outpost/meter/availability') === 'online', 5000, 'retained readings');
      await endMqttJs(client);
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(stderr).toContain('field adapter stopped');
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      await device.stop();
      await directory.remove();
    }
  });
});
