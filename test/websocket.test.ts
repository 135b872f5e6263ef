import { readFile } from 'node:fs/promises';
import http from 'node:http';
import mqttPacket from 'mqtt-packet';
import type { Packet } from 'mqtt-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';

import { connectMqttJs, endMqttJs } from './helpers/broker.js';
import { createTestCertificates, type TestCertificates } from './helpers/certs.js';
import { createTempDir, startSecureBroker, type SecureBroker, type TempDir } from './helpers/security.js';
import { waitFor } from './helpers/wait.js';

let certs: TestCertificates;
let files: TempDir;
let tb: SecureBroker;
let ca: Buffer;

/** Listener order in the test broker. */
const WS = 0;
const WSS = 1;
const WSS_IDENTITY = 2;
const WS_SMALL = 3;

beforeAll(async () => {
  certs = await createTestCertificates();
  files = await createTempDir();
  ca = await readFile(certs.ca.cert);
  const aclFile = await files.write('ws.acl', 'user sensor-1\ntopic readwrite sensors/sensor-1/#\n');
  const tls = {
    cert_file: certs.server.cert,
    key_file: certs.server.key,
    ca_file: '',
    require_certificate: false,
    use_identity_as_username: false,
    use_subject_as_username: false,
    min_version: 'TLSv1.2' as const,
    ciphers: '',
  };
  tb = await startSecureBroker({
    listeners: [
      { name: 'ws', protocol: 'ws' },
      { name: 'wss', protocol: 'wss', path: '/broker', tls },
      {
        name: 'wss-identity',
        protocol: 'wss',
        allow_anonymous: false,
        acl_file: aclFile,
        tls: { ...tls, ca_file: certs.ca.cert, require_certificate: true, use_identity_as_username: true },
      },
      { name: 'ws-small', protocol: 'ws', max_packet_size: 1024 },
    ],
  });
}, 30_000);

afterAll(async () => {
  await tb?.stop();
  await certs?.remove();
  await files?.remove();
});

function wsUrl(index: number, scheme = 'ws', pathname = '/mqtt'): string {
  return `${scheme}://127.0.0.1:${tb.ports[index]}${pathname}`;
}

/** Collects the MQTT packets a raw WebSocket receives, parsing across message boundaries. */
class RawWebSocketClient {
  readonly packets: Packet[] = [];
  readonly ws: WebSocket;
  private readonly parser = mqttPacket.parser({ protocolVersion: 5 });

  constructor(url: string) {
    this.ws = new WebSocket(url, ['mqtt']);
    this.parser.on('packet', (packet: Packet) => this.packets.push(packet));
    this.ws.on('message', (data: Buffer) => this.parser.parse(data));
    this.ws.on('error', () => undefined);
  }

  opened(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.ws.once('open', () => resolve());
      this.ws.once('error', reject);
    });
  }

  closed(): Promise<number> {
    return new Promise((resolve) => this.ws.once('close', (code: number) => resolve(code)));
  }
}

function encode(packet: Packet): Buffer {
  return mqttPacket.generate(packet, { protocolVersion: 5 });
}

describe('ws listener', () => {
  it('MQTT.js 3.1.1 and 5 exchange messages over ws://', async () => {
    const subscriber = await connectMqttJs(wsUrl(WS), { clientId: 'ws-sub' });
    const publisher = await connectMqttJs(wsUrl(WS), { clientId: 'ws-pub', protocolVersion: 5 });
    try {
      const received: string[] = [];
      subscriber.on('message', (_topic, payload) => received.push(payload.toString()));
      await subscriber.subscribeAsync('ws/t', { qos: 1 });
      await publisher.publishAsync('ws/t', 'over websocket', { qos: 1 });
      // A payload larger than one TCP segment and several WebSocket frames of the client.
      await publisher.publishAsync('ws/t', 'x'.repeat(200_000), { qos: 1 });
      await waitFor(() => received.length === 2, 3000, 'messages over ws');
      expect(received[0]).toBe('over websocket');
      expect(received[1]).toHaveLength(200_000);
    } finally {
      await endMqttJs(subscriber);
      await endMqttJs(publisher);
    }
  });

  it('selects the mqtt subprotocol [MQTT-6.0.0-4]', async () => {
    const client = new RawWebSocketClient(wsUrl(WS));
    await client.opened();
    expect(client.ws.protocol).toBe('mqtt');
    client.ws.close();
  });

  it('MQTT 3.1 client gets subprotocol mqttv3.1', async () => {
    const offered = new WebSocket(wsUrl(WS), ['mqttv3.1']);
    await new Promise<void>((resolve, reject) => {
      offered.once('open', () => resolve());
      offered.once('error', reject);
    });
    expect(offered.protocol).toBe('mqttv3.1');
    offered.close();
    const client = await connectMqttJs(wsUrl(WS), { clientId: 'ws-mqtt31', protocolId: 'MQIsdp', protocolVersion: 3 });
    await endMqttJs(client);
  });

  it('reads packets split over and packed into messages [MQTT-6.0.0-2]', async () => {
    const client = new RawWebSocketClient(wsUrl(WS));
    await client.opened();
    const connect = encode({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, keepalive: 30, clientId: 'split' });
    client.ws.send(connect.subarray(0, 5));
    client.ws.send(connect.subarray(5));
    const subscribe = encode({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'split/t', qos: 0 }] });
    const publish = encode({ cmd: 'publish', topic: 'split/t', payload: Buffer.from('packed'), qos: 0, retain: false, dup: false });
    client.ws.send(Buffer.concat([subscribe, publish]));
    await waitFor(() => client.packets.length >= 3, 2000, 'CONNACK, SUBACK and PUBLISH');
    expect(client.packets.map((packet) => packet.cmd)).toEqual(['connack', 'suback', 'publish']);
    client.ws.close();
  });

  it('closes on a text frame [MQTT-6.0.0-1]', async () => {
    const client = new RawWebSocketClient(wsUrl(WS));
    await client.opened();
    const closed = client.closed();
    client.ws.send('not binary');
    expect(await closed).toBe(1003);
  });

  it('answers another path with 404', async () => {
    const ws = new WebSocket(wsUrl(WS, 'ws', '/other'), ['mqtt']);
    const status = await new Promise<number>((resolve, reject) => {
      ws.once('unexpected-response', (_request, response: http.IncomingMessage) => resolve(response.statusCode ?? 0));
      ws.once('open', () => reject(new Error('the upgrade on /other was accepted')));
      ws.once('error', () => undefined);
    });
    expect(status).toBe(404);
    ws.terminate();
  });

  it('answers plain HTTP with 426', async () => {
    const status = await new Promise<number>((resolve, reject) => {
      http.get(wsUrl(WS, 'http'), (response) => {
        response.resume();
        resolve(response.statusCode ?? 0);
      }).once('error', reject);
    });
    expect(status).toBe(426);
  });

  it('applies the listener packet size limit', async () => {
    const client = new RawWebSocketClient(wsUrl(WS_SMALL));
    await client.opened();
    client.ws.send(encode({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, keepalive: 30, clientId: 'big' }));
    await waitFor(() => client.packets.length === 1, 2000, 'CONNACK');
    const connack = client.packets[0];
    expect(connack?.cmd === 'connack' ? connack.properties?.maximumPacketSize : undefined).toBe(1024);
    const closed = client.closed();
    client.ws.send(encode({ cmd: 'publish', topic: 'big', payload: Buffer.alloc(2000), qos: 0, retain: false, dup: false }));
    await closed;
    const disconnect = client.packets[1];
    expect(disconnect?.cmd).toBe('disconnect');
    expect(disconnect?.cmd === 'disconnect' ? disconnect.reasonCode : undefined).toBe(0x95);
  });
});

describe('wss listener', () => {
  it('MQTT.js exchanges messages over wss://', async () => {
    const options = { ca, rejectUnauthorized: true };
    const client = await connectMqttJs(wsUrl(WSS, 'wss', '/broker'), { ...options, clientId: 'wss-client', protocolVersion: 5 });
    try {
      const received: string[] = [];
      client.on('message', (_topic, payload) => received.push(payload.toString()));
      await client.subscribeAsync('wss/t', { qos: 1 });
      await client.publishAsync('wss/t', 'over wss', { qos: 1 });
      await waitFor(() => received.length === 1, 2000, 'message over wss');
      expect(received).toEqual(['over wss']);
    } finally {
      await endMqttJs(client);
    }
  });

  it('uses the client certificate CN over wss', async () => {
    const [cert, key] = await Promise.all([readFile(certs.client.cert), readFile(certs.client.key)]);
    const client = await connectMqttJs(wsUrl(WSS_IDENTITY, 'wss'), { ca, cert, key, rejectUnauthorized: true, clientId: 'wss-cn', protocolVersion: 5 });
    try {
      expect((await client.subscribeAsync('sensors/sensor-1/t'))[0]?.qos).toBe(0);
      await expect(client.subscribeAsync('sensors/sensor-2/t')).rejects.toThrow(/Not authorized/i);
    } finally {
      await endMqttJs(client);
    }
  });

  it('refuses wss without client certificate', async () => {
    await expect(connectMqttJs(wsUrl(WSS_IDENTITY, 'wss'), { ca, rejectUnauthorized: true, clientId: 'wss-anon' }, 2000)).rejects.toThrow();
  });
});
