// Remote behaviour that Debian's mosquitto does not show on request: rejecting the bridge flag,
// going silent, rejecting messages, a lower Maximum QoS. A small scripted MQTT server on
// 127.0.0.1 plays the remote broker.

import net from 'node:net';
import mqttPacket, { type IConnectPacket, type IPublishPacket, type Packet } from 'mqtt-packet';
import { afterEach, describe, expect, it } from 'vitest';
import { connectMqttJs, endMqttJs } from './helpers/broker.js';
import { startBridgedBroker, type BridgedBroker } from './helpers/remote-mosquitto.js';
import { delay, waitFor } from './helpers/wait.js';

const cleanups: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** One client connection of the scripted server. */
interface ScriptedConnection {
  connect: IConnectPacket;
  /** The protocol level byte of CONNECT, with Mosquitto's bridge flag 0x80 if it was set. */
  protocolLevel: number;
  send(packet: Packet): void;
  socket: net.Socket;
}

type Script = (packet: Packet, connection: ScriptedConnection) => void;

/** A TCP server that parses MQTT packets and replies to them as `script` decides. */
async function scriptedRemote(script: Script): Promise<{ address: string; connections: ScriptedConnection[]; published: IPublishPacket[] }> {
  const connections: ScriptedConnection[] = [];
  const published: IPublishPacket[] = [];
  const server = net.createServer((socket) => {
    // The parser takes the protocol version from CONNECT and reports Mosquitto's bridge flag.
    const parser = mqttPacket.parser({ protocolVersion: 5 });
    let connection: ScriptedConnection | null = null;
    socket.on('error', () => undefined);
    socket.on('data', (data: Buffer) => parser.parse(data));
    parser.on('packet', (packet: Packet) => {
      if (packet.cmd === 'connect') {
        const version = packet.protocolVersion ?? 4;
        const bridgeFlag = (packet as IConnectPacket & { bridgeMode?: boolean }).bridgeMode === true;
        connection = {
          connect: packet,
          protocolLevel: version | (bridgeFlag ? 0x80 : 0),
          socket,
          send: (reply) => socket.write(mqttPacket.generate(reply, { protocolVersion: version })),
        };
        connections.push(connection);
      }
      if (connection === null) return;
      if (packet.cmd === 'publish') published.push(packet);
      script(packet, connection);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        for (const connection of connections) connection.socket.destroy();
        server.close(() => resolve());
      }),
  );
  const port = (server.address() as net.AddressInfo).port;
  return { address: `127.0.0.1:${port}`, connections, published };
}

async function bridged(itemYaml: string): Promise<BridgedBroker> {
  const instance = await startBridgedBroker(itemYaml);
  cleanups.push(() => instance.stop());
  return instance;
}

const FAST_RECONNECT = `reconnect:
  base_ms: 50
  max_ms: 200`;

describe('bridge against a scripted remote', () => {
  it('retries without a rejected bridge flag', async () => {
    const remote = await scriptedRemote((packet, connection) => {
      if (packet.cmd !== 'connect') return;
      // A 3.1.1 broker without bridge support: protocol level 0x84 is unacceptable.
      connection.send({ cmd: 'connack', returnCode: connection.protocolLevel & 0x80 ? 1 : 0, sessionPresent: false });
    });
    const outpost = await bridged(`name: cloud
addresses: ["${remote.address}"]
protocol_version: "3.1.1"
topics:
  - pattern: "#"
${FAST_RECONNECT}`);
    await waitFor(() => outpost.bridge.metrics().connected, 3000, 'the bridge to connect without the flag');
    expect(remote.connections.map((connection) => connection.protocolLevel)).toEqual([0x84, 0x04]);
  });

  it('keep alive timeout closes a silent link', async () => {
    const remote = await scriptedRemote((packet, connection) => {
      // Accepts CONNECT, then never replies to PINGREQ.
      if (packet.cmd === 'connect') connection.send({ cmd: 'connack', reasonCode: 0, sessionPresent: false });
    });
    const outpost = await bridged(`name: cloud
addresses: ["${remote.address}"]
keepalive_seconds: 1
topics:
  - pattern: "#"
${FAST_RECONNECT}`);
    await waitFor(() => outpost.bridge.metrics().connected, 3000, 'the bridge to connect');
    await waitFor(() => (outpost.bridge.metrics().lastError ?? '').includes('PINGREQ'), 4000, 'a keep alive timeout');
    expect(outpost.bridge.metrics().lastError).toMatch(/no answer to PINGREQ within 1.5 s/);
    await waitFor(() => remote.connections.length >= 2, 3000, 'a new connection');
  });

  it('rejected messages leave the outbox', async () => {
    const remote = await scriptedRemote((packet, connection) => {
      if (packet.cmd === 'connect') connection.send({ cmd: 'connack', reasonCode: 0, sessionPresent: false });
      // Not authorized for "denied/...", accepted otherwise.
      if (packet.cmd === 'publish') {
        connection.send({ cmd: 'puback', messageId: packet.messageId, reasonCode: packet.topic.startsWith('denied/') ? 0x87 : 0 });
      }
    });
    const outpost = await bridged(`name: cloud
addresses: ["${remote.address}"]
topics:
  - pattern: "#"
${FAST_RECONNECT}`);
    await waitFor(() => outpost.bridge.metrics().connected, 3000, 'the bridge to connect');
    const publisher = await connectMqttJs(outpost.test.url);
    cleanups.push(() => endMqttJs(publisher, true));
    await publisher.publishAsync('denied/a', 'x', { qos: 1 });
    await publisher.publishAsync('allowed/b', 'y', { qos: 1 });
    await waitFor(() => outpost.bridge.metrics().backlogMessages === 0, 3000, 'an empty outbox');
    const metrics = outpost.bridge.metrics();
    expect(metrics.rejected).toBe(1);
    expect(metrics.acknowledged).toBe(1);
    expect(remote.published.map((packet) => packet.topic)).toEqual(['denied/a', 'allowed/b']);
  });

  it('follows the remote Maximum QoS', async () => {
    const remote = await scriptedRemote((packet, connection) => {
      if (packet.cmd === 'connect') connection.send({ cmd: 'connack', reasonCode: 0, sessionPresent: false, properties: { maximumQoS: 1 } });
      if (packet.cmd === 'publish' && packet.qos === 1) connection.send({ cmd: 'puback', messageId: packet.messageId, reasonCode: 0 });
    });
    const outpost = await bridged(`name: cloud
addresses: ["${remote.address}"]
topics:
  - pattern: "#"
    qos: 2
${FAST_RECONNECT}`);
    await waitFor(() => outpost.bridge.metrics().connected, 3000, 'the bridge to connect');
    const publisher = await connectMqttJs(outpost.test.url);
    cleanups.push(() => endMqttJs(publisher, true));
    await publisher.publishAsync('m/1', 'two', { qos: 2 });
    await waitFor(() => outpost.bridge.metrics().backlogMessages === 0, 3000, 'an empty outbox');
    await delay(50);
    expect(remote.published.map((packet) => packet.qos)).toEqual([1]);
  });
});
