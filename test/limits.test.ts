import net from 'node:net';
import v8 from 'node:v8';
import vm from 'node:vm';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import mqtt from 'mqtt';
import mqttPacket from 'mqtt-packet';
import type { MqttClient } from 'mqtt';
import type { IConnackPacket, IPublishPacket, ISubackPacket, Packet } from 'mqtt-packet';
import { connectMqttJs, endMqttJs, startBroker, type TestBroker } from './helpers/broker.js';
import { RawClient } from './helpers/raw-client.js';
import { delay, onceWithTimeout, waitFor } from './helpers/wait.js';

const openClients: MqttClient[] = [];
const rawClients: RawClient[] = [];

afterEach(async () => {
  await Promise.all(openClients.splice(0).map((client) => endMqttJs(client, true)));
  for (const raw of rawClients.splice(0)) {
    raw.close();
  }
});

async function connectClient(url: string, clientId: string): Promise<MqttClient> {
  const client = await connectMqttJs(url, { protocolVersion: 5, clientId });
  openClients.push(client);
  return client;
}

async function openRaw(port: number, protocolVersion: 4 | 5): Promise<RawClient> {
  const raw = await RawClient.connect(port, { protocolVersion });
  rawClients.push(raw);
  return raw;
}

async function connectRaw(port: number, protocolVersion: 4 | 5, clientId: string): Promise<RawClient> {
  const raw = await openRaw(port, protocolVersion);
  const connack = await raw.connectMqtt({ clientId });
  expect(connack.reasonCode ?? connack.returnCode).toBe(0);
  return raw;
}

/** Returns every packet the server sends within `ms`. */
async function packetsWithin(raw: RawClient, ms: number): Promise<Packet[]> {
  const deadline = Date.now() + ms;
  const packets: Packet[] = [];
  for (;;) {
    const remaining = deadline - Date.now();
    if (remaining <= 0) {
      return packets;
    }
    try {
      packets.push(await raw.nextPacket(remaining));
    } catch {
      return packets;
    }
  }
}

function publishes(packets: Packet[]): IPublishPacket[] {
  return packets.filter((p): p is IPublishPacket => p.cmd === 'publish');
}

/**
 * Returns a function that runs a full garbage collection. Vitest does not start workers with
 * --expose-gc, so the flag is set at run time and `gc` is taken from a fresh context.
 */
function exposeGc(): () => void {
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
}

/** JavaScript heap plus memory of Buffers outside it, after a full collection. */
function liveMemory(gc: () => void): number {
  gc();
  const usage = process.memoryUsage();
  return usage.heapUsed + usage.external;
}

describe('max_connections', () => {
  let broker: TestBroker;

  beforeAll(async () => {
    broker = await startBroker({ limits: { max_connections: 2 } });
  });

  afterAll(async () => {
    await broker.stop();
  });

  /** Connects, retrying while the broker may still count connections of the previous test. */
  async function connectWhenFree(clientId: string): Promise<MqttClient> {
    const connected: MqttClient[] = [];
    await waitFor(
      async () => {
        try {
          connected.push(await connectClient(broker.url, clientId));
          return true;
        } catch {
          return false;
        }
      },
      3000,
      `a free connection slot for ${clientId}`,
      100,
    );
    return connected[0]!;
  }

  for (const version of [4, 5] as const) {
    it(`${version === 5 ? 'v5' : '3.1.1'} connection over the limit is closed`, async () => {
      const first = await connectWhenFree(`limit-first-${version}`);
      await connectWhenFree(`limit-second-${version}`);

      const extra = await openRaw(broker.port, version);
      extra.send({
        cmd: 'connect',
        protocolId: 'MQTT',
        protocolVersion: version,
        clean: true,
        keepalive: 60,
        clientId: `limit-extra-${version}`,
      });
      const packets = await packetsWithin(extra, 1500);
      await extra.waitClose(1000);

      // The broker may refuse with a CONNACK error code before closing, or just close.
      const connacks = packets.filter((p): p is IConnackPacket => p.cmd === 'connack');
      for (const connack of connacks) {
        expect(connack.reasonCode ?? connack.returnCode ?? 0).not.toBe(0);
      }
      expect(first.connected).toBe(true);

      await endMqttJs(first);
      const replacement = await connectWhenFree(`limit-replacement-${version}`);
      expect(replacement.connected).toBe(true);
    });
  }
});

describe('max_inflight_messages', () => {
  let broker: TestBroker;
  let publisher: MqttClient;

  beforeAll(async () => {
    broker = await startBroker({ limits: { max_inflight_messages: 3 } });
    publisher = await connectMqttJs(broker.url, { protocolVersion: 5, clientId: 'inflight-publisher' });
  });

  afterAll(async () => {
    await endMqttJs(publisher, true);
    await broker.stop();
  });

  for (const version of [4, 5] as const) {
    it(`${version === 5 ? 'v5' : '3.1.1'} slow subscriber has at most 3 unacked`, async () => {
      const topic = `inflight/${version}`;
      const raw = await connectRaw(broker.port, version, `inflight-sub-${version}`);
      raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic, qos: 1 }] });
      const suback = await raw.nextPacket(2000);
      expect((suback as ISubackPacket).granted).toEqual([1]);

      for (let index = 0; index < 10; index++) {
        await publisher.publishAsync(topic, `m${index}`, { qos: 1 });
      }
      const firstBatch = publishes(await packetsWithin(raw, 500));
      expect(firstBatch.map((p) => p.payload.toString())).toEqual(['m0', 'm1', 'm2']);

      raw.send({ cmd: 'puback', messageId: firstBatch[0]!.messageId! });
      const secondBatch = publishes(await packetsWithin(raw, 500));
      expect(secondBatch.map((p) => p.payload.toString())).toEqual(['m3']);
    });
  }
});

describe('max_queued_messages', () => {
  let broker: TestBroker;
  let publisher: MqttClient;

  beforeAll(async () => {
    broker = await startBroker({ limits: { max_queued_messages: 5 } });
    publisher = await connectMqttJs(broker.url, { protocolVersion: 5, clientId: 'queue-publisher' });
  });

  afterAll(async () => {
    await endMqttJs(publisher, true);
    await broker.stop();
  });

  it('offline session keeps at most 5 messages', async () => {
    const options = { protocolVersion: 5 as const, clientId: 'queue-sub', clean: false, properties: { sessionExpiryInterval: 60 } };
    const first = await connectMqttJs(broker.url, options);
    await first.subscribeAsync('queue/t', { qos: 1 });
    await endMqttJs(first);

    for (let index = 0; index < 12; index++) {
      await publisher.publishAsync('queue/t', `m${index}`, { qos: 1 });
    }

    const received: string[] = [];
    const second = mqtt.connect(broker.url, { ...options, reconnectPeriod: 0 });
    openClients.push(second);
    second.on('message', (_topic, payload) => {
      received.push(payload.toString());
    });
    await onceWithTimeout(second, 'connect', 3000);
    await waitFor(() => received.length >= 5, 2000, 'five queued messages');
    await delay(300);

    expect(received).toHaveLength(5);
  });
});

describe('throttle_publishers', () => {
  const MESSAGES = 300;

  /**
   * Pipelines MESSAGES QoS 1 publishes from a raw 3.1.1 client (no flow control of its own) to a
   * subscriber that acknowledges each message `ackDelayMs` after it arrives, or never when null.
   * Returns the payloads the subscriber received and the time until every PUBACK was back.
   */
  async function publishToSlowSubscriber(broker: TestBroker, ackDelayMs: number | null): Promise<{ received: string[]; ackedAfterMs: number }> {
    const subscriber = await connectRaw(broker.port, 4, 'throttle-sub');
    subscriber.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'throttle/t', qos: 1 }] });
    await subscriber.expectPacket('suback');
    const received: string[] = [];
    let reading = true;
    const readLoop = (async (): Promise<void> => {
      while (reading) {
        let packet: Packet;
        try {
          packet = await subscriber.nextPacket(200);
        } catch {
          continue;
        }
        if (packet.cmd !== 'publish') continue;
        received.push(packet.payload.toString());
        if (ackDelayMs === null) continue;
        await delay(ackDelayMs);
        subscriber.send({ cmd: 'puback', messageId: packet.messageId });
      }
    })();

    const publisher = await connectRaw(broker.port, 4, 'throttle-pub');
    const startedAt = Date.now();
    for (let index = 0; index < MESSAGES; index++) {
      publisher.send({ cmd: 'publish', topic: 'throttle/t', payload: Buffer.from(`m${index}`), qos: 1, messageId: index + 1, retain: false, dup: false });
    }
    for (let acked = 0; acked < MESSAGES; ) {
      if ((await publisher.nextPacket(10_000)).cmd === 'puback') acked++;
    }
    const ackedAfterMs = Date.now() - startedAt;
    // The queue drains after the last PUBACK: wait until 300 ms pass without a new message.
    for (let count = -1, deadline = Date.now() + 10_000; received.length !== count && Date.now() < deadline; ) {
      count = received.length;
      await delay(300);
    }
    reading = false;
    await readLoop;
    return { received, ackedAfterMs };
  }

  const limits = { max_inflight_messages: 5, max_queued_messages: 20 };

  it('slows publisher, loses nothing', async () => {
    const broker = await startBroker({ limits });
    try {
      const { received } = await publishToSlowSubscriber(broker, 2);
      expect(received).toHaveLength(MESSAGES);
      expect(received).toEqual(Array.from({ length: MESSAGES }, (_, index) => `m${index}`));
    } finally {
      await broker.stop();
    }
  });

  it('drops at the queue bound when off', async () => {
    const broker = await startBroker({ limits: { ...limits, throttle_publishers: false } });
    try {
      const { received } = await publishToSlowSubscriber(broker, 2);
      expect(received.length).toBeLessThan(MESSAGES);
    } finally {
      await broker.stop();
    }
  });

  it('stops waiting for a stalled subscriber', async () => {
    const broker = await startBroker({ limits });
    try {
      // The subscriber acknowledges nothing: the publisher waits for it once, for up to STALL_MS.
      const { received, ackedAfterMs } = await publishToSlowSubscriber(broker, null);
      expect(ackedAfterMs).toBeLessThan(5000);
      expect(received).toHaveLength(limits.max_inflight_messages);
    } finally {
      await broker.stop();
    }
  });
});

describe('drain_timeout_seconds', () => {
  let broker: TestBroker;

  beforeAll(async () => {
    broker = await startBroker({ limits: { drain_timeout_seconds: 1 } });
  });

  afterAll(async () => {
    await broker.stop();
  });

  it('non-reading subscriber is disconnected, memory bounded', async () => {
    const gc = exposeGc();
    const slow = await connectRaw(broker.port, 4, 'drain-slow');
    slow.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'flood/#', qos: 0 }] });
    expect((await slow.nextPacket(2000)).cmd).toBe('suback');
    slow.socket.pause();

    const publisher = await connectRaw(broker.port, 4, 'drain-publisher');
    const message = mqttPacket.generate(
      { cmd: 'publish', topic: 'flood/data', payload: Buffer.alloc(64 * 1024, 0x5a), qos: 0, dup: false, retain: false },
      { protocolVersion: 4 },
    );
    const baseline = liveMemory(gc);
    let peak = baseline;
    let sent = 0;
    const floodUntil = Date.now() + 2500;
    let nextSample = Date.now() + 250;

    // Send one 64 KiB message per timer tick (at most 5,000, about 320 MiB) for 2.5 seconds, which
    // outlasts the 1 second drain timeout, and wait for 'drain' when the broker stops reading.
    while (Date.now() < floodUntil && sent < 5000 && !publisher.isSocketClosed) {
      sent += 1;
      if (!publisher.socket.write(message)) {
        await onceWithTimeout(publisher.socket, 'drain', 250).catch(() => undefined);
      } else {
        await delay(1);
      }
      if (Date.now() >= nextSample) {
        peak = Math.max(peak, liveMemory(gc));
        nextSample = Date.now() + 250;
      }
    }
    peak = Math.max(peak, liveMemory(gc));

    // Reading again drains what the kernel holds; a connection the broker closed then ends.
    slow.socket.resume();
    await slow.waitClose(3000);

    expect(publisher.isSocketClosed).toBe(false);
    expect(sent).toBeGreaterThan(100);
    expect(peak - baseline).toBeLessThan(64 * 1024 * 1024);
  }, 15000);
});

describe('connect_timeout_seconds', () => {
  let broker: TestBroker;

  beforeAll(async () => {
    broker = await startBroker({ limits: { connect_timeout_seconds: 1 } });
  });

  afterAll(async () => {
    await broker.stop();
  });

  function openSocket(): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port: broker.port });
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.removeListener('error', reject);
        socket.on('error', () => undefined);
        resolve(socket);
      });
    });
  }

  function closedWithin(socket: net.Socket, ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), ms);
      socket.once('close', () => {
        clearTimeout(timer);
        resolve(true);
      });
      socket.resume();
    });
  }

  it('silent connection closed after timeout', async () => {
    const socket = await openSocket();
    const started = Date.now();

    const closed = await closedWithin(socket, 3000);

    expect(closed).toBe(true);
    expect(Date.now() - started).toBeGreaterThanOrEqual(800);
    socket.destroy();
  });

  it('partial CONNECT closed after timeout', async () => {
    const socket = await openSocket();
    socket.write(Buffer.from([0x10, 0x20, 0x00]));

    const closed = await closedWithin(socket, 3000);

    expect(closed).toBe(true);
    socket.destroy();
  });

  it('connected client outlives the timeout', async () => {
    const client = await connectClient(broker.url, 'connect-timeout-ok');
    await delay(1600);

    expect(client.connected).toBe(true);
  });
});
