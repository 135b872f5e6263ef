import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { MqttClient } from 'mqtt';
import type { IPublishPacket } from 'mqtt-packet';
import type { InternalClient, InternalMessage } from '../src/broker/internal-client.js';
import { connectMqttJs, endMqttJs, startBroker, type TestBroker } from './helpers/broker.js';
import { delay, waitFor } from './helpers/wait.js';

interface ReceivedMessage {
  topic: string;
  payload: string;
  packet: IPublishPacket;
}

const openClients: MqttClient[] = [];
const internalClients: InternalClient[] = [];

afterEach(async () => {
  await Promise.all(openClients.splice(0).map((client) => endMqttJs(client, true)));
  for (const client of internalClients.splice(0)) {
    client.close();
  }
});

describe('in-process client', () => {
  let broker: TestBroker;

  beforeAll(async () => {
    broker = await startBroker();
  });

  afterAll(async () => {
    await broker.stop();
  });

  async function connectRecording(clientId: string): Promise<{ client: MqttClient; messages: ReceivedMessage[] }> {
    const client = await connectMqttJs(broker.url, { protocolVersion: 5, clientId });
    openClients.push(client);
    const messages: ReceivedMessage[] = [];
    client.on('message', (topic, payload, packet) => {
      messages.push({ topic, payload: payload.toString(), packet });
    });
    return { client, messages };
  }

  function createInternal(clientId: string): { client: InternalClient; messages: InternalMessage[] } {
    const messages: InternalMessage[] = [];
    const client = broker.broker.createClient(clientId, (message) => {
      messages.push(message);
    });
    internalClients.push(client);
    return { client, messages };
  }

  it('receives MQTT.js publish at QoS 1', async () => {
    const internal = createInternal('adapter-in');
    await internal.client.subscribe('ic/in/#', { qos: 1 });
    const { client } = await connectRecording('ic-publisher');

    await client.publishAsync('ic/in/a', 'hello', { qos: 1 });
    await waitFor(() => internal.messages.length >= 1, 2000, 'the message at the in-process client');

    expect(internal.messages).toHaveLength(1);
    expect(internal.messages[0]?.topic).toBe('ic/in/a');
    expect(internal.messages[0]?.payload.toString()).toBe('hello');
    expect(internal.messages[0]?.qos).toBe(1);
    expect(internal.messages[0]?.retain).toBe(false);
  });

  it('publish reaches MQTT.js at QoS 1', async () => {
    const internal = createInternal('adapter-out');
    const subscriber = await connectRecording('ic-subscriber');
    await subscriber.client.subscribeAsync('ic/out', { qos: 1 });

    await internal.client.publish('ic/out', Buffer.from('from adapter'), { qos: 1, retain: false });
    await waitFor(() => subscriber.messages.length >= 1, 2000, 'the message at MQTT.js');

    expect(subscriber.messages[0]?.topic).toBe('ic/out');
    expect(subscriber.messages[0]?.payload).toBe('from adapter');
    expect(subscriber.messages[0]?.packet.qos).toBe(1);
    expect(subscriber.messages[0]?.packet.retain).toBe(false);
  });

  it('retained publish reaches later MQTT.js subscriber', async () => {
    const internal = createInternal('adapter-retained-out');
    await internal.client.publish('ic/ret/out', Buffer.from('last value'), { qos: 1, retain: true });

    const subscriber = await connectRecording('ic-retained-subscriber');
    await subscriber.client.subscribeAsync('ic/ret/out', { qos: 1 });
    await waitFor(() => subscriber.messages.length >= 1, 2000, 'the retained message at MQTT.js');

    expect(subscriber.messages[0]?.payload).toBe('last value');
    expect(subscriber.messages[0]?.packet.retain).toBe(true);
    expect(subscriber.messages[0]?.packet.qos).toBe(1);
    await internal.client.publish('ic/ret/out', Buffer.alloc(0), { qos: 1, retain: true });
  });

  it('later subscription gets MQTT.js retained', async () => {
    const { client } = await connectRecording('ic-retained-publisher');
    await client.publishAsync('ic/ret/in', 'stored', { qos: 1, retain: true });

    const internal = createInternal('adapter-retained-in');
    await internal.client.subscribe('ic/ret/#', { qos: 1 });
    await waitFor(() => internal.messages.length >= 1, 2000, 'the retained message at the in-process client');

    expect(internal.messages.map((m) => m.topic)).toEqual(['ic/ret/in']);
    expect(internal.messages[0]?.payload.toString()).toBe('stored');
    expect(internal.messages[0]?.retain).toBe(true);
    await client.publishAsync('ic/ret/in', '', { qos: 1, retain: true });
  });

  it('QoS is the lower of publish and subscription', async () => {
    const internal = createInternal('adapter-qos0');
    await internal.client.subscribe('ic/qos', { qos: 0 });
    const { client } = await connectRecording('ic-qos-publisher');

    await client.publishAsync('ic/qos', 'x', { qos: 1 });
    await waitFor(() => internal.messages.length >= 1, 2000, 'the message at the in-process client');

    expect(internal.messages[0]?.qos).toBe(0);
  });

  it('unsubscribe stops delivery', async () => {
    const internal = createInternal('adapter-unsubscribe');
    await internal.client.subscribe('ic/unsub/a', { qos: 1 });
    await internal.client.subscribe('ic/unsub/sentinel', { qos: 1 });
    await internal.client.unsubscribe('ic/unsub/a');
    const { client } = await connectRecording('ic-unsub-publisher');

    await client.publishAsync('ic/unsub/a', 'x', { qos: 1 });
    await client.publishAsync('ic/unsub/sentinel', 'y', { qos: 1 });
    await waitFor(() => internal.messages.length >= 1, 2000, 'the sentinel message');
    await delay(50);

    expect(internal.messages.map((m) => m.topic)).toEqual(['ic/unsub/sentinel']);
  });

  it('closed client rejects calls and gets nothing', async () => {
    const internal = createInternal('adapter-closed');
    await internal.client.subscribe('ic/closed', { qos: 1 });
    internal.client.close();
    const { client } = await connectRecording('ic-closed-publisher');

    await client.publishAsync('ic/closed', 'x', { qos: 1 });
    await delay(100);

    expect(internal.messages).toEqual([]);
    await expect(internal.client.publish('ic/closed', Buffer.from('x'))).rejects.toThrow(/closed/);
    await expect(internal.client.subscribe('ic/#')).rejects.toThrow(/closed/);
  });

  it('invalid topic and filter are rejected', async () => {
    const internal = createInternal('adapter-invalid');

    await expect(internal.client.publish('ic/+/x', Buffer.from('x'))).rejects.toThrow(/invalid topic/);
    await expect(internal.client.subscribe('ic/#/x')).rejects.toThrow(/invalid topic filter/);
  });

  it('client id in use by a connection is refused', async () => {
    await connectRecording('ic-taken');

    expect(() => broker.broker.createClient('ic-taken', () => undefined)).toThrow(/in use/);
  });
});
