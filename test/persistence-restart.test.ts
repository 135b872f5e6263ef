// Durable state across restarts of a real `outpost` process: queued QoS 1/2 messages of offline
// persistent sessions, in-flight messages, incoming QoS 2 packet ids, retained messages,
// subscriptions, session and message expiry, and delayed wills. The broker is stopped gracefully
// (SIGTERM) or killed (SIGKILL) and started again on the same data directory.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import type { IPublishPacket, Packet } from 'mqtt-packet';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { OutpostProcess, killRunningOutposts, writeOutpostConfig } from './helpers/outpost-process.js';
import { connectCollecting, endClient, publishAll, type OutgoingMessage } from './helpers/persistent-clients.js';
import { RawClient } from './helpers/raw-client.js';
import { delay, waitFor } from './helpers/wait.js';

let directory = '';
let configPath = '';

beforeEach(() => {
  directory = mkdtempSync(join(tmpdir(), 'outpost-restart-'));
  configPath = writeOutpostConfig(join(directory, 'outpost.yaml'), { dataDir: join(directory, 'data') });
});

afterEach(async () => {
  await killRunningOutposts();
  rmSync(directory, { recursive: true, force: true });
});

/** Stops the broker with `signal` and starts it again on the same configuration and data. */
async function restart(outpost: OutpostProcess, signal: NodeJS.Signals): Promise<OutpostProcess> {
  await outpost.stop(signal);
  return OutpostProcess.start(configPath);
}

/** `count` messages on `topic`, alternating QoS 1 and QoS 2, with payloads `m0`, `m1`, ... */
function alternatingMessages(topic: string, count: number): OutgoingMessage[] {
  const messages: OutgoingMessage[] = [];
  for (let i = 0; i < count; i++) messages.push({ topic, payload: `m${i}`, options: { qos: i % 2 === 0 ? 1 : 2 } });
  return messages;
}

describe('offline queue across restart', () => {
  const cases: Array<{ signal: NodeJS.Signals; protocolVersion: 4 | 5 }> = [
    { signal: 'SIGTERM', protocolVersion: 4 },
    { signal: 'SIGKILL', protocolVersion: 4 },
    { signal: 'SIGTERM', protocolVersion: 5 },
    { signal: 'SIGKILL', protocolVersion: 5 },
  ];

  for (const { signal, protocolVersion } of cases) {
    it(`delivers every QoS 1/2 message after ${signal} (MQTT ${protocolVersion === 5 ? '5' : '3.1.1'})`, async () => {
      const count = 200;
      const clientId = `offline-${protocolVersion}`;
      const sessionOptions =
        protocolVersion === 5
          ? { protocolVersion, clientId, clean: false, properties: { sessionExpiryInterval: 300 } }
          : { protocolVersion, clientId, clean: false };
      let outpost = await OutpostProcess.start(configPath);

      const first = await connectCollecting(outpost.url, sessionOptions);
      await first.client.subscribeAsync('queue/t', { qos: 2 });
      await endClient(first.client);

      const publisher = await connectCollecting(outpost.url, { protocolVersion, clientId: 'publisher' });
      const codes = await publishAll(publisher, alternatingMessages('queue/t', count));
      expect(codes.filter((code) => code !== 0)).toEqual([]);
      await endClient(publisher.client);

      outpost = await restart(outpost, signal);

      const second = await connectCollecting(outpost.url, sessionOptions);
      expect(second.connack.sessionPresent).toBe(true); // [MQTT-3.2.2-2]
      await waitFor(() => second.received.length >= count, 15_000, `${count} queued messages`);
      // A duplicate would arrive right behind the originals; give it a moment to show up.
      await delay(300);
      const expected = alternatingMessages('queue/t', count).map((message) => message.payload);
      // On the wire: every message once and in publish order [MQTT-4.6.0-6].
      expect(second.wire).toEqual(expected);
      // Handed to the application: every message exactly once, at the QoS it was published with.
      expect([...second.received.map((message) => message.payload)].sort()).toEqual([...expected].sort());
      for (const message of second.received) {
        expect(message.qos).toBe(Number(message.payload.slice(1)) % 2 === 0 ? 1 : 2);
      }
      await endClient(second.client);
    }, 40_000);
  }
});

describe('graceful stop', () => {
  it('stops on SIGTERM right after start', async () => {
    // A service manager may stop the broker at any moment after it reports that it started. The
    // stop must still close the store and exit with status 0.
    const outpost = await OutpostProcess.start(configPath);
    await outpost.stop('SIGTERM');
    expect(outpost.child.signalCode, `outpost was ended by the signal itself; its log:\n${outpost.stderr}`).toBe(null);
    expect(outpost.child.exitCode).toBe(0);
    expect(outpost.stderr).toMatch(/ broker stopped/);
  });
});

describe('in-flight state across kill -9', () => {
  it('resends in-flight messages after kill -9', async () => {
    let outpost = await OutpostProcess.start(configPath);
    const connectFields = { clientId: 'raw-inflight', clean: false, keepalive: 60 };

    const subscriber = await RawClient.connect(outpost.port);
    await subscriber.connectMqtt(connectFields);
    subscriber.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'inflight/t', qos: 2 }] });
    await subscriber.expectPacket('suback');
    await subscriber.disconnect();

    const total = 30;
    const publisher = await connectCollecting(outpost.url, { clientId: 'inflight-publisher' });
    await publishAll(publisher, alternatingMessages('inflight/t', total));
    await endClient(publisher.client);

    // The default in-flight window is 20: the broker sends 20 messages and queues 10.
    const resumed = await RawClient.connect(outpost.port);
    const connack = await resumed.connectMqtt(connectFields);
    expect(connack.sessionPresent).toBe(true);
    const firstSend: IPublishPacket[] = [];
    for (let i = 0; i < 20; i++) firstSend.push(await resumed.expectPacket('publish', 5000));
    expect(firstSend.map((packet) => String(packet.payload))).toEqual(
      alternatingMessages('inflight/t', 20).map((message) => message.payload),
    );
    // Complete the first half of QoS 2 exchanges up to PUBREL; acknowledge nothing else.
    const released = firstSend[1];
    expect(released.qos).toBe(2);
    resumed.send({ cmd: 'pubrec', messageId: released.messageId });
    const pubrel = await resumed.expectPacket('pubrel');
    expect(pubrel.messageId).toBe(released.messageId);
    // The state changes of outgoing messages commit within the batch window (5 ms by default).
    await delay(200);
    resumed.close();

    outpost = await restart(outpost, 'SIGKILL');

    const again = await RawClient.connect(outpost.port);
    const connackAgain = await again.connectMqtt(connectFields);
    expect(connackAgain.sessionPresent).toBe(true);
    // The 20 come back in their original order with their packet ids. The released QoS 2 message
    // comes back as PUBREL only, because a sender that sent PUBREL must not send that PUBLISH
    // again (MQTT 5.0 section 4.3.3). The other 19 come back as PUBLISH with DUP set [MQTT-4.4.0-1].
    const resent = [];
    for (let i = 0; i < 20; i++) resent.push(await again.nextPacket(5000));
    for (let i = 0; i < 20; i++) {
      const original = firstSend[i];
      const packet = resent[i];
      if (original === released) {
        expect(packet.cmd).toBe('pubrel');
        expect(packet.messageId).toBe(original.messageId);
        continue;
      }
      if (packet.cmd !== 'publish') throw new Error(`expected PUBLISH of m${i} again, got ${packet.cmd}`);
      expect(packet.dup).toBe(true);
      expect(packet.messageId).toBe(original.messageId);
      expect(String(packet.payload)).toBe(String(original.payload));
    }

    // Acknowledging them lets the 10 queued messages follow, in order and without DUP.
    const later: string[] = [];
    let open = 0;
    const acknowledge = (packet: Packet): void => {
      if (packet.cmd === 'publish' && packet.qos === 1) again.send({ cmd: 'puback', messageId: packet.messageId });
      if (packet.cmd === 'publish' && packet.qos === 2) {
        again.send({ cmd: 'pubrec', messageId: packet.messageId });
        open++;
      }
      if (packet.cmd === 'pubrel') {
        again.send({ cmd: 'pubcomp', messageId: packet.messageId });
        open--;
      }
    };
    open++; // the resent PUBREL of the released message gets its PUBCOMP in this loop
    for (const packet of resent) acknowledge(packet);
    while (later.length < total - 20 || open > 0) {
      const packet = await again.nextPacket(5000);
      if (packet.cmd === 'publish') {
        expect(packet.dup).toBe(false);
        later.push(String(packet.payload));
      }
      acknowledge(packet);
    }
    expect(later).toEqual(alternatingMessages('inflight/t', total).slice(20).map((message) => message.payload));
    await again.expectNoPacket(300);
    again.close();
  }, 40_000);

  it('keeps incoming QoS 2 ids across kill -9', async () => {
    let outpost = await OutpostProcess.start(configPath);
    const subscriberOptions = { protocolVersion: 4 as const, clientId: 'q2-subscriber', clean: false };
    const subscriber = await connectCollecting(outpost.url, subscriberOptions);
    await subscriber.client.subscribeAsync('q2/t', { qos: 2 });
    await endClient(subscriber.client);

    const publisherFields = { clientId: 'q2-publisher', clean: false, keepalive: 60 };
    const publisher = await RawClient.connect(outpost.port);
    await publisher.connectMqtt(publisherFields);
    publisher.send({ cmd: 'publish', topic: 'q2/t', payload: Buffer.from('once'), qos: 2, messageId: 7, retain: false, dup: false });
    // PUBREC means the message and its packet id are committed.
    expect((await publisher.expectPacket('pubrec')).messageId).toBe(7);
    publisher.close();

    outpost = await restart(outpost, 'SIGKILL');

    const resumed = await RawClient.connect(outpost.port);
    const connack = await resumed.connectMqtt(publisherFields);
    expect(connack.sessionPresent).toBe(true);
    // The publisher did not see PUBREC arrive in its own view and sends the PUBLISH again.
    resumed.send({ cmd: 'publish', topic: 'q2/t', payload: Buffer.from('once'), qos: 2, messageId: 7, retain: false, dup: true });
    expect((await resumed.expectPacket('pubrec')).messageId).toBe(7);
    resumed.send({ cmd: 'pubrel', messageId: 7 });
    expect((await resumed.expectPacket('pubcomp')).messageId).toBe(7);
    await resumed.disconnect();

    const again = await connectCollecting(outpost.url, subscriberOptions);
    await waitFor(() => again.received.length >= 1, 5000, 'the QoS 2 message');
    await delay(300);
    expect(again.received.map((message) => message.payload)).toEqual(['once']);
    await endClient(again.client);
  }, 30_000);
});

describe('retained messages and subscriptions across restart', () => {
  it('keeps retained messages across kill -9', async () => {
    let outpost = await OutpostProcess.start(configPath);
    const publisher = await connectCollecting(outpost.url, { protocolVersion: 5, clientId: 'retain-publisher' });
    const messages: OutgoingMessage[] = [];
    for (let i = 0; i < 50; i++) messages.push({ topic: `ret/${i}`, payload: `r${i}`, options: { qos: 1, retain: true } });
    messages.push({ topic: 'ret/cleared', payload: 'soon gone', options: { qos: 1, retain: true } });
    messages.push({ topic: 'ret/cleared', payload: '', options: { qos: 1, retain: true } });
    messages.push({
      topic: 'ret/props',
      payload: '{"t":21}',
      options: {
        qos: 1,
        retain: true,
        properties: { contentType: 'application/json', userProperties: { site: 'north' }, messageExpiryInterval: 600 },
      },
    });
    await publishAll(publisher, messages);
    await endClient(publisher.client);

    outpost = await restart(outpost, 'SIGKILL');

    const subscriber = await connectCollecting(outpost.url, { protocolVersion: 5, clientId: 'retain-reader' });
    await subscriber.client.subscribeAsync('ret/#', { qos: 1 });
    await waitFor(() => subscriber.received.length >= 51, 5000, '51 retained messages');
    await delay(300);
    const byTopic = new Map(subscriber.received.map((message) => [message.topic, message]));
    expect(subscriber.received).toHaveLength(51);
    for (let i = 0; i < 50; i++) expect(byTopic.get(`ret/${i}`)?.payload).toBe(`r${i}`);
    // An empty retained payload removed the topic's message [MQTT-3.3.1-10], and stays removed.
    expect(byTopic.has('ret/cleared')).toBe(false);
    const withProperties = byTopic.get('ret/props');
    expect(withProperties?.retain).toBe(true); // [MQTT-3.3.1-8]
    expect(withProperties?.properties?.contentType).toBe('application/json');
    expect(withProperties?.properties?.userProperties).toEqual({ site: 'north' });
    const remaining = withProperties?.properties?.messageExpiryInterval ?? 0;
    expect(remaining).toBeGreaterThan(0);
    expect(remaining).toBeLessThanOrEqual(600);
    await endClient(subscriber.client);
  }, 30_000);

  it('restores subscriptions but not removed ones', async () => {
    let outpost = await OutpostProcess.start(configPath);
    const options = { protocolVersion: 5 as const, clientId: 'sub-keeper', clean: false, properties: { sessionExpiryInterval: 300 } };
    const first = await connectCollecting(outpost.url, options);
    await first.client.subscribeAsync('keep/#', { qos: 1, properties: { subscriptionIdentifier: 7 } });
    await first.client.subscribeAsync('gone/#', { qos: 1 });
    await first.client.unsubscribeAsync('gone/#');
    await endClient(first.client);

    outpost = await restart(outpost, 'SIGTERM');

    const publisher = await connectCollecting(outpost.url, { protocolVersion: 5, clientId: 'sub-publisher' });
    const [kept, removed] = await publishAll(publisher, [
      { topic: 'keep/a', payload: 'kept', options: { qos: 1 } },
      { topic: 'gone/a', payload: 'removed', options: { qos: 1 } },
    ]);
    expect(kept).toBe(0);
    expect(removed).toBe(0x10); // No matching subscribers
    await endClient(publisher.client);

    const second = await connectCollecting(outpost.url, options);
    expect(second.connack.sessionPresent).toBe(true);
    await waitFor(() => second.received.length >= 1, 5000, 'the message on keep/a');
    expect(second.received[0].topic).toBe('keep/a');
    expect(second.received[0].properties?.subscriptionIdentifier).toBe(7);
    await endClient(second.client);
  }, 30_000);
});

describe('expiry across restart', () => {
  it('counts session expiry while the broker is stopped', async () => {
    let outpost = await OutpostProcess.start(configPath);
    const shortOptions = { protocolVersion: 5 as const, clientId: 'short', clean: false, properties: { sessionExpiryInterval: 2 } };
    const longerOptions = { protocolVersion: 5 as const, clientId: 'longer', clean: false, properties: { sessionExpiryInterval: 5 } };
    const shortSession = await connectCollecting(outpost.url, shortOptions);
    await shortSession.client.subscribeAsync('short/#', { qos: 1 });
    const longerSession = await connectCollecting(outpost.url, longerOptions);
    await longerSession.client.subscribeAsync('longer/#', { qos: 1 });
    await Promise.all([endClient(shortSession.client), endClient(longerSession.client)]);
    const disconnectedAt = Date.now();

    const publisher = await connectCollecting(outpost.url, { protocolVersion: 5, clientId: 'expiry-publisher' });
    await publishAll(publisher, [{ topic: 'short/a', payload: 'lost with the session', options: { qos: 1 } }]);
    await endClient(publisher.client);
    await outpost.stop('SIGTERM');

    // The 2 s session ends while the broker is down.
    await delay(Math.max(0, disconnectedAt + 2500 - Date.now()));
    outpost = await OutpostProcess.start(configPath);
    const probe = await connectCollecting(outpost.url, { protocolVersion: 5, clientId: 'expiry-probe' });
    const [toShort] = await publishAll(probe, [{ topic: 'short/b', payload: 'x', options: { qos: 1 } }]);
    expect(toShort).toBe(0x10);

    // The 5 s session ends 5 s after its client left, not 5 s after the restart.
    await waitFor(
      async () => (await publishAll(probe, [{ topic: 'longer/b', payload: 'x', options: { qos: 1 } }]))[0] === 0x10,
      10_000,
      'the 5 s session to expire',
      200,
    );
    const expiredAfterMs = Date.now() - disconnectedAt;
    expect(expiredAfterMs).toBeGreaterThanOrEqual(4800);
    // Counted from the restart instead, it would end after about 7.8 s.
    expect(expiredAfterMs).toBeLessThan(7000);
    await endClient(probe.client);

    expect(outpost.stderr).toMatch(/session expired .*client_id=short/);
    expect(outpost.stderr).toMatch(/session expired .*client_id=longer/);

    // Expired sessions stay gone after another restart.
    outpost = await restart(outpost, 'SIGTERM');
    for (const options of [shortOptions, longerOptions]) {
      const resumed = await connectCollecting(outpost.url, options);
      expect(resumed.connack.sessionPresent).toBe(false);
      await endClient(resumed.client);
    }
  }, 40_000);

  it('counts message expiry while the broker is stopped', async () => {
    let outpost = await OutpostProcess.start(configPath);
    const options = { protocolVersion: 5 as const, clientId: 'message-expiry', clean: false, properties: { sessionExpiryInterval: 300 } };
    const first = await connectCollecting(outpost.url, options);
    await first.client.subscribeAsync('mexp/#', { qos: 1 });
    await endClient(first.client);

    const publisher = await connectCollecting(outpost.url, { protocolVersion: 5, clientId: 'mexp-publisher' });
    await publishAll(publisher, [
      { topic: 'mexp/a', payload: 'expires', options: { qos: 1, properties: { messageExpiryInterval: 2 } } },
      { topic: 'mexp/a', payload: 'lasts', options: { qos: 1, properties: { messageExpiryInterval: 60 } } },
      { topic: 'rexp/short', payload: 'expires', options: { qos: 1, retain: true, properties: { messageExpiryInterval: 2 } } },
      { topic: 'rexp/long', payload: 'lasts', options: { qos: 1, retain: true, properties: { messageExpiryInterval: 60 } } },
    ]);
    const publishedAt = Date.now();
    await endClient(publisher.client);
    await outpost.stop('SIGTERM');

    await delay(Math.max(0, publishedAt + 2500 - Date.now()));
    outpost = await OutpostProcess.start(configPath);
    const second = await connectCollecting(outpost.url, options);
    await waitFor(() => second.received.length >= 1, 5000, 'the unexpired message');
    // The expired message was queued first, so it would have arrived before this one [MQTT-3.3.2-5].
    expect(second.received[0].payload).toBe('lasts');
    // The forwarded interval is what remains of the 60 s [MQTT-3.3.2-6].
    const remaining = second.received[0].properties?.messageExpiryInterval ?? 0;
    expect(remaining).toBeGreaterThan(50);
    expect(remaining).toBeLessThanOrEqual(58);
    await endClient(second.client);

    // Retained messages expire the same way.
    const reader = await connectCollecting(outpost.url, { protocolVersion: 5, clientId: 'rexp-reader' });
    await reader.client.subscribeAsync('rexp/#', { qos: 1 });
    await waitFor(() => reader.received.length >= 1, 5000, 'the unexpired retained message');
    await delay(300);
    expect(reader.received.map((message) => message.topic)).toEqual(['rexp/long']);
    const retainedRemaining = reader.received[0].properties?.messageExpiryInterval ?? 0;
    expect(retainedRemaining).toBeGreaterThan(50);
    expect(retainedRemaining).toBeLessThanOrEqual(58);
    await endClient(reader.client);
  }, 30_000);
});

describe('wills across kill -9', () => {
  it('publishes a delayed will after restart', async () => {
    let outpost = await OutpostProcess.start(configPath);
    const willClient = await connectCollecting(outpost.url, {
      protocolVersion: 5,
      clientId: 'will-client',
      clean: false,
      properties: { sessionExpiryInterval: 10 },
      will: { topic: 'will/t', payload: Buffer.from('gone'), qos: 1, retain: false, properties: { willDelayInterval: 3 } },
    });
    // SUBACK waits for the commit of everything written before it, the session and its will too.
    await willClient.client.subscribeAsync('will-client/commands', { qos: 1 });

    await outpost.stop('SIGKILL');
    await endClient(willClient.client, true);
    outpost = await OutpostProcess.start(configPath);
    const restartedAt = Date.now();

    const watcher = await connectCollecting(outpost.url, { protocolVersion: 5, clientId: 'will-watcher' });
    await watcher.client.subscribeAsync('will/t', { qos: 1 });
    await waitFor(() => watcher.received.length >= 1, 10_000, 'the will message');
    const publishedAfterMs = Date.now() - restartedAt;
    expect(watcher.received[0].payload).toBe('gone');
    // The will delay (3 s) runs from the restart, as the client counts as disconnected then.
    expect(publishedAfterMs).toBeGreaterThanOrEqual(2000);
    expect(publishedAfterMs).toBeLessThan(6000);
    await delay(300);
    expect(watcher.received).toHaveLength(1);
    await endClient(watcher.client);
  }, 30_000);

  it('keeps the will delay across a graceful stop', async () => {
    let outpost = await OutpostProcess.start(configPath);
    const willOptions = (clientId: string) => ({
      protocolVersion: 5 as const,
      clientId,
      clean: false,
      properties: { sessionExpiryInterval: 60 },
      will: { topic: `will/${clientId}`, payload: Buffer.from(`${clientId} gone`), qos: 1 as const, retain: false, properties: { willDelayInterval: 3 } },
    });
    const leaving = await connectCollecting(outpost.url, willOptions('leaving'));
    const returning = await connectCollecting(outpost.url, willOptions('returning'));
    await leaving.client.subscribeAsync('leaving/commands', { qos: 1 });
    await returning.client.subscribeAsync('returning/commands', { qos: 1 });

    // SIGTERM closes both connections without a DISCONNECT from the clients, so both wills are
    // due 3 s later, and the stopping broker stores when.
    const stoppedAt = Date.now();
    await outpost.stop('SIGTERM');
    await Promise.all([endClient(leaving.client, true), endClient(returning.client, true)]);
    outpost = await OutpostProcess.start(configPath);

    const watcher = await connectCollecting(outpost.url, { protocolVersion: 5, clientId: 'will-watcher' });
    await watcher.client.subscribeAsync('will/#', { qos: 1 });
    // A client that comes back before the delay ends cancels its will [MQTT-3.1.3-9].
    const back = await connectCollecting(outpost.url, { ...willOptions('returning'), will: undefined });
    expect(back.connack.sessionPresent).toBe(true);

    await waitFor(() => watcher.received.length >= 1, 10_000, 'the will of the client that did not return');
    const publishedAfterMs = Date.now() - stoppedAt;
    expect(watcher.received[0].topic).toBe('will/leaving');
    expect(publishedAfterMs).toBeGreaterThanOrEqual(2500);
    expect(publishedAfterMs).toBeLessThan(6000);
    await delay(500);
    expect(watcher.received.map((message) => message.topic)).toEqual(['will/leaving']);
    await endClient(back.client);
    await endClient(watcher.client);
  }, 30_000);
});
