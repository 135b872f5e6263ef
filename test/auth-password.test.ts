import { execFile, spawn } from 'node:child_process';
import { chmod, chown, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type { IConnackPacket } from 'mqtt-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { SecurityConfigError } from '../src/auth/access-control.js';
import { parseHash, parsePasswordFile, PasswordFileError, updatePasswordText, verifyPassword } from '../src/auth/password-file.js';
import { runPasswd, type PasswdIo } from '../src/cli/passwd.js';
import { connectMqttJs, endMqttJs } from './helpers/broker.js';
import { mosquittoPub, subscribe as mosquittoSubscribe } from './helpers/mosquitto-clients.js';
import { canConnect, freePort } from './helpers/mosquitto-process.js';
import { RawClient } from './helpers/raw-client.js';
import { CapturedLog, createTempDir, passwordFileText, startSecureBroker, type SecureBroker, type TempDir } from './helpers/security.js';
import { delay, waitFor } from './helpers/wait.js';

const execFileAsync = promisify(execFile);

/** Debian's mosquitto package installs the tool and the broker here. */
const MOSQUITTO_PASSWD = '/usr/bin/mosquitto_passwd';
const MOSQUITTO_BROKER = '/usr/sbin/mosquitto';

/** Runs mosquitto_passwd in batch mode, e.g. `['-c', '-b', file, user, password]`. */
async function mosquittoPasswd(args: string[]): Promise<void> {
  await execFileAsync(MOSQUITTO_PASSWD, args, { timeout: 10_000 });
}

/** Runs `outpost passwd` in-process with captured output; the password comes from `input`. */
async function outpostPasswd(args: string[], input = ''): Promise<{ status: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const io: PasswdIo = {
    stdout: { write: (text: string) => ((stdout += text), true) } as unknown as NodeJS.WritableStream,
    stderr: { write: (text: string) => ((stderr += text), true) } as unknown as NodeJS.WritableStream,
    readPassword: () => Promise.resolve(input),
  };
  const status = await runPasswd(args, io);
  return { status, stdout, stderr };
}

async function connectRaw(port: number, version: 3 | 4 | 5, username: string | undefined, password: string | undefined, clientId = 'c'): Promise<{ client: RawClient; connack: IConnackPacket }> {
  const client = await RawClient.connect(port, { protocolVersion: version });
  const connack = await client.connectMqtt({ clientId, username, password: password === undefined ? undefined : Buffer.from(password) }, 15_000);
  return { client, connack };
}

describe('password hashes', () => {
  it('reads $7$ from mosquitto_passwd', async () => {
    const files = await createTempDir();
    try {
      const file = path.join(files.dir, 'passwd');
      await mosquittoPasswd(['-c', '-b', file, 'alice', 'secret']);
      const entry = parsePasswordFile(await readFile(file, 'utf8'), file).get('alice');
      expect(entry?.hashText).toMatch(/^\$7\$101\$/);
      expect(entry?.hash.kind).toBe('pbkdf2-sha512');
      expect(await verifyPassword(entry!.hash, Buffer.from('secret'))).toBe(true);
      expect(await verifyPassword(entry!.hash, Buffer.from('Secret'))).toBe(false);
    } finally {
      await files.remove();
    }
  });

  it('reads $6$ from mosquitto_passwd -H sha512', async () => {
    const files = await createTempDir();
    try {
      const file = path.join(files.dir, 'passwd');
      await mosquittoPasswd(['-c', '-H', 'sha512', '-b', file, 'bob', 'hunter2']);
      const entry = parsePasswordFile(await readFile(file, 'utf8'), file).get('bob');
      expect(entry?.hashText).toMatch(/^\$6\$/);
      expect(await verifyPassword(entry!.hash, Buffer.from('hunter2'))).toBe(true);
      expect(await verifyPassword(entry!.hash, Buffer.from('hunter3'))).toBe(false);
    } finally {
      await files.remove();
    }
  });

  it('rejects malformed and plain-text entries', () => {
    const text = 'ok:$6$c2FsdA==$' + Buffer.alloc(64).toString('base64') + '\nplain:secret\n# comment\n\nnocolon\nweird:$9$a$b$c\nok:$6$c2FsdA==$' + Buffer.alloc(64).toString('base64') + '\n';
    let caught: unknown;
    try {
      parsePasswordFile(text, 'pw');
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(PasswordFileError);
    const problems = (caught as PasswordFileError).problems;
    expect(problems).toHaveLength(4);
    expect(problems[0]).toMatch(/^pw:2: user "plain": not a mosquitto_passwd hash/);
    expect(problems[1]).toMatch(/^pw:5: expected username:hash/);
    expect(problems[2]).toMatch(/^pw:6: user "weird": unknown hash type \$9\$/);
    expect(problems[3]).toMatch(/^pw:7: user "ok" appears a second time/);
  });

  it('random text parses or raises PasswordFileError', () => {
    // A fixed-seed generator keeps the 500 inputs the same in every run.
    let seed = 4242;
    const random = (): number => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed / 2147483648;
    };
    const pieces = ['user', ':', '$', '7', '6', '101', 'c2FsdA==', 'AAAA', '=', '#', ' ', '\n', '\r', '\u0000', '999999999999'];
    for (let run = 0; run < 500; run++) {
      let text = '';
      const length = Math.floor(random() * 30);
      for (let i = 0; i < length; i++) text += pieces[Math.floor(random() * pieces.length)];
      try {
        parsePasswordFile(text, 'fuzz');
      } catch (error) {
        expect(error, JSON.stringify(text)).toBeInstanceOf(PasswordFileError);
      }
    }
  });

  it('rejects an absurd iteration count', () => {
    expect(parseHash(`$7$99999999999$c2FsdA==$${Buffer.alloc(64).toString('base64')}`)).toMatch(/iteration count/);
  });

  it('keeps other lines when updating', () => {
    const before = '# site users\nalice:$7$1$a$b\nbob:$6$x$y\n';
    expect(updatePasswordText(before, 'bob', '$7$2$c$d')).toEqual({ text: '# site users\nalice:$7$1$a$b\nbob:$7$2$c$d\n', found: true });
    expect(updatePasswordText(before, 'carol', '$7$2$c$d').text).toBe(`${before}carol:$7$2$c$d\n`);
    expect(updatePasswordText(before, 'alice', null)).toEqual({ text: '# site users\nbob:$6$x$y\n', found: true });
  });
});

describe('outpost passwd', () => {
  let files: TempDir;

  beforeAll(async () => {
    files = await createTempDir();
  });

  afterAll(async () => {
    await files.remove();
  });

  it('creates a $7$ file with mode 600', async () => {
    const file = path.join(files.dir, 'created');
    const result = await outpostPasswd(['-c', '-b', file, 'alice', 'pa:ss word']);
    expect(result.status).toBe(0);
    expect(result.stdout).toContain('user "alice" added');
    const text = await readFile(file, 'utf8');
    expect(text).toMatch(/^alice:\$7\$100000\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==\n$/);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    const entry = parsePasswordFile(text, file).get('alice');
    expect(await verifyPassword(entry!.hash, Buffer.from('pa:ss word'))).toBe(true);
  });

  it('updates and deletes users in place', async () => {
    const file = path.join(files.dir, 'updated');
    await mosquittoPasswd(['-c', '-b', file, 'alice', 'one']);
    await writeFile(file, `# managed by hand\n${await readFile(file, 'utf8')}`);
    expect((await outpostPasswd(['-I', '2000', file, 'bob'], 'two')).status).toBe(0);
    expect((await outpostPasswd(['-H', 'sha512', '-b', file, 'alice', 'three'])).stdout).toContain('updated');
    let entries = parsePasswordFile(await readFile(file, 'utf8'), file);
    expect(entries.get('bob')?.hashText).toMatch(/^\$7\$2000\$/);
    expect(entries.get('alice')?.hashText).toMatch(/^\$6\$/);
    expect(await verifyPassword(entries.get('alice')!.hash, Buffer.from('three'))).toBe(true);
    expect((await outpostPasswd(['-D', file, 'alice'])).status).toBe(0);
    const text = await readFile(file, 'utf8');
    expect(text.startsWith('# managed by hand\n')).toBe(true);
    entries = parsePasswordFile(text, file);
    expect([...entries.keys()]).toEqual(['bob']);
  });

  it('keeps owner and mode on update', async () => {
    const file = path.join(files.dir, 'owned');
    expect((await outpostPasswd(['-c', '-b', file, 'alice', 'one'])).status).toBe(0);
    await chmod(file, 0o640);
    // Tests run as root in CI, so the owner can be set to a user other than the current one.
    const canChown = process.getuid?.() === 0;
    if (canChown) await chown(file, 65534, 65534);
    expect((await outpostPasswd(['-b', file, 'bob', 'two'])).status).toBe(0);
    const stats = await stat(file);
    expect(stats.mode & 0o777).toBe(0o640);
    if (canChown) expect([stats.uid, stats.gid]).toEqual([65534, 65534]);
  });

  it('reports usage errors with status 2', async () => {
    expect((await outpostPasswd(['-b', 'file', 'user'])).status).toBe(2);
    expect((await outpostPasswd(['-c', '-D', 'file', 'user'])).status).toBe(2);
    expect((await outpostPasswd(['-H', 'md5', 'file', 'user'])).stderr).toContain('unknown hash algorithm "md5"');
    expect((await outpostPasswd(['-I', '0', 'file', 'user'])).stderr).toContain('invalid iteration count "0"');
    expect((await outpostPasswd(['-b', 'file', 'us:er', 'pw'])).stderr).toContain('contains ":"');
  });

  it('fails on a missing file without -c', async () => {
    const result = await outpostPasswd(['-b', path.join(files.dir, 'absent'), 'alice', 'pw']);
    expect(result.status).toBe(1);
    expect(result.stderr).toContain('file not found; use -c to create it');
  });

  it('writes files that Mosquitto accepts', async () => {
    const file = path.join(files.dir, 'for-mosquitto');
    expect((await outpostPasswd(['-c', '-b', file, 'alice', 'from-outpost'])).status).toBe(0);
    const port = await freePort();
    const configFile = await files.write('mosquitto.conf', `listener ${port} 127.0.0.1\nallow_anonymous false\npassword_file ${file}\nuser root\n`);
    const broker = spawn(MOSQUITTO_BROKER, ['-c', configFile], { stdio: ['ignore', 'ignore', 'pipe'] });
    let brokerLog = '';
    broker.stderr.on('data', (chunk: Buffer) => (brokerLog += chunk.toString()));
    try {
      await waitFor(() => canConnect(port), 5000, `mosquitto on port ${port}`);
      const accepted = await mosquittoPub(port, { topic: 't', message: 'm', extraArgs: ['-u', 'alice', '-P', 'from-outpost'] });
      expect(accepted.code, brokerLog + accepted.stderr).toBe(0);
      const refused = await mosquittoPub(port, { topic: 't', message: 'm', extraArgs: ['-u', 'alice', '-P', 'wrong'] });
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toMatch(/not authori[sz]ed/i);
    } finally {
      broker.kill('SIGTERM');
    }
  });
});

describe('password login', () => {
  let files: TempDir;
  let passwordFile: string;
  let tb: SecureBroker;
  const log = new CapturedLog();

  beforeAll(async () => {
    files = await createTempDir();
    passwordFile = path.join(files.dir, 'passwd');
    await mosquittoPasswd(['-c', '-b', passwordFile, 'alice', 'alice-secret']);
    await mosquittoPasswd(['-H', 'sha512', '-b', passwordFile, 'legacy', 'legacy-secret']);
    // Used by one test only, so its first login runs PBKDF2 instead of hitting the verified-login cache.
    await mosquittoPasswd(['-b', passwordFile, 'eager', 'eager-secret']);
    tb = await startSecureBroker({ listeners: [{ allow_anonymous: false, password_file: passwordFile }], sys: { interval_seconds: 1 } }, {}, log);
  });

  afterAll(async () => {
    await tb.stop();
    await files.remove();
  });

  it('MQTT.js logs in with a $7$ password', async () => {
    const client = await connectMqttJs(`mqtt://127.0.0.1:${tb.ports[0]}`, { username: 'alice', password: 'alice-secret' });
    await endMqttJs(client);
  });

  it('MQTT.js logs in with a $6$ password', async () => {
    const client = await connectMqttJs(`mqtt://127.0.0.1:${tb.ports[0]}`, { username: 'legacy', password: 'legacy-secret', protocolVersion: 5 });
    await endMqttJs(client);
  });

  it('mosquitto_pub and mosquitto_sub log in with -u -P', async () => {
    const port = tb.ports[0] ?? 0;
    const credentials = ['-u', 'alice', '-P', 'alice-secret'];
    const { result, messages } = await mosquittoSubscribe(port, { topics: ['pw/test'], count: 1, qos: 1, extraArgs: credentials }, () =>
      mosquittoPub(port, { topic: 'pw/test', message: 'hello', qos: 1, extraArgs: credentials }),
    );
    expect(result.code).toBe(0);
    expect(messages.map((message) => message.payload)).toEqual(['hello']);
  });

  it('mosquitto_pub with a wrong password is refused', async () => {
    const result = await mosquittoPub(tb.ports[0] ?? 0, { topic: 't', message: 'm', extraArgs: ['-u', 'alice', '-P', 'nope'] });
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(/not authori[sz]ed|bad user name or password/i);
  });

  it('3.1.1 wrong password gets return code 4', async () => {
    const { client, connack } = await connectRaw(tb.ports[0] ?? 0, 4, 'alice', 'wrong');
    expect(connack.returnCode).toBe(4);
    await client.waitClose();
  });

  it('v5 wrong password gets 0x86', async () => {
    const { client, connack } = await connectRaw(tb.ports[0] ?? 0, 5, 'alice', 'wrong');
    expect(connack.reasonCode).toBe(0x86);
    // The Reason String does not tell a wrong password from an unknown user.
    expect(connack.properties?.reasonString).toBe('bad user name or password');
    await client.waitClose();
  });

  it('unknown user looks like a wrong password', async () => {
    const { client, connack } = await connectRaw(tb.ports[0] ?? 0, 5, 'mallory', 'alice-secret');
    expect(connack.reasonCode).toBe(0x86);
    expect(connack.properties?.reasonString).toBe('bad user name or password');
    client.close();
  });

  it('user name without password is refused', async () => {
    const { client, connack } = await connectRaw(tb.ports[0] ?? 0, 4, 'alice', undefined);
    expect(connack.returnCode).toBe(4);
    client.close();
  });

  it('anonymous refused: 3.1.1 code 5, v5 0x87', async () => {
    const v4 = await connectRaw(tb.ports[0] ?? 0, 4, undefined, undefined);
    expect(v4.connack.returnCode).toBe(5);
    v4.client.close();
    const v5 = await connectRaw(tb.ports[0] ?? 0, 5, undefined, undefined);
    expect(v5.connack.reasonCode).toBe(0x87);
    v5.client.close();
  });

  it('failed logins are counted in $SYS and logged without the password', async () => {
    const before = tb.broker.access.loginFailures;
    const { client } = await connectRaw(tb.ports[0] ?? 0, 5, 'alice', 'Tr0ub4dor-never-logged');
    client.close();
    expect(tb.broker.access.loginFailures).toBe(before + 1);
    expect(log.text).toContain('login failed');
    expect(log.text).toContain('reason="wrong password"');
    expect(log.text).not.toContain('Tr0ub4dor-never-logged');
    expect(log.text).not.toContain('alice-secret');

    const watcher = await connectMqttJs(`mqtt://127.0.0.1:${tb.ports[0]}`, { username: 'alice', password: 'alice-secret' });
    try {
      const counts: number[] = [];
      watcher.on('message', (_topic, payload) => counts.push(Number(payload.toString())));
      await watcher.subscribeAsync('$SYS/broker/clients/login_failures');
      await waitFor(() => counts.some((count) => count >= before + 1), 3000, 'login failure count in $SYS');
    } finally {
      await endMqttJs(watcher);
    }
  });

  it('packets sent right after CONNECT wait for the login [MQTT-3.1.4-5]', async () => {
    const client = await RawClient.connect(tb.ports[0] ?? 0, { protocolVersion: 5 });
    try {
      // CONNECT, SUBSCRIBE and PUBLISH leave in one write, before the PBKDF2 check can finish.
      client.socket.cork();
      client.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, keepalive: 30, clientId: 'eager', username: 'eager', password: Buffer.from('eager-secret') });
      client.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'eager/t', qos: 1 }] });
      client.send({ cmd: 'publish', topic: 'eager/t', payload: Buffer.from('own'), qos: 1, retain: false, dup: false, messageId: 2 });
      client.socket.uncork();
      expect((await client.nextPacket(5000)).cmd).toBe('connack');
      expect((await client.expectPacket('suback')).granted).toEqual([1]);
      const next = [await client.nextPacket(), await client.nextPacket()].map((packet) => packet.cmd).sort();
      expect(next).toEqual(['puback', 'publish']);
    } finally {
      client.close();
    }
  });

  it('packets after a refused CONNECT are not processed [MQTT-3.1.4-5]', async () => {
    const watcher = await connectMqttJs(`mqtt://127.0.0.1:${tb.ports[0]}`, { username: 'alice', password: 'alice-secret' });
    const received: string[] = [];
    watcher.on('message', (topic) => received.push(topic));
    await watcher.subscribeAsync('refused/#');
    const client = await RawClient.connect(tb.ports[0] ?? 0, { protocolVersion: 4 });
    try {
      client.socket.cork();
      client.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 30, clientId: 'bad', username: 'alice', password: Buffer.from('wrong') });
      client.send({ cmd: 'publish', topic: 'refused/t', payload: Buffer.from('x'), qos: 0, retain: false, dup: false });
      client.socket.uncork();
      const connack = (await client.nextPacket(5000)) as IConnackPacket;
      expect(connack.returnCode).toBe(4);
      await client.waitClose();
      await delay(200);
      expect(received).toEqual([]);
    } finally {
      client.close();
      await endMqttJs(watcher);
    }
  });

  it('reload picks up a new user and keeps clients', async () => {
    const before = await connectMqttJs(`mqtt://127.0.0.1:${tb.ports[0]}`, { username: 'alice', password: 'alice-secret' });
    await mosquittoPasswd(['-b', passwordFile, 'carol', 'carol-secret']);
    const result = tb.broker.reloadSecurity();
    expect(result.failed).toEqual([]);
    expect(result.reloaded.filter((line) => line.endsWith(`password file ${passwordFile} (4 users)`))).toHaveLength(1);
    const carol = await connectMqttJs(`mqtt://127.0.0.1:${tb.ports[0]}`, { username: 'carol', password: 'carol-secret' });
    expect(before.connected).toBe(true);
    await endMqttJs(carol);
    await endMqttJs(before);
  });

  it('reload keeps the old file when the new one is bad', async () => {
    const good = await readFile(passwordFile, 'utf8');
    await writeFile(passwordFile, `${good}dave:plaintext\n`);
    try {
      const result = tb.broker.reloadSecurity();
      expect(result.failed).toHaveLength(1);
      expect(result.failed[0]).toContain('user "dave": not a mosquitto_passwd hash');
      const client = await connectMqttJs(`mqtt://127.0.0.1:${tb.ports[0]}`, { username: 'alice', password: 'alice-secret' });
      await endMqttJs(client);
    } finally {
      await writeFile(passwordFile, good);
    }
  });
});

describe('failed-login delay', () => {
  it('grows per address and stops at the maximum', async () => {
    const files = await createTempDir();
    const passwordFile = await files.write('passwd', await passwordFileText({ alice: 'right' }));
    const tb = await startSecureBroker({ listeners: [{ allow_anonymous: false, password_file: passwordFile }] }, { login_delay_initial_ms: 100, login_delay_max_ms: 400 });
    try {
      const elapsed: number[] = [];
      for (let attempt = 0; attempt < 4; attempt++) {
        const started = Date.now();
        const { client, connack } = await connectRaw(tb.ports[0] ?? 0, 4, 'alice', 'wrong');
        elapsed.push(Date.now() - started);
        expect(connack.returnCode).toBe(4);
        client.close();
      }
      // Delays of 100, 200, 400 and 400 ms (capped), plus the time of the hash itself.
      expect(elapsed[0]).toBeGreaterThanOrEqual(95);
      expect(elapsed[1]).toBeGreaterThanOrEqual(195);
      expect(elapsed[2]).toBeGreaterThanOrEqual(395);
      expect(elapsed[3]).toBeGreaterThanOrEqual(395);
      expect(elapsed[3]).toBeLessThan(1500);
      // A successful login clears the record, so the next failure waits the initial delay again.
      const { client, connack } = await connectRaw(tb.ports[0] ?? 0, 4, 'alice', 'right');
      expect(connack.returnCode).toBe(0);
      client.close();
      const started = Date.now();
      const again = await connectRaw(tb.ports[0] ?? 0, 4, 'alice', 'wrong');
      expect(Date.now() - started).toBeLessThan(395);
      again.client.close();
    } finally {
      await tb.stop();
      await files.remove();
    }
  });
});

describe('password file at start', () => {
  it('bad password file stops the start', async () => {
    const files = await createTempDir();
    try {
      const file = await files.write('passwd', 'alice:secret\n');
      const start = startSecureBroker({ listeners: [{ password_file: file }] });
      await expect(start).rejects.toThrow(SecurityConfigError);
      await expect(startSecureBroker({ listeners: [{ password_file: file }] })).rejects.toThrow(/passwd:1: user "alice": not a mosquitto_passwd hash/);
    } finally {
      await files.remove();
    }
  });
});
