// End-to-end tests of `outpost passwd` and of SIGHUP reloading, run against the compiled
// dist/cli/main.js that `npm test` builds first; after editing src/, run `npx tsc -p tsconfig.json`.

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { parsePasswordFile, verifyPassword } from '../src/auth/password-file.js';
import { connectMqttJs, endMqttJs } from './helpers/broker.js';
import { createTempDir, type TempDir } from './helpers/security.js';

const execFileAsync = promisify(execFile);

const repoRoot = fileURLToPath(new URL('..', import.meta.url));
const mainScript = path.join(repoRoot, 'dist/cli/main.js');
const MOSQUITTO_PASSWD = '/usr/bin/mosquitto_passwd';

const started: ChildProcess[] = [];
let files: TempDir;

beforeAll(async () => {
  if (!existsSync(mainScript)) throw new Error(`${mainScript} not found; run npx tsc -p tsconfig.json first`);
  files = await createTempDir();
});

afterEach(() => {
  for (const child of started.splice(0)) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
});

afterAll(async () => {
  await files.remove();
});

/** Runs `node dist/cli/main.js` with `args` and `input` on stdin, and resolves when it exits. */
function runOutpost(args: string[], input = ''): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [mainScript, ...args], { cwd: repoRoot, env: { ...process.env, JOURNAL_STREAM: undefined } });
  started.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  child.stdin.end(input);
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Collects the stderr of a running broker and waits for lines in it. */
class BrokerOutput {
  text = '';
  private readonly child: ChildProcess;

  constructor(child: ChildProcess) {
    this.child = child;
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (this.text += chunk));
  }

  /** Resolves with the first match of `pattern` in the output after `from` characters. */
  waitFor(pattern: RegExp, from = 0, timeoutMs = 5000): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        const match = pattern.exec(this.text.slice(from));
        if (match === null) return false;
        clearInterval(timer);
        resolve(match);
        return true;
      };
      const deadline = Date.now() + timeoutMs;
      const timer = setInterval(() => {
        if (check()) return;
        if (Date.now() > deadline || this.child.exitCode !== null) {
          clearInterval(timer);
          reject(new Error(`no ${pattern} in the broker output within ${timeoutMs} ms:\n${this.text}`));
        }
      }, 20);
    });
  }
}

describe('outpost passwd command', () => {
  it('creates a file from a piped password', async () => {
    const file = path.join(files.dir, 'cli-passwd');
    const result = await runOutpost(['passwd', '-c', file, 'alice'], 'piped secret\n');
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('user "alice" added');
    const entry = parsePasswordFile(await readFile(file, 'utf8'), file).get('alice');
    expect(await verifyPassword(entry!.hash, Buffer.from('piped secret'))).toBe(true);
  });

  it('prints its help', async () => {
    const result = await runOutpost(['passwd', '--help']);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('Usage: outpost passwd');
  });

  it('rejects a bad option with status 2', async () => {
    const result = await runOutpost(['passwd', '-H', 'md5', 'file', 'user']);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('unknown hash algorithm "md5"');
  });
});

describe('SIGHUP', () => {
  it('reloads password and ACL files', async () => {
    const passwordFile = path.join(files.dir, 'hup-passwd');
    await execFileAsync(MOSQUITTO_PASSWD, ['-c', '-b', passwordFile, 'alice', 'alice-secret']);
    const aclFile = await files.write('hup.acl', 'user alice\ntopic readwrite a/#\n');
    const config = await files.write(
      'hup.yaml',
      [
        'listeners:',
        '  - host: 127.0.0.1',
        '    port: 0',
        '    allow_anonymous: false',
        `    password_file: ${passwordFile}`,
        `    acl_file: ${aclFile}`,
        `data_dir: ${path.join(files.dir, 'hup-data')}`,
        'persistence:',
        '  enabled: false',
        '',
      ].join('\n'),
    );
    const child = spawn(process.execPath, [mainScript, '-c', config], { cwd: repoRoot, env: { ...process.env, JOURNAL_STREAM: undefined } });
    started.push(child);
    const output = new BrokerOutput(child);
    const port = Number((await output.waitFor(/listening .*port=(\d+)/))[1]);
    const url = `mqtt://127.0.0.1:${port}`;

    const alice = await connectMqttJs(url, { username: 'alice', password: 'alice-secret', clientId: 'alice', protocolVersion: 5 });
    await expect(connectMqttJs(url, { username: 'bob', password: 'bob-secret', clientId: 'bob' })).rejects.toThrow(/Bad username or password/i);

    await execFileAsync(MOSQUITTO_PASSWD, ['-b', passwordFile, 'bob', 'bob-secret']);
    const before = output.text.length;
    child.kill('SIGHUP');
    await output.waitFor(/reloaded .*password file/, before);
    const bob = await connectMqttJs(url, { username: 'bob', password: 'bob-secret', clientId: 'bob' });
    // The client connected before the reload keeps its connection.
    expect(alice.connected).toBe(true);
    await endMqttJs(bob);

    await files.write('hup.acl', 'topic read\n');
    const beforeBadFile = output.text.length;
    child.kill('SIGHUP');
    await output.waitFor(/reload failed.*hup\.acl:1/, beforeBadFile);
    // The old ACL stays in use, so alice may still publish to a/#.
    await alice.publishAsync('a/b', 'still allowed', { qos: 1 });
    await endMqttJs(alice);

    child.kill('SIGTERM');
    await new Promise((resolve) => child.once('close', resolve));
  }, 20_000);
});
