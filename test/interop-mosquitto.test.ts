import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBroker, type TestBroker } from './helpers/broker.js';
import { mosquittoPub, mosquittoSub, subscribe, type MosquittoProtocol } from './helpers/mosquitto-clients.js';

// Debian's mosquitto_pub and mosquitto_sub (mosquitto-clients 2.0) as third-party MQTT clients.

let tb: TestBroker;

beforeAll(async () => {
  tb = await startBroker();
});

afterAll(async () => {
  await tb.stop();
});

async function publishOrFail(options: Parameters<typeof mosquittoPub>[1]): Promise<void> {
  const result = await mosquittoPub(tb.port, options);
  expect(result.stderr).toBe('');
  expect(result.code).toBe(0);
}

describe.each(['mqttv311', 'mqttv5'] as MosquittoProtocol[])('mosquitto clients over %s', (protocol) => {
  it.each([0, 1, 2] as const)('delivers QoS %i from mosquitto_pub to mosquitto_sub', async (qos) => {
    const topic = `interop/${protocol}/qos${qos}`;

    const { result, messages } = await subscribe(tb.port, { topics: [topic], count: 1, qos: 2, protocol }, () =>
      publishOrFail({ topic, message: `hello at ${qos}`, qos, protocol }),
    );

    expect(result.code).toBe(0);
    expect(messages).toEqual([{ topic, qos, retain: false, payload: `hello at ${qos}` }]);
  });

  it('sends a retained message to a later subscriber', async () => {
    const topic = `interop/${protocol}/retained`;
    await publishOrFail({ topic, message: 'kept', qos: 1, retain: true, protocol });

    const { result, messages } = await subscribe(tb.port, { topics: [topic], count: 1, qos: 1, protocol });

    expect(result.code).toBe(0);
    expect(messages).toEqual([{ topic, qos: 1, retain: true, payload: 'kept' }]);
  });

  it('routes by wildcard filters', async () => {
    const prefix = `interop/${protocol}/site`;

    const { result, messages } = await subscribe(
      tb.port,
      { topics: [`${prefix}/+/temperature`], count: 2, qos: 1, protocol },
      async () => {
        await publishOrFail({ topic: `${prefix}/a/temperature`, message: '21.5', qos: 1, protocol });
        await publishOrFail({ topic: `${prefix}/a/humidity`, message: '40', qos: 1, protocol });
        await publishOrFail({ topic: `${prefix}/b/temperature`, message: '19.0', qos: 1, protocol });
      },
    );

    expect(result.code).toBe(0);
    expect(messages.map((message) => [message.topic, message.payload])).toEqual([
      [`${prefix}/a/temperature`, '21.5'],
      [`${prefix}/b/temperature`, '19.0'],
    ]);
  });

  it('publishes the will of a killed mosquitto_sub', async () => {
    const willTopic = `interop/${protocol}/will`;
    const victim = mosquittoSub(tb.port, {
      topics: [`interop/${protocol}/idle`],
      count: 1,
      timeoutSeconds: 10,
      protocol,
      extraArgs: ['--will-topic', willTopic, '--will-payload', 'vanished', '--will-qos', '1'],
    });
    await victim.subscribed;

    const { result, messages } = await subscribe(tb.port, { topics: [willTopic], count: 1, qos: 1, protocol }, async () => {
      // SIGKILL gives mosquitto_sub no chance to send DISCONNECT, so the broker detects a lost connection.
      victim.kill('SIGKILL');
      await victim.done;
    });

    expect(result.code).toBe(0);
    expect(messages).toEqual([{ topic: willTopic, qos: 1, retain: false, payload: 'vanished' }]);
  });

  it('keeps order of 100 messages from stdin', async () => {
    const topic = `interop/${protocol}/lines`;
    const lines = Array.from({ length: 100 }, (_, index) => `line ${index}`);

    const { result, messages } = await subscribe(tb.port, { topics: [topic], count: 100, qos: 1, protocol }, () =>
      publishOrFail({ topic, lines, qos: 1, protocol }),
    );

    expect(result.code).toBe(0);
    expect(messages.map((message) => message.payload)).toEqual(lines);
  });
});
