/**
 * The configuration schema: the one definition from which the file is validated, the
 * `OutpostConfig` type is inferred and docs/configuration.md is generated.
 */

import { BlockList, isIP, isIPv4 } from 'node:net';

import { LOG_LEVELS } from '../service/logger.js';
import { array, boolean, enumOf, integer, object, string, type Infer } from './schema-kit.js';

// Node.js timers overflow above 2^31 - 1 milliseconds and then fire after 1 ms instead.
const MAX_TIMER_SECONDS = 2_147_483;

const MAX_UINT16 = 65_535;
const MAX_UINT32 = 4_294_967_295;

const loopbackAddresses = new BlockList();
loopbackAddresses.addSubnet('127.0.0.0', 8, 'ipv4');
loopbackAddresses.addAddress('::1', 'ipv6');

/** Tells whether `host` is `localhost` or an address in 127.0.0.0/8 or ::1 (also IPv4-mapped). */
export function isLoopbackHost(host: string): boolean {
  if (host.toLowerCase() === 'localhost') return true;
  const family = isIP(host);
  if (family === 0) return false;
  return loopbackAddresses.check(host, isIPv4(host) ? 'ipv4' : 'ipv6');
}

const HOST_NAME_LABEL = /^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$/;

function isHostNameOrAddress(host: string): boolean {
  if (isIP(host) !== 0) return true;
  return host.length <= 253 && host.split('.').every((label) => HOST_NAME_LABEL.test(label));
}

const listenerSchema = object(
  {
    name: string({
      description: 'Name of the listener in log lines.',
      minLength: 1,
      derivedDefault: {
        describe: '`listener-<index>`, e.g. `listener-0` for the first listener',
        compute: ({ index }) => `listener-${index ?? 0}`,
      },
    }),
    host: string({
      description: 'Address to bind. `0.0.0.0` or `::` accepts connections on every interface.',
      default: '127.0.0.1',
      format: { describe: 'IP address or host name', test: isHostNameOrAddress },
    }),
    port: integer({
      description: 'TCP port to listen on. 0 picks a free port, which the `listening` log line reports.',
      default: 1883,
      min: 0,
      max: MAX_UINT16,
    }),
    protocol: enumOf(['mqtt'], {
      description: 'Transport: `mqtt` is MQTT over plain TCP.',
      default: 'mqtt',
    }),
    allow_anonymous: boolean({
      description: 'Accept clients that connect without a user name.',
      derivedDefault: {
        describe: '`true` when `host` is a loopback address (127.0.0.0/8, ::1 or localhost), otherwise `false`',
        compute: ({ siblings }) => typeof siblings.host === 'string' && isLoopbackHost(siblings.host),
      },
    }),
    max_connections: integer({
      description: 'Maximum number of clients connected through this listener at once. 0 leaves only the broker-wide `limits.max_connections`.',
      default: 1000,
      min: 0,
    }),
  },
  { description: 'One network endpoint that accepts MQTT clients.', name: 'listener' },
);

const logSchema = object(
  {
    level: enumOf(LOG_LEVELS, {
      description: 'Lowest level written to the log. `outpost -v` overrides it with `debug`.',
      default: 'info',
    }),
  },
  { description: 'Logging. Lines go to standard error, or to the journal under systemd.' },
);

const limitsSchema = object(
  {
    max_connections: integer({
      description: 'Maximum number of clients connected to the broker at once, over all listeners.',
      default: 1000,
      min: 1,
    }),
    max_packet_size: integer({
      description: 'Largest MQTT packet accepted from or sent to a client, in both directions.',
      default: 1_048_576,
      min: 20,
      max: 268_435_455,
      unit: 'bytes',
    }),
    max_inflight_messages: integer({
      description: 'Outgoing QoS 1 and 2 messages per client that may await acknowledgement at once.',
      default: 20,
      min: 1,
      max: MAX_UINT16,
      unit: 'messages',
    }),
    receive_maximum: integer({
      description: 'Incoming QoS 1 and 2 messages per client that may await completion at once.',
      default: 100,
      min: 1,
      max: MAX_UINT16,
      unit: 'messages',
    }),
    max_queued_messages: integer({
      description: 'Messages per client that may wait beyond the inflight window.',
      default: 1000,
      min: 0,
      unit: 'messages',
    }),
    max_queued_bytes: integer({
      description: 'Payload bytes per client that may wait in its queue.',
      default: 4_194_304,
      min: 0,
      unit: 'bytes',
    }),
    queue_qos0_messages: boolean({
      description: 'Queue QoS 0 messages for persistent sessions whose client is offline.',
      default: false,
    }),
    max_topic_levels: integer({
      description: 'Maximum number of levels (parts between `/`) in a topic name or filter.',
      default: 64,
      min: 1,
      max: MAX_UINT16,
    }),
    max_keepalive: integer({
      description: 'Largest keep alive a client may use. MQTT 5 clients that request more get this value as Server Keep Alive.',
      default: MAX_UINT16,
      min: 1,
      max: MAX_UINT16,
      unit: 'seconds',
    }),
    connect_timeout_seconds: integer({
      description: 'Time a new connection has to send CONNECT before it is closed.',
      default: 10,
      min: 1,
      max: MAX_TIMER_SECONDS,
      unit: 'seconds',
    }),
    drain_timeout_seconds: integer({
      description: 'Time a client may leave its socket unread while data waits for it before it is disconnected.',
      default: 30,
      min: 1,
      max: MAX_TIMER_SECONDS,
      unit: 'seconds',
    }),
    topic_alias_maximum: integer({
      description: 'Number of inbound topic aliases an MQTT 5 client may use. 0 disables topic aliases.',
      default: 10,
      min: 0,
      max: MAX_UINT16,
    }),
    max_session_expiry_seconds: integer({
      description: 'Cap on the session expiry interval a client requests. 4294967295 means a session never expires.',
      default: MAX_UINT32,
      min: 0,
      max: MAX_UINT32,
      unit: 'seconds',
    }),
  },
  { description: 'Bounds on connections, packets and per-client queues.' },
);

const sysSchema = object(
  {
    interval_seconds: integer({
      description: 'Interval between `$SYS/broker/...` status publications. 0 turns `$SYS` off.',
      default: 10,
      min: 0,
      max: MAX_TIMER_SECONDS,
      unit: 'seconds',
    }),
  },
  { description: 'Broker status topics under `$SYS/`.' },
);

export const configSchema = object(
  {
    listeners: array(listenerSchema, {
      description: 'Network endpoints that accept MQTT clients.',
      itemName: 'listener',
      minItems: 1,
      unique: { describe: 'name', key: (listener) => listener.name },
      default: [
        { name: 'default', host: '127.0.0.1', port: 1883, protocol: 'mqtt', allow_anonymous: true, max_connections: 1000 },
      ],
    }),
    data_dir: string({
      description: 'Directory where the broker keeps its state. A relative path is taken from the working directory.',
      default: './data',
      minLength: 1,
    }),
    log: logSchema,
    limits: limitsSchema,
    sys: sysSchema,
  },
  { description: 'The Outpost configuration file.' },
);

export type OutpostConfig = Infer<typeof configSchema>;
export type ListenerConfig = OutpostConfig['listeners'][number];
