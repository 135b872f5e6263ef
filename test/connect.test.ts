import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { MqttClient } from 'mqtt';
import { connectMqttJs, endMqttJs, startBroker, type TestBroker } from './helpers/broker.js';
import { encodeRawConnect, RawClient } from './helpers/raw-client.js';
import { delay } from './helpers/wait.js';

const openRawClients: RawClient[] = [];
const openMqttJsClients: MqttClient[] = [];

async function rawClient(port: number, protocolVersion: 3 | 4 | 5 = 4): Promise<RawClient> {
  const client = await RawClient.connect(port, { protocolVersion });
  openRawClients.push(client);
  return client;
}

async function mqttJsClient(url: string, options: Parameters<typeof connectMqttJs>[1]): Promise<MqttClient> {
  const client = await connectMqttJs(url, options);
  openMqttJsClients.push(client);
  return client;
}

afterEach(async () => {
  for (const client of openRawClients.splice(0)) {
    client.close();
  }
  await Promise.all(openMqttJsClients.splice(0).map((client) => endMqttJs(client, true)));
});

/** Asserts that the server closed the connection and sent nothing at all before closing. */
async function expectClosedWithoutReply(client: RawClient, timeoutMs = 2000): Promise<void> {
  await client.waitClose(timeoutMs);
  await expect(client.nextPacket(10)).rejects.toThrow(/closed the connection/);
}

describe('CONNECT with the default configuration', () => {
  let tb: TestBroker;

  beforeAll(async () => {
    tb = await startBroker();
  });

  afterAll(async () => {
    await tb.stop();
  });

  it('accepts MQTT 3.1 (MQIsdp, level 3)', async () => {
    const client = await rawClient(tb.port, 3);

    const connack = await client.connectMqtt({ clientId: 'connect-v31' });

    expect(connack.returnCode).toBe(0);
    expect(connack.sessionPresent).toBe(false);
    expect(connack.length).toBe(2);
    client.send({ cmd: 'pingreq' });
    expect((await client.nextPacket()).cmd).toBe('pingresp');
  });

  it('accepts MQTT 3.1.1 (level 4)', async () => {
    const client = await rawClient(tb.port, 4);

    const connack = await client.connectMqtt({ clientId: 'connect-v311' });

    expect(connack.returnCode).toBe(0);
    expect(connack.sessionPresent).toBe(false);
    expect(connack.length).toBe(2);
    client.send({ cmd: 'pingreq' });
    expect((await client.nextPacket()).cmd).toBe('pingresp');
  });

  it('accepts MQTT 5.0 (level 5)', async () => {
    const client = await rawClient(tb.port, 5);

    const connack = await client.connectMqtt({ clientId: 'connect-v5' });

    expect(connack.reasonCode).toBe(0);
    expect(connack.sessionPresent).toBe(false);
    client.send({ cmd: 'pingreq' });
    expect((await client.nextPacket()).cmd).toBe('pingresp');
  });

  it.each([4, 5] as const)('accepts MQTT.js at protocol level %i', async (protocolVersion) => {
    const client = await mqttJsClient(tb.url, { protocolVersion, clientId: `connect-mqttjs-${protocolVersion}` });

    expect(client.connected).toBe(true);
  });

  it('rejects unknown protocol level with 0x01 [MQTT-3.1.2-2]', async () => {
    const client = await rawClient(tb.port, 4);

    client.sendBytes(encodeRawConnect({ level: 6, clientId: 'connect-level-6' }));

    // The 3.1.1 parser rejects a CONNACK longer than two bytes, so a v5-format reply fails here.
    const connack = await client.expectPacket('connack');
    expect(connack.returnCode).toBe(0x01);
    expect(connack.sessionPresent).toBe(false);
    expect(connack.length).toBe(2);
    await client.waitClose();
  });

  it('closes on wrong protocol name without CONNACK [MQTT-3.1.2-1]', async () => {
    const client = await rawClient(tb.port, 4);

    client.sendBytes(encodeRawConnect({ protocolName: 'MQTX', clientId: 'connect-bad-name' }));

    await expectClosedWithoutReply(client);
  });

  it('closes on MQIsdp name with level 4 [MQTT-3.1.2-1]', async () => {
    const client = await rawClient(tb.port, 4);

    client.sendBytes(encodeRawConnect({ protocolName: 'MQIsdp', level: 4, clientId: 'connect-mixed-name' }));

    // 'MQIsdp' is the 3.1 name and invalid at level 4, so the server must not accept the connection.
    await client.waitClose();
    const reply = await client.nextPacket(10).catch(() => null);
    if (reply !== null) {
      expect(reply.cmd).toBe('connack');
      expect(reply.cmd === 'connack' ? reply.returnCode : undefined).not.toBe(0);
    }
  });

  it('closes on reserved connect flag set [MQTT-3.1.2-3]', async () => {
    const client = await rawClient(tb.port, 4);

    client.sendBytes(encodeRawConnect({ flags: 0x03, clientId: 'connect-reserved-flag' }));

    await expectClosedWithoutReply(client);
  });

  it('closes when PINGREQ comes before CONNECT [MQTT-3.1.0-1]', async () => {
    const client = await rawClient(tb.port, 4);

    client.send({ cmd: 'pingreq' });

    await expectClosedWithoutReply(client);
  });

  it('closes when PUBLISH comes before CONNECT [MQTT-3.1.0-1]', async () => {
    const client = await rawClient(tb.port, 4);

    client.send({ cmd: 'publish', topic: 'before/connect', payload: Buffer.from('x'), qos: 0, dup: false, retain: false });

    await expectClosedWithoutReply(client);
  });

  it('closes a 3.1.1 client on second CONNECT [MQTT-3.1.0-2]', async () => {
    const client = await rawClient(tb.port, 4);
    const connack = await client.connectMqtt({ clientId: 'connect-second-v311' });
    expect(connack.returnCode).toBe(0);

    client.send({ cmd: 'connect', clientId: 'connect-second-v311', protocolId: 'MQTT', protocolVersion: 4 });

    await expectClosedWithoutReply(client);
  });

  it('sends DISCONNECT 0x82 to a v5 client on second CONNECT [MQTT-3.1.0-2]', async () => {
    const client = await rawClient(tb.port, 5);
    const connack = await client.connectMqtt({ clientId: 'connect-second-v5' });
    expect(connack.reasonCode).toBe(0);

    client.send({ cmd: 'connect', clientId: 'connect-second-v5', protocolId: 'MQTT', protocolVersion: 5 });

    const disconnect = await client.expectPacket('disconnect');
    expect(disconnect.reasonCode).toBe(0x82);
    await client.waitClose();
  });

  it('rejects empty client id with clean session 0 [MQTT-3.1.3-8]', async () => {
    const client = await rawClient(tb.port, 4);

    client.sendBytes(encodeRawConnect({ flags: 0x00, clientId: '' }));

    const connack = await client.expectPacket('connack');
    expect(connack.returnCode).toBe(0x02);
    // A refused CONNACK has Session Present 0 and is followed by a close [MQTT-3.2.2-4] [MQTT-3.2.2-5].
    expect(connack.sessionPresent).toBe(false);
    expect(connack.length).toBe(2);
    await client.waitClose();
  });

  it('assigns unique ids for empty client id with clean session 1 [MQTT-3.1.3-6]', async () => {
    const first = await rawClient(tb.port, 4);
    const second = await rawClient(tb.port, 4);

    const firstConnack = await first.connectMqtt({ clientId: '', clean: true });
    const secondConnack = await second.connectMqtt({ clientId: '', clean: true });

    expect(firstConnack.returnCode).toBe(0);
    expect(secondConnack.returnCode).toBe(0);
    // Two clients with the same assigned id would take each other's session over.
    await delay(100);
    expect(first.isSocketClosed).toBe(false);
    first.send({ cmd: 'pingreq' });
    expect((await first.nextPacket()).cmd).toBe('pingresp');
  });

  it('sends Assigned Client Identifier for empty v5 id [MQTT-3.2.2-16]', async () => {
    const first = await rawClient(tb.port, 5);
    const second = await rawClient(tb.port, 5);

    const firstConnack = await first.connectMqtt({ clientId: '' });
    const secondConnack = await second.connectMqtt({ clientId: '' });

    expect(firstConnack.reasonCode).toBe(0);
    const firstId = firstConnack.properties?.assignedClientIdentifier;
    const secondId = secondConnack.properties?.assignedClientIdentifier;
    expect(typeof firstId).toBe('string');
    expect(firstId).not.toBe('');
    expect(secondId).not.toBe(firstId);
  });

  it('sends no v5 reason codes to a 3.1.1 client', async () => {
    const client = await rawClient(tb.port, 4);
    await client.connectMqtt({ clientId: 'connect-no-v5-codes' });

    client.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'v311/only', qos: 2 }] });
    const suback = await client.expectPacket('suback');
    client.send({ cmd: 'publish', topic: 'v311/only', payload: Buffer.from('1'), qos: 1, messageId: 2, dup: false, retain: false });
    // The PUBACK and the delivery to this client's own subscription may come in either order.
    const replies = [await client.nextPacket(), await client.nextPacket()];
    const puback = replies.find((packet) => packet.cmd === 'puback');
    const delivered = replies.find((packet) => packet.cmd === 'publish');
    expect(puback?.cmd).toBe('puback');
    expect(delivered?.cmd).toBe('publish');
    client.send({ cmd: 'puback', messageId: delivered?.messageId });
    client.send({ cmd: 'publish', topic: 'unrouted/v311', payload: Buffer.from('2'), qos: 2, messageId: 3, dup: false, retain: false });
    const pubrec = await client.expectPacket('pubrec');
    client.send({ cmd: 'pubrel', messageId: 3 });
    const pubcomp = await client.expectPacket('pubcomp');
    client.send({ cmd: 'unsubscribe', messageId: 4, unsubscriptions: ['v311/only'] });
    const unsuback = await client.expectPacket('unsuback');

    // In 3.1.1 these acknowledgements are exactly the two-byte packet identifier.
    expect(suback.granted).toEqual([2]);
    expect(puback?.messageId).toBe(2);
    expect(puback?.length).toBe(2);
    expect(pubrec.length).toBe(2);
    expect(pubcomp.length).toBe(2);
    expect(unsuback.length).toBe(2);
  });

  it('keeps its CONNACK feature flags true to SUBSCRIBE', async () => {
    const client = await rawClient(tb.port, 5);
    const connack = await client.connectMqtt({ clientId: 'connect-v5-features' });
    const properties = connack.properties ?? {};

    // An absent flag means the feature is available. Each flag must agree with what SUBSCRIBE does.
    client.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'features/+', qos: 1 }] });
    const wildcardAck = await client.expectPacket('suback');
    if (properties.wildcardSubscriptionAvailable === false) {
      expect(wildcardAck.granted).toEqual([0xa2]);
    } else {
      expect(wildcardAck.granted).toEqual([1]);
    }

    client.send({
      cmd: 'subscribe',
      messageId: 2,
      properties: { subscriptionIdentifier: 7 },
      subscriptions: [{ topic: 'features/id', qos: 1 }],
    });
    const identifierAck = await client.nextPacket();
    if (properties.subscriptionIdentifiersAvailable === false) {
      // A Subscription Identifier after CONNACK announced none is rejected with DISCONNECT 0xA1.
      expect(identifierAck.cmd).toBe('disconnect');
      expect(identifierAck.cmd === 'disconnect' ? identifierAck.reasonCode : undefined).toBe(0xa1);
      return;
    }
    expect(identifierAck.cmd).toBe('suback');
    expect(identifierAck.cmd === 'suback' ? identifierAck.granted : undefined).toEqual([1]);
    client.send({ cmd: 'publish', topic: 'features/id', payload: Buffer.from('x'), qos: 0, dup: false, retain: false });
    const delivered = await client.expectPacket('publish');
    expect(delivered.properties?.subscriptionIdentifier).toBe(7);

    client.send({ cmd: 'subscribe', messageId: 3, subscriptions: [{ topic: '$share/group/features/shared', qos: 1 }] });
    const sharedAck = await client.expectPacket('suback');
    if (properties.sharedSubscriptionAvailable === false) {
      expect(sharedAck.granted).toEqual([0x9e]);
    } else {
      expect(sharedAck.granted).toEqual([1]);
    }
  });

  it('answers authentication method with 0x8C', async () => {
    const client = await rawClient(tb.port, 5);

    const connack = await client.connectMqtt({
      clientId: 'connect-auth-method',
      properties: { authenticationMethod: 'SCRAM-SHA-256', authenticationData: Buffer.from('client-first') },
    });

    expect(connack.reasonCode).toBe(0x8c);
    expect(connack.sessionPresent).toBe(false);
    await client.waitClose();
  });
});

describe('CONNECT on a broker per test', () => {
  let tb: TestBroker | undefined;

  afterEach(async () => {
    await tb?.stop();
    tb = undefined;
  });

  it('sends v5 CONNACK properties from limits', async () => {
    tb = await startBroker({ limits: { receive_maximum: 50, max_packet_size: 65536, topic_alias_maximum: 7 } });
    const client = await rawClient(tb.port, 5);

    const connack = await client.connectMqtt({ clientId: 'connect-v5-properties' });

    expect(connack.reasonCode).toBe(0);
    expect(connack.properties?.receiveMaximum).toBe(50);
    expect(connack.properties?.maximumPacketSize).toBe(65536);
    expect(connack.properties?.topicAliasMaximum).toBe(7);
    // Absent Maximum QoS means QoS 2, absent Retain Available means retained messages work.
    expect(connack.properties?.maximumQoS).toBeUndefined();
    expect(connack.properties?.retainAvailable).not.toBe(false);
  });

  it('closes a silent client after 1.5x keep alive [MQTT-3.1.2-24]', async () => {
    tb = await startBroker();
    const client = await rawClient(tb.port, 4);
    await client.connectMqtt({ clientId: 'keepalive-silent', keepalive: 1 });
    const connectedAt = Date.now();

    await client.waitClose(3000);

    const elapsed = Date.now() - connectedAt;
    expect(elapsed).toBeGreaterThanOrEqual(1000);
    expect(elapsed).toBeLessThan(2600);
  });

  it('keeps a client that sends PINGREQ within keep alive', async () => {
    tb = await startBroker();
    const client = await rawClient(tb.port, 4);
    await client.connectMqtt({ clientId: 'keepalive-pinging', keepalive: 1 });

    for (let round = 0; round < 5; round += 1) {
      await delay(500);
      client.send({ cmd: 'pingreq' });
      expect((await client.nextPacket()).cmd).toBe('pingresp');
    }

    expect(client.isSocketClosed).toBe(false);
  });

  it('sends Server Keep Alive above max_keepalive', async () => {
    tb = await startBroker({ limits: { max_keepalive: 10 } });
    const client = await rawClient(tb.port, 5);

    const connack = await client.connectMqtt({ clientId: 'keepalive-capped', keepalive: 60 });

    expect(connack.reasonCode).toBe(0);
    expect(connack.properties?.serverKeepAlive).toBe(10);
  });

  it('enforces the Server Keep Alive it sent', async () => {
    tb = await startBroker({ limits: { max_keepalive: 1 } });
    const client = await rawClient(tb.port, 5);
    const connack = await client.connectMqtt({ clientId: 'keepalive-enforced', keepalive: 60 });
    expect(connack.properties?.serverKeepAlive).toBe(1);
    const connectedAt = Date.now();

    // A v5 server may send DISCONNECT 0x8D (keep alive timeout) before closing.
    await client.waitClose(3000);

    expect(Date.now() - connectedAt).toBeLessThan(2600);
    const reply = await client.nextPacket(10).catch(() => null);
    if (reply !== null) {
      expect(reply.cmd).toBe('disconnect');
      expect(reply.cmd === 'disconnect' ? reply.reasonCode : undefined).toBe(0x8d);
    }
  });

  it('closes a socket that sends no CONNECT in time', async () => {
    tb = await startBroker({ limits: { connect_timeout_seconds: 1 } });
    const client = await rawClient(tb.port, 4);
    const openedAt = Date.now();

    await expectClosedWithoutReply(client, 3000);

    const elapsed = Date.now() - openedAt;
    expect(elapsed).toBeGreaterThanOrEqual(900);
    expect(elapsed).toBeLessThan(2500);
  });

  it('sends DISCONNECT 0x8B on stop to v5 only', async () => {
    tb = await startBroker();
    const legacy = await rawClient(tb.port, 4);
    await legacy.connectMqtt({ clientId: 'stop-v311' });
    const current = await rawClient(tb.port, 5);
    await current.connectMqtt({ clientId: 'stop-v5' });

    await tb.stop();

    const disconnect = await current.expectPacket('disconnect');
    expect(disconnect.reasonCode).toBe(0x8b);
    await current.waitClose();
    // 3.1.1 has no server DISCONNECT, so the 3.1.1 client only sees the close.
    await expectClosedWithoutReply(legacy);
  });

  it('closes a socket that sends half a CONNECT', async () => {
    tb = await startBroker({ limits: { connect_timeout_seconds: 1 } });
    const client = await rawClient(tb.port, 4);

    client.sendBytes(encodeRawConnect({ clientId: 'connect-partial' }).subarray(0, 6));

    await expectClosedWithoutReply(client, 3000);
  });
});
