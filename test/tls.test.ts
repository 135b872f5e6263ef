import { copyFile, readFile } from 'node:fs/promises';
import path from 'node:path';
import tls from 'node:tls';
import type { IClientOptions } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { SecurityConfigError } from '../src/auth/access-control.js';
import { TlsConfigError } from '../src/transport/tls.js';
import { connectMqttJs, endMqttJs } from './helpers/broker.js';
import { createTestCertificates, type TestCertificates } from './helpers/certs.js';
import { mosquittoPub, subscribe as mosquittoSubscribe } from './helpers/mosquitto-clients.js';
import { CapturedLog, createTempDir, startSecureBroker, type SecureBroker, type TempDir } from './helpers/security.js';
import { waitFor } from './helpers/wait.js';

let certs: TestCertificates;
let files: TempDir;
let ca: Buffer;

beforeAll(async () => {
  certs = await createTestCertificates();
  files = await createTempDir();
  ca = await readFile(certs.ca.cert);
}, 30_000);

afterAll(async () => {
  await certs.remove();
  await files.remove();
});

/** Opens a raw TLS connection and returns the server certificate's CN, or throws the handshake error. */
function handshake(port: number, options: tls.ConnectionOptions = {}): Promise<{ commonName: string; protocol: string | null; socket: tls.TLSSocket }> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca, ...options });
    socket.once('secureConnect', () => {
      const commonName = String(socket.getPeerCertificate().subject.CN);
      resolve({ commonName, protocol: socket.getProtocol(), socket });
    });
    socket.once('error', reject);
  });
}

/** Resolves when the server closes `socket`, or rejects when it stays open. */
function closedByServer(socket: tls.TLSSocket, timeoutMs = 2000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the server kept the TLS connection open')), timeoutMs);
    socket.on('error', () => undefined);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.resume();
  });
}

describe('mqtts listener', () => {
  let tb: SecureBroker;
  let certFile: string;
  let keyFile: string;
  const log = new CapturedLog();

  beforeAll(async () => {
    // Copies, so the reload test can replace them without touching the originals.
    certFile = path.join(files.dir, 'active.crt');
    keyFile = path.join(files.dir, 'active.key');
    await copyFile(certs.server.cert, certFile);
    await copyFile(certs.server.key, keyFile);
    tb = await startSecureBroker(
      { listeners: [{ protocol: 'mqtts', tls: { ...defaultTls(), cert_file: certFile, key_file: keyFile } }] },
      {},
      log,
    );
  });

  afterAll(async () => {
    await tb.stop();
  });

  it('MQTT.js publishes and subscribes over mqtts', async () => {
    const url = `mqtts://127.0.0.1:${tb.ports[0]}`;
    const options: IClientOptions = { ca, rejectUnauthorized: true };
    const subscriber = await connectMqttJs(url, { ...options, clientId: 'tls-sub' });
    const publisher = await connectMqttJs(url, { ...options, clientId: 'tls-pub', protocolVersion: 5 });
    try {
      const received: string[] = [];
      subscriber.on('message', (_topic, payload) => received.push(payload.toString()));
      await subscriber.subscribeAsync('tls/t', { qos: 1 });
      await publisher.publishAsync('tls/t', 'over tls', { qos: 1 });
      await waitFor(() => received.length === 1, 2000, 'message over mqtts');
      expect(received).toEqual(['over tls']);
    } finally {
      await endMqttJs(subscriber);
      await endMqttJs(publisher);
    }
  });

  it('mosquitto_pub and mosquitto_sub work with --cafile', async () => {
    const port = tb.ports[0] ?? 0;
    const tlsArgs = ['--cafile', certs.ca.cert];
    const { result, messages } = await mosquittoSubscribe(port, { topics: ['tls/m'], count: 1, qos: 1, protocol: 'mqttv5', extraArgs: tlsArgs }, () =>
      mosquittoPub(port, { topic: 'tls/m', message: 'from mosquitto', qos: 1, extraArgs: tlsArgs }),
    );
    expect(result.code).toBe(0);
    expect(messages.map((message) => message.payload)).toEqual(['from mosquitto']);
  });

  it('accepts TLS 1.2 by default', async () => {
    const { protocol, socket } = await handshake(tb.ports[0] ?? 0, { maxVersion: 'TLSv1.2' });
    expect(protocol).toBe('TLSv1.2');
    socket.destroy();
  });

  it('refuses a client that does not trust the server', async () => {
    await expect(handshake(tb.ports[0] ?? 0, { ca: undefined })).rejects.toThrow(/unable to verify the first certificate|self[- ]signed|unable to get local issuer/i);
  });

  it('reloads certificate and key without dropping clients', async () => {
    const url = `mqtts://127.0.0.1:${tb.ports[0]}`;
    const before = await handshake(tb.ports[0] ?? 0);
    expect(before.commonName).toBe('localhost');
    const client = await connectMqttJs(url, { ca, rejectUnauthorized: true, clientId: 'survivor' });
    try {
      await copyFile(certs.renewedServer.cert, certFile);
      await copyFile(certs.renewedServer.key, keyFile);
      const result = tb.broker.reloadSecurity();
      expect(result.failed).toEqual([]);
      expect(result.reloaded.some((line) => line.includes(`TLS certificate ${certFile}`))).toBe(true);

      const after = await handshake(tb.ports[0] ?? 0, { checkServerIdentity: () => undefined });
      expect(after.commonName).toBe('outpost-renewed');
      after.socket.destroy();
      // The client connected before the reload still works on the old session.
      await client.publishAsync('tls/after-reload', 'still here', { qos: 1 });
      expect(client.connected).toBe(true);
    } finally {
      await endMqttJs(client);
      before.socket.destroy();
      await copyFile(certs.server.cert, certFile);
      await copyFile(certs.server.key, keyFile);
      tb.broker.reloadSecurity();
    }
  });

  it('keeps the old certificate when the new key does not match', async () => {
    await copyFile(certs.client.key, keyFile);
    try {
      const result = tb.broker.reloadSecurity();
      expect(result.failed).toHaveLength(1);
      expect(result.failed[0]).toContain('OpenSSL rejected');
      const { commonName, socket } = await handshake(tb.ports[0] ?? 0);
      expect(commonName).toBe('localhost');
      socket.destroy();
    } finally {
      await copyFile(certs.server.key, keyFile);
    }
  });
});

describe('TLS minimum version', () => {
  it('TLSv1.3 listener refuses a TLS 1.2 client', async () => {
    const tb = await startSecureBroker({ listeners: [{ protocol: 'mqtts', tls: { ...defaultTls(), min_version: 'TLSv1.3' } }] });
    try {
      await expect(handshake(tb.ports[0] ?? 0, { maxVersion: 'TLSv1.2' })).rejects.toThrow(/protocol version|alert/i);
      const { protocol, socket } = await handshake(tb.ports[0] ?? 0);
      expect(protocol).toBe('TLSv1.3');
      socket.destroy();
    } finally {
      await tb.stop();
    }
  });
});

describe('mutual TLS', () => {
  let tb: SecureBroker;
  let aclFile: string;

  beforeAll(async () => {
    aclFile = await files.write('mtls.acl', 'user sensor-1\ntopic readwrite sensors/sensor-1/#\n\nuser CN=sensor-1,O=Plant\ntopic readwrite subject/#\n');
    const required = { ...defaultTls(), ca_file: certs.ca.cert, require_certificate: true };
    tb = await startSecureBroker({
      listeners: [
        { name: 'mtls', protocol: 'mqtts', allow_anonymous: false, tls: required },
        { name: 'identity', protocol: 'mqtts', allow_anonymous: false, acl_file: aclFile, tls: { ...required, use_identity_as_username: true } },
        { name: 'subject', protocol: 'mqtts', allow_anonymous: false, acl_file: aclFile, tls: { ...required, use_subject_as_username: true } },
      ],
    });
  });

  afterAll(async () => {
    await tb.stop();
  });

  function clientTls(holder: 'client' | 'untrustedClient'): Promise<IClientOptions> {
    return Promise.all([readFile(certs[holder].cert), readFile(certs[holder].key)]).then(([cert, key]) => ({ ca, cert, key, rejectUnauthorized: true }));
  }

  it('refuses a client without certificate', async () => {
    // With TLS 1.3 the server's refusal arrives after the client's handshake has completed.
    let outcome: string;
    try {
      const { socket } = await handshake(tb.ports[0] ?? 0);
      await closedByServer(socket);
      outcome = 'closed';
    } catch (error) {
      outcome = error instanceof Error ? error.message : String(error);
    }
    expect(outcome).toMatch(/closed|certificate required|alert/i);
  });

  it('refuses a certificate from an untrusted CA', async () => {
    const options = await clientTls('untrustedClient');
    await expect(connectMqttJs(`mqtts://127.0.0.1:${tb.ports[0]}`, { ...options, clientId: 'intruder' }, 2000)).rejects.toThrow();
  });

  it('certificate alone needs an identity', async () => {
    // allow_anonymous is false, but the certificate alone does not log a client in: it still needs
    // a user name from the password file or the certificate identity.
    const options = await clientTls('client');
    await expect(connectMqttJs(`mqtts://127.0.0.1:${tb.ports[0]}`, { ...options, clientId: 'no-identity' })).rejects.toThrow(/Not authorized|Connection refused/i);
    const identity = await connectMqttJs(`mqtts://127.0.0.1:${tb.ports[1]}`, { ...options, clientId: 'with-identity' });
    await endMqttJs(identity);
  });

  it('uses the certificate CN as user name', async () => {
    const options = await clientTls('client');
    // The user name and password in CONNECT are ignored, as in Mosquitto.
    const client = await connectMqttJs(`mqtts://127.0.0.1:${tb.ports[1]}`, { ...options, clientId: 'cn-user', protocolVersion: 5, username: 'alice', password: 'ignored' });
    try {
      const own = await client.subscribeAsync('sensors/sensor-1/#');
      expect(own[0]?.qos).toBe(0);
      await expect(client.subscribeAsync('sensors/sensor-2/#')).rejects.toThrow(/Not authorized/i);
      await expect(client.publishAsync('sensors/sensor-2/t', 'x', { qos: 1 })).rejects.toThrow(/Not authorized/i);
    } finally {
      await endMqttJs(client);
    }
  });

  it('uses the certificate subject as user name', async () => {
    const options = await clientTls('client');
    const client = await connectMqttJs(`mqtts://127.0.0.1:${tb.ports[2]}`, { ...options, clientId: 'subject-user', protocolVersion: 5 });
    try {
      expect((await client.subscribeAsync('subject/a'))[0]?.qos).toBe(0);
      await expect(client.subscribeAsync('sensors/sensor-1/#')).rejects.toThrow(/Not authorized/i);
    } finally {
      await endMqttJs(client);
    }
  });

  it('mosquitto_pub logs in with --cert and --key', async () => {
    const port = tb.ports[1] ?? 0;
    const tlsArgs = ['--cafile', certs.ca.cert, '--cert', certs.client.cert, '--key', certs.client.key];
    const { result, messages } = await mosquittoSubscribe(port, { topics: ['sensors/sensor-1/t'], count: 1, qos: 1, extraArgs: tlsArgs }, () =>
      mosquittoPub(port, { topic: 'sensors/sensor-1/t', message: 'signed', qos: 1, extraArgs: tlsArgs }),
    );
    expect(result.code).toBe(0);
    expect(messages.map((message) => message.payload)).toEqual(['signed']);
    const withoutCertificate = await mosquittoPub(port, { topic: 'sensors/sensor-1/t', message: 'x', extraArgs: ['--cafile', certs.ca.cert] });
    expect(withoutCertificate.code).not.toBe(0);
  });
});

describe('TLS settings at start', () => {
  it('mqtts without certificate stops the start', async () => {
    const start = startSecureBroker({ listeners: [{ name: 'secure', protocol: 'mqtts' }] });
    await expect(start).rejects.toThrow(SecurityConfigError);
    await expect(startSecureBroker({ listeners: [{ name: 'secure', protocol: 'mqtts' }] })).rejects.toThrow(
      /listener secure: protocol mqtts needs tls\.cert_file/,
    );
  });

  it('identity without require_certificate stops the start', async () => {
    const settings = { ...defaultTls(), use_identity_as_username: true };
    await expect(startSecureBroker({ listeners: [{ name: 'secure', protocol: 'mqtts', tls: settings }] })).rejects.toThrow(
      /tls\.use_identity_as_username and tls\.use_subject_as_username need tls\.require_certificate: true/,
    );
  });

  it('mismatched key stops the start', async () => {
    const settings = { ...defaultTls(), key_file: certs.client.key };
    const start = startSecureBroker({ listeners: [{ name: 'secure', protocol: 'mqtts', tls: settings }] });
    await expect(start).rejects.toThrow(TlsConfigError);
  });

  it('missing certificate file is named', async () => {
    const settings = { ...defaultTls(), cert_file: '/nonexistent/server.crt' };
    await expect(startSecureBroker({ listeners: [{ name: 'secure', protocol: 'mqtts', tls: settings }] })).rejects.toThrow(
      'listener secure: cannot read tls.cert_file /nonexistent/server.crt (ENOENT)',
    );
  });
});

/** TLS settings with the test server certificate and every other key at its default. */
function defaultTls(): SecureBroker['config']['listeners'][number]['tls'] {
  return {
    cert_file: certs.server.cert,
    key_file: certs.server.key,
    ca_file: '',
    require_certificate: false,
    use_identity_as_username: false,
    use_subject_as_username: false,
    min_version: 'TLSv1.2',
    ciphers: '',
  };
}
