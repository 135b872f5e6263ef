import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { IConnectPacket } from 'mqtt-packet';
import { startBroker, type TestBroker } from './helpers/broker.js';
import { RawClient } from './helpers/raw-client.js';
import { delay } from './helpers/wait.js';

type Will = NonNullable<IConnectPacket['will']>;

let tb: TestBroker;
const openRawClients: RawClient[] = [];

async function rawClient(protocolVersion: 4 | 5 = 4): Promise<RawClient> {
  const client = await RawClient.connect(tb.port, { protocolVersion });
  openRawClients.push(client);
  return client;
}

/** Connects a 3.1.1 client subscribed to `will/#` at QoS 2, so it receives every will at the will's QoS. */
async function watcher(clientId = 'will-watcher'): Promise<RawClient> {
  const client = await rawClient(4);
  await client.connectMqtt({ clientId });
  client.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'will/#', qos: 2 }] });
  await client.expectPacket('suback');
  return client;
}

function will(topic: string, payload: string, options: Partial<Will> = {}): Will {
  return { topic, payload: Buffer.from(payload), qos: 0, retain: false, ...options };
}

beforeEach(async () => {
  tb = await startBroker();
});

afterEach(async () => {
  for (const client of openRawClients.splice(0)) {
    client.close();
  }
  await tb.stop();
});

describe('will message (3.1.1)', () => {
  it('publishes the will when the socket is destroyed [MQTT-3.1.2-8]', async () => {
    const observer = await watcher();
    const client = await rawClient(4);
    await client.connectMqtt({ clientId: 'will-destroyed', will: will('will/destroyed', 'gone') });

    client.close();

    const message = await observer.expectPacket('publish');
    expect(message.topic).toBe('will/destroyed');
    expect(message.payload.toString()).toBe('gone');
  });

  it('publishes the will on keep alive timeout [MQTT-3.1.2-24]', async () => {
    const observer = await watcher();
    const client = await rawClient(4);
    await client.connectMqtt({ clientId: 'will-keepalive', keepalive: 1, will: will('will/keepalive', 'timed out') });

    const message = await observer.expectPacket('publish', 3000);

    expect(message.payload.toString()).toBe('timed out');
    await client.waitClose();
  });

  it('discards the will on DISCONNECT [MQTT-3.1.2-10]', async () => {
    const observer = await watcher();
    const client = await rawClient(4);
    await client.connectMqtt({ clientId: 'will-clean-exit', will: will('will/clean-exit', 'must not appear') });

    await client.disconnect();

    await observer.expectNoPacket(500);
  });

  it('publishes no will without the will flag [MQTT-3.1.2-12]', async () => {
    const observer = await watcher();
    const client = await rawClient(4);
    await client.connectMqtt({ clientId: 'will-none' });

    client.close();

    await observer.expectNoPacket(400);
  });

  it('publishes the will at its QoS [MQTT-3.1.2-14]', async () => {
    const observer = await watcher();
    const client = await rawClient(4);
    await client.connectMqtt({ clientId: 'will-qos', will: will('will/qos', 'qos 1 will', { qos: 1 }) });

    client.close();

    const message = await observer.expectPacket('publish');
    expect(message.qos).toBe(1);
    observer.send({ cmd: 'puback', messageId: message.messageId });
  });

  it('publishes a will with retain as a retained message [MQTT-3.1.2-17]', async () => {
    const observer = await watcher();
    const client = await rawClient(4);
    await client.connectMqtt({ clientId: 'will-retained', will: will('will/retained', 'last words', { qos: 2, retain: true }) });

    client.close();
    const live = await observer.expectPacket('publish');
    observer.send({ cmd: 'pubrec', messageId: live.messageId });
    await observer.expectPacket('pubrel');
    observer.send({ cmd: 'pubcomp', messageId: live.messageId });

    // Live delivery to an existing subscription has RETAIN=0; a new subscription gets it retained.
    expect(live.qos).toBe(2);
    expect(live.retain).toBe(false);
    const late = await rawClient(4);
    await late.connectMqtt({ clientId: 'will-retained-late' });
    late.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'will/retained', qos: 1 }] });
    await late.expectPacket('suback');
    const stored = await late.expectPacket('publish');
    expect(stored.payload.toString()).toBe('last words');
    expect(stored.retain).toBe(true);
    expect(stored.qos).toBe(1);
  });

  it('does not retain a will without retain [MQTT-3.1.2-16]', async () => {
    const observer = await watcher();
    const client = await rawClient(4);
    await client.connectMqtt({ clientId: 'will-not-retained', will: will('will/not-retained', 'passing') });
    client.close();
    await observer.expectPacket('publish');

    const late = await rawClient(4);
    await late.connectMqtt({ clientId: 'will-not-retained-late' });
    late.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'will/not-retained', qos: 0 }] });
    await late.expectPacket('suback');

    await late.expectNoPacket(300);
  });

  it('publishes the will of a taken-over connection [MQTT-3.1.2-8]', async () => {
    const observer = await watcher();
    const first = await rawClient(4);
    await first.connectMqtt({ clientId: 'will-takeover', will: will('will/takeover', 'replaced') });
    const second = await rawClient(4);

    await second.connectMqtt({ clientId: 'will-takeover' });

    // The broker closes the old connection without a DISCONNECT from it, so its will is due.
    const message = await observer.expectPacket('publish');
    expect(message.payload.toString()).toBe('replaced');
    await first.waitClose();
  });
});

describe('will message (v5)', () => {
  it('publishes the will on DISCONNECT 0x04', async () => {
    const observer = await watcher();
    const client = await rawClient(5);
    await client.connectMqtt({ clientId: 'will-v5-0x04', will: will('will/v5-0x04', 'asked for') });

    await client.disconnect({ reasonCode: 0x04 });

    const message = await observer.expectPacket('publish');
    expect(message.payload.toString()).toBe('asked for');
  });

  it('discards the will on DISCONNECT 0x00 [MQTT-3.1.2-10]', async () => {
    const observer = await watcher();
    const client = await rawClient(5);
    await client.connectMqtt({ clientId: 'will-v5-0x00', will: will('will/v5-0x00', 'must not appear') });

    await client.disconnect({ reasonCode: 0x00 });

    await observer.expectNoPacket(500);
  });

  it('publishes the will after Will Delay Interval', async () => {
    const observer = await watcher();
    const client = await rawClient(5);
    await client.connectMqtt({
      clientId: 'will-delayed',
      clean: false,
      properties: { sessionExpiryInterval: 10 },
      will: will('will/delayed', 'late', { properties: { willDelayInterval: 1 } }),
    });
    const closedAt = Date.now();

    client.close();
    await observer.expectNoPacket(700);
    const message = await observer.expectPacket('publish', 2000);

    expect(message.payload.toString()).toBe('late');
    expect(Date.now() - closedAt).toBeGreaterThanOrEqual(950);
  });

  it('publishes the will when the session ends before the delay', async () => {
    const observer = await watcher();
    const client = await rawClient(5);
    await client.connectMqtt({
      clientId: 'will-session-first',
      clean: false,
      properties: { sessionExpiryInterval: 1 },
      will: will('will/session-first', 'session over', { properties: { willDelayInterval: 60 } }),
    });

    client.close();

    // The will goes out at whichever comes first: the will delay or the end of the session.
    const message = await observer.expectPacket('publish', 2500);
    expect(message.payload.toString()).toBe('session over');
  });

  it('skips the delayed will when the client returns in time [MQTT-3.1.3-9]', async () => {
    const observer = await watcher();
    const client = await rawClient(5);
    const connectFields = {
      clientId: 'will-returns',
      clean: false,
      properties: { sessionExpiryInterval: 10 },
      will: will('will/returns', 'must not appear', { properties: { willDelayInterval: 1 } }),
    };
    await client.connectMqtt(connectFields);

    client.close();
    await delay(300);
    const returned = await rawClient(5);
    const connack = await returned.connectMqtt({ ...connectFields, will: undefined });

    expect(connack.sessionPresent).toBe(true);
    await observer.expectNoPacket(1500);
  });

  it('skips the delayed will on takeover within the delay [MQTT-3.1.3-9]', async () => {
    const observer = await watcher();
    const first = await rawClient(5);
    await first.connectMqtt({
      clientId: 'will-v5-takeover',
      clean: false,
      properties: { sessionExpiryInterval: 10 },
      will: will('will/v5-takeover', 'must not appear', { properties: { willDelayInterval: 1 } }),
    });
    const second = await rawClient(5);

    await second.connectMqtt({ clientId: 'will-v5-takeover', clean: false, properties: { sessionExpiryInterval: 10 } });

    expect((await first.expectPacket('disconnect')).reasonCode).toBe(0x8e);
    await observer.expectNoPacket(1500);
  });

  it('publishes the will after an invalid DISCONNECT [MQTT-3.14.2-2]', async () => {
    const observer = await watcher();
    const client = await rawClient(5);
    await client.connectMqtt({ clientId: 'will-invalid-disconnect', will: will('will/invalid-disconnect', 'not a clean exit') });

    // Raising the expiry from 0 in DISCONNECT makes it a protocol error, not a normal disconnect.
    client.send({ cmd: 'disconnect', reasonCode: 0, properties: { sessionExpiryInterval: 30 } });

    const message = await observer.expectPacket('publish');
    expect(message.payload.toString()).toBe('not a clean exit');
  });
});
