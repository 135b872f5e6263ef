import net from 'node:net';
import type { IDisconnectPacket } from 'mqtt-packet';
import { describe, expect, it } from 'vitest';

import { LoginDelay } from '../src/auth/login-delay.js';
import { BufferBudget, type BufferedClient } from '../src/transport/buffer-budget.js';
import { ConnectionRateLimiter } from '../src/transport/connection-rate.js';
import { connectMqttJs, endMqttJs } from './helpers/broker.js';
import { RawClient } from './helpers/raw-client.js';
import { createTestCertificates } from './helpers/certs.js';
import { CapturedLog, startSecureBroker } from './helpers/security.js';
import { delay } from './helpers/wait.js';

describe('connection rate limiter', () => {
  it('allows a burst, then the refill rate', () => {
    const limiter = new ConnectionRateLimiter(3);
    const now = 1_000_000;
    expect([1, 2, 3, 4].map(() => limiter.tryAcquire('10.0.0.1', now))).toEqual([true, true, true, false]);
    // Other addresses have their own bucket.
    expect(limiter.tryAcquire('10.0.0.2', now)).toBe(true);
    // One third of a second refills one token at 3 per second.
    expect(limiter.tryAcquire('10.0.0.1', now + 334)).toBe(true);
    expect(limiter.tryAcquire('10.0.0.1', now + 334)).toBe(false);
  });

  it('rate 0 never refuses', () => {
    const limiter = new ConnectionRateLimiter(0);
    for (let i = 0; i < 1000; i++) expect(limiter.tryAcquire('10.0.0.1', 0)).toBe(true);
  });
});

describe('login delay', () => {
  it('doubles per failure up to the maximum', () => {
    const delays = new LoginDelay(500, 3000);
    expect([1, 2, 3, 4, 5].map(() => delays.recordFailure('10.0.0.1', 0))).toEqual([500, 1000, 2000, 3000, 3000]);
    expect(delays.failuresOf('10.0.0.1', 0)).toBe(5);
  });

  it('forgets an address after ten quiet minutes', () => {
    const delays = new LoginDelay(500, 3000);
    delays.recordFailure('10.0.0.1', 0);
    delays.recordFailure('10.0.0.1', 0);
    expect(delays.recordFailure('10.0.0.1', 10 * 60 * 1000 + 1)).toBe(500);
  });

  it('success clears the address', () => {
    const delays = new LoginDelay(500, 3000);
    delays.recordFailure('10.0.0.1', 0);
    delays.recordSuccess('10.0.0.1');
    expect(delays.recordFailure('10.0.0.1', 0)).toBe(500);
  });
});

class FakeClient implements BufferedClient {
  closed = false;

  constructor(
    readonly name: string,
    public bufferedBytes: number,
  ) {}

  isClosed(): boolean {
    return this.closed;
  }
}

describe('buffer budget', () => {
  it('evicts the largest clients until below 90 %', () => {
    const evicted: string[] = [];
    const budget = new BufferBudget<FakeClient>(1000, (client) => {
      client.closed = true;
      evicted.push(client.name);
    });
    const clients = [new FakeClient('small', 100), new FakeClient('large', 600), new FakeClient('medium', 400)];
    for (const client of clients) budget.add(client);
    budget.check();
    // 1100 bytes: evicting "large" leaves 500, below 900.
    expect(evicted).toEqual(['large']);
    expect(budget.totalBytes).toBe(500);
    budget.stop();
  });

  it('forgets closed clients', () => {
    const budget = new BufferBudget<FakeClient>(1000, () => undefined);
    const client = new FakeClient('gone', 800);
    budget.add(client);
    budget.check();
    expect(budget.totalBytes).toBe(800);
    client.closed = true;
    budget.check();
    expect(budget.totalBytes).toBe(0);
    budget.stop();
  });
});

describe('limits on the network', () => {
  it('connection rate per address refuses the excess', async () => {
    const tb = await startSecureBroker({ listeners: [{ connection_rate: 3 }] });
    try {
      const clients = await Promise.all([0, 1, 2, 3, 4].map(() => RawClient.connect(tb.ports[0] ?? 0)));
      const outcomes = await Promise.all(
        clients.map(async (client, index) => {
          try {
            const connack = await client.connectMqtt({ clientId: `rate-${index}` }, 1000);
            return connack.returnCode === 0 ? 'accepted' : 'refused';
          } catch {
            return 'closed';
          }
        }),
      );
      expect(outcomes.filter((outcome) => outcome === 'accepted')).toHaveLength(3);
      expect(outcomes.filter((outcome) => outcome === 'closed')).toHaveLength(2);
      for (const client of clients) client.close();
      // After a second the bucket is full again.
      await delay(1000);
      const later = await RawClient.connect(tb.ports[0] ?? 0);
      expect((await later.connectMqtt({ clientId: 'rate-later' })).returnCode).toBe(0);
      later.close();
    } finally {
      await tb.stop();
    }
  });

  it('max_connections applies per listener', async () => {
    const tb = await startSecureBroker({ listeners: [{ max_connections: 2 }, { name: 'ws', protocol: 'ws', max_connections: 1 }] });
    try {
      const first = await connectMqttJs(`mqtt://127.0.0.1:${tb.ports[0]}`, { clientId: 'tcp-1' });
      const second = await connectMqttJs(`mqtt://127.0.0.1:${tb.ports[0]}`, { clientId: 'tcp-2' });
      await expect(connectMqttJs(`mqtt://127.0.0.1:${tb.ports[0]}`, { clientId: 'tcp-3' }, 1000)).rejects.toThrow();
      const ws = await connectMqttJs(`ws://127.0.0.1:${tb.ports[1]}/mqtt`, { clientId: 'ws-1' });
      await expect(connectMqttJs(`ws://127.0.0.1:${tb.ports[1]}/mqtt`, { clientId: 'ws-2' }, 1000)).rejects.toThrow();
      await Promise.all([endMqttJs(first), endMqttJs(second), endMqttJs(ws)]);
    } finally {
      await tb.stop();
    }
  });

  it('silent sockets closed on ws and mqtts', async () => {
    const certs = await createTestCertificates();
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
    const tb = await startSecureBroker({
      listeners: [{ name: 'ws', protocol: 'ws' }, { name: 'tls', protocol: 'mqtts', tls }],
      limits: { connect_timeout_seconds: 1 },
    });
    try {
      // Neither an HTTP upgrade request nor a TLS ClientHello arrives on these sockets.
      const closedAfter = await Promise.all(tb.ports.map((port) => secondsUntilClosed(port)));
      for (const seconds of closedAfter) {
        expect(seconds).toBeGreaterThanOrEqual(0.9);
        expect(seconds).toBeLessThan(3);
      }
    } finally {
      await tb.stop();
      await certs.remove();
    }
  }, 20_000);

  it('listener max_packet_size is enforced and announced', async () => {
    const tb = await startSecureBroker({ listeners: [{ max_packet_size: 200 }] });
    try {
      const client = await RawClient.connect(tb.ports[0] ?? 0, { protocolVersion: 5 });
      const connack = await client.connectMqtt({ clientId: 'small-packets' });
      expect(connack.properties?.maximumPacketSize).toBe(200);
      client.send({ cmd: 'publish', topic: 't', payload: Buffer.alloc(300), qos: 0, retain: false, dup: false });
      const disconnect = (await client.expectPacket('disconnect')) as IDisconnectPacket;
      expect(disconnect.reasonCode).toBe(0x95);
      expect(disconnect.properties?.reasonString).toContain('listeners.default.max_packet_size');
      await client.waitClose();
    } finally {
      await tb.stop();
    }
  });

  it('buffer cap disconnects the largest non-reading client', async () => {
    const log = new CapturedLog();
    const tb = await startSecureBroker({ limits: { max_client_buffer_bytes: 1_048_576, drain_timeout_seconds: 60 } }, {}, log);
    const publisher = tb.broker.createClient('flooder', () => undefined);
    const stalled: RawClient[] = [];
    try {
      for (const name of ['stalled-1', 'stalled-2']) {
        const client = await RawClient.connect(tb.ports[0] ?? 0, { protocolVersion: 5 });
        await client.connectMqtt({ clientId: name });
        client.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'flood/#', qos: 0 }] });
        await client.expectPacket('suback');
        // Stop reading, so the broker's output buffer for this client grows.
        client.socket.pause();
        stalled.push(client);
      }
      const payload = Buffer.alloc(256 * 1024);
      const evicted = (): boolean => log.text.includes('client buffers over limits.max_client_buffer_bytes');
      // The kernel's socket buffers on loopback take several MB before Node buffers anything.
      const deadline = Date.now() + 15_000;
      while (!evicted() && Date.now() < deadline) {
        await publisher.publish('flood/data', payload, { qos: 0 });
        await delay(2);
      }
      expect(evicted()).toBe(true);
      // One eviction brings 2 x 512 KiB under 90 % of 1 MiB, so one client stays.
      expect(tb.broker.stats.clientsConnected).toBe(1);
      expect(log.text).toMatch(/client disconnected client_id=stalled-\d conn=\d+ reason="client buffers over limits.max_client_buffer_bytes" reason_code=0x89/);
    } finally {
      publisher.close();
      for (const client of stalled) client.close();
      await tb.stop();
    }
  }, 30_000);
});

/** Opens a TCP connection that sends nothing and returns the seconds until the server closes it. */
function secondsUntilClosed(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const socket = net.connect({ host: '127.0.0.1', port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`port ${port} kept a silent connection open for 5 s`));
    }, 5000);
    socket.on('error', () => undefined);
    socket.on('data', () => undefined);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve((Date.now() - started) / 1000);
    });
  });
}
