import net from 'node:net';
import v8 from 'node:v8';
import vm from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import mqttPacket from 'mqtt-packet';
import type { Packet } from 'mqtt-packet';
import { connectMqttJs, endMqttJs, startBroker, type TestBroker } from './helpers/broker.js';
import { delay, waitFor } from './helpers/wait.js';

/** Packets sent in total, valid CONNECTs included. */
const PACKET_BUDGET = 20_000;
/** The fuzz loop stops here even when packets are left. */
const TIME_BUDGET_MS = 15_000;
const PARALLEL_CONNECTIONS = 8;
/**
 * Few packets per connection: the broker closes a connection at its first invalid packet, so
 * many short connections reach more parser states than a few long ones.
 */
const MAX_PACKETS_PER_CONNECTION = 12;
/** Allowed growth of heap plus external memory across the run, after a full collection. */
const MEMORY_GROWTH_LIMIT = 48 * 1024 * 1024;

type Version = 4 | 5;

/** mulberry32: a small seeded generator, so that a failing run can be replayed. */
function createRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function seedFromEnvironment(): number {
  const text = process.env.OUTPOST_FUZZ_SEED;
  if (text !== undefined && /^\d+$/.test(text)) {
    return Number(text) >>> 0;
  }
  return (Date.now() ^ (process.pid << 16)) >>> 0;
}

/**
 * Returns a function that runs a full garbage collection. Vitest workers lack --expose-gc, so the
 * flag is set at run time.
 */
function exposeGc(): () => void {
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
}

function liveMemory(gc: () => void): number {
  gc();
  gc();
  const usage = process.memoryUsage();
  return usage.heapUsed + usage.external;
}

/** Encodes one valid packet of every type for `version`, as starting points for mutations. */
function validPackets(version: Version): Buffer[] {
  const v5 = version === 5;
  const packets: Packet[] = [
    {
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: version,
      clean: true,
      keepalive: 30,
      clientId: 'fuzz-template',
      username: 'user',
      password: Buffer.from('secret'),
      will: {
        topic: 'fuzz/will',
        payload: Buffer.from('gone'),
        qos: 1,
        retain: false,
        ...(v5 ? { properties: { willDelayInterval: 0, contentType: 'text/plain' } } : {}),
      },
      ...(v5 ? { properties: { sessionExpiryInterval: 0, receiveMaximum: 10, topicAliasMaximum: 4, userProperties: { k: 'v' } } } : {}),
    },
    { cmd: 'connack', sessionPresent: false, ...(v5 ? { reasonCode: 0 } : { returnCode: 0 }) },
    { cmd: 'publish', topic: 'fuzz/a/b', payload: Buffer.from('payload'), qos: 0, dup: false, retain: false },
    {
      cmd: 'publish',
      topic: 'fuzz/q1',
      payload: Buffer.from('{"x":1}'),
      qos: 1,
      messageId: 11,
      dup: false,
      retain: true,
      ...(v5
        ? {
            properties: {
              payloadFormatIndicator: true,
              messageExpiryInterval: 5,
              topicAlias: 2,
              responseTopic: 'fuzz/reply',
              correlationData: Buffer.from([1, 2, 3]),
              userProperties: { a: ['1', '2'] },
              contentType: 'application/json',
            },
          }
        : {}),
    },
    { cmd: 'publish', topic: 'fuzz/q2', payload: Buffer.from('two'), qos: 2, messageId: 12, dup: false, retain: false },
    { cmd: 'puback', messageId: 11, ...(v5 ? { reasonCode: 0x10 } : {}) },
    { cmd: 'pubrec', messageId: 12 },
    { cmd: 'pubrel', messageId: 12 },
    { cmd: 'pubcomp', messageId: 12 },
    {
      cmd: 'subscribe',
      messageId: 13,
      subscriptions: [
        { topic: 'fuzz/+/b', qos: 1, ...(v5 ? { nl: true, rap: true, rh: 1 } : {}) },
        { topic: '$share/g/fuzz/#', qos: 0 },
      ],
      ...(v5 ? { properties: { subscriptionIdentifier: 9 } } : {}),
    },
    { cmd: 'suback', messageId: 13, granted: [0, 1] },
    { cmd: 'unsubscribe', messageId: 14, unsubscriptions: ['fuzz/+/b', 'other'] },
    { cmd: 'unsuback', messageId: 14, granted: v5 ? [0, 0x11] : [] },
    { cmd: 'pingreq' },
    { cmd: 'pingresp' },
    { cmd: 'disconnect', ...(v5 ? { reasonCode: 0x04, properties: { sessionExpiryInterval: 0 } } : {}) },
  ];
  if (v5) {
    packets.push({ cmd: 'auth', reasonCode: 0x18, properties: { authenticationMethod: 'PLAIN', authenticationData: Buffer.from('x') } });
  }
  return packets.map((packet) => mqttPacket.generate(packet, { protocolVersion: version }));
}

class Mutator {
  private readonly random: () => number;
  private readonly templates: Record<Version, Buffer[]>;

  constructor(random: () => number) {
    this.random = random;
    this.templates = { 4: validPackets(4), 5: validPackets(5) };
  }

  integer(maxExclusive: number): number {
    return Math.floor(this.random() * maxExclusive);
  }

  chance(probability: number): boolean {
    return this.random() < probability;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.integer(items.length)]!;
  }

  validConnect(version: Version, clientId: string): Buffer {
    return mqttPacket.generate(
      {
        cmd: 'connect',
        protocolId: 'MQTT',
        protocolVersion: version,
        clean: true,
        keepalive: this.integer(120),
        clientId,
        ...(version === 5 ? { properties: { sessionExpiryInterval: 0 } } : {}),
      },
      { protocolVersion: version },
    );
  }

  /** Returns a valid packet, a mutation of one, or random bytes. */
  packet(version: Version): Buffer {
    const roll = this.random();
    if (roll < 0.1) {
      return this.randomBytes(1 + this.integer(64));
    }
    const template = this.pick(this.templates[version]);
    if (roll < 0.4) {
      return template;
    }
    return this.mutate(Buffer.from(template));
  }

  private randomBytes(length: number): Buffer {
    const bytes = Buffer.alloc(length);
    for (let index = 0; index < length; index++) {
      bytes[index] = this.integer(256);
    }
    return bytes;
  }

  private mutate(bytes: Buffer): Buffer {
    const rounds = 1 + this.integer(3);
    let result = bytes;
    for (let round = 0; round < rounds; round++) {
      result = this.mutateOnce(result);
    }
    return result;
  }

  private mutateOnce(bytes: Buffer): Buffer {
    if (bytes.length === 0) {
      return this.randomBytes(1 + this.integer(8));
    }
    switch (this.integer(8)) {
      case 0: {
        // Flip one to four bits anywhere.
        const copy = Buffer.from(bytes);
        const flips = 1 + this.integer(4);
        for (let flip = 0; flip < flips; flip++) {
          const index = this.integer(copy.length);
          copy[index] = copy[index]! ^ (1 << this.integer(8));
        }
        return copy;
      }
      case 1:
        // Truncate, keeping at least the first byte.
        return bytes.subarray(0, 1 + this.integer(bytes.length));
      case 2: {
        // Rewrite the first remaining-length byte: too short, too long, or a continuation bit.
        const copy = Buffer.from(bytes);
        if (copy.length > 1) copy[1] = this.pick([0x00, 0x01, 0x7f, 0x80, 0xff, this.integer(256)]);
        return copy;
      }
      case 3: {
        // Change the fixed header flags, or the packet type.
        const copy = Buffer.from(bytes);
        copy[0] = this.chance(0.5) ? (copy[0]! & 0xf0) | this.integer(16) : this.integer(256);
        return copy;
      }
      case 4: {
        // Overwrite a byte with a boundary value.
        const copy = Buffer.from(bytes);
        copy[this.integer(copy.length)] = this.pick([0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff]);
        return copy;
      }
      case 5: {
        // Insert random bytes.
        const at = this.integer(bytes.length + 1);
        return Buffer.concat([bytes.subarray(0, at), this.randomBytes(1 + this.integer(16)), bytes.subarray(at)]);
      }
      case 6: {
        // Remove a range.
        const start = this.integer(bytes.length);
        const end = Math.min(bytes.length, start + 1 + this.integer(8));
        return Buffer.concat([bytes.subarray(0, start), bytes.subarray(end)]);
      }
      default: {
        // Replace a two-byte length field inside the body with a random value.
        const copy = Buffer.from(bytes);
        if (copy.length > 4) {
          const at = 2 + this.integer(copy.length - 3);
          copy.writeUInt16BE(this.integer(0x10000), at);
        }
        return copy;
      }
    }
  }
}

/** Opens a connection, writes `chunks` in order, waits briefly for the broker, and closes it. */
function runConnection(port: number, chunks: Buffer[], splitWrites: boolean): Promise<void> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let finished = false;
    const finish = (): void => {
      if (finished) return;
      finished = true;
      clearTimeout(guard);
      socket.destroy();
      resolve();
    };
    // No connection may outlive this guard, whatever the broker does.
    const guard = setTimeout(finish, 2000);
    socket.on('error', finish);
    socket.on('close', finish);
    socket.on('data', () => undefined);
    socket.once('connect', () => {
      void (async () => {
        if (splitWrites) {
          for (const chunk of chunks) {
            if (socket.destroyed) break;
            socket.write(chunk);
            await delay(0);
          }
        } else {
          socket.write(Buffer.concat(chunks));
        }
        await delay(5 + Math.floor(chunks.length / 4));
        finish();
      })();
    });
  });
}

describe('fuzz', () => {
  let broker: TestBroker;
  const seed = seedFromEnvironment();

  beforeAll(async () => {
    broker = await startBroker();
  });

  afterAll(async () => {
    await broker.stop();
  });

  it('survives random and mutated packets', async () => {
    console.log(`fuzz seed ${seed}; replay with OUTPOST_FUZZ_SEED=${seed}`);
    const mutator = new Mutator(createRandom(seed));
    const gc = exposeGc();

    // One healthy round first, so lazily created broker state is in the baseline.
    await expectPublishRoundTrip(broker.url, 5, 'fuzz-warmup');
    const baseline = liveMemory(gc);

    const started = Date.now();
    let packetsSent = 0;
    let connections = 0;

    // Plan each connection from the generator in the loop below, so one seed gives one sequence.
    const nextConnection = (): { chunks: Buffer[]; split: boolean } | null => {
      if (packetsSent >= PACKET_BUDGET || Date.now() - started > TIME_BUDGET_MS) return null;
      connections += 1;
      const version: Version = mutator.chance(0.5) ? 5 : 4;
      const chunks: Buffer[] = [];
      if (mutator.chance(0.5)) {
        chunks.push(mutator.validConnect(version, `fuzz-${connections}`));
      }
      const count = 1 + mutator.integer(MAX_PACKETS_PER_CONNECTION);
      for (let index = 0; index < count; index++) {
        chunks.push(mutator.packet(version));
      }
      packetsSent += chunks.length;
      return { chunks, split: mutator.chance(0.5) };
    };

    const worker = async (): Promise<void> => {
      for (let plan = nextConnection(); plan !== null; plan = nextConnection()) {
        await runConnection(broker.port, plan.chunks, plan.split);
      }
    };
    await Promise.all(Array.from({ length: PARALLEL_CONNECTIONS }, () => worker()));
    const elapsed = Date.now() - started;
    console.log(`fuzz sent ${packetsSent} packets over ${connections} connections in ${elapsed} ms`);

    // The broker still serves 5.0 and 3.1.1 clients.
    await expectPublishRoundTrip(broker.url, 5, 'fuzz-after-5');
    await expectPublishRoundTrip(broker.url, 4, 'fuzz-after-4');

    // Let the broker finish closing the fuzz connections before measuring.
    await delay(300);
    const after = liveMemory(gc);
    console.log(`fuzz memory growth ${((after - baseline) / 1024 / 1024).toFixed(1)} MiB`);

    expect(packetsSent).toBeGreaterThan(1000);
    expect(after - baseline).toBeLessThan(MEMORY_GROWTH_LIMIT);
  }, 40_000);
});

async function expectPublishRoundTrip(url: string, protocolVersion: Version, clientId: string): Promise<void> {
  const client = await connectMqttJs(url, { protocolVersion, clientId });
  try {
    const received: string[] = [];
    client.on('message', (_topic, payload) => {
      received.push(payload.toString());
    });
    await client.subscribeAsync(`health/${clientId}`, { qos: 1 });
    await client.publishAsync(`health/${clientId}`, 'still here', { qos: 1 });
    await waitFor(() => received.length > 0, 2000, `the round trip of ${clientId}`);
    expect(received).toEqual(['still here']);
  } finally {
    await endMqttJs(client, true);
  }
}
