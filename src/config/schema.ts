/**
 * The configuration schema: the one definition from which the file is validated, the
 * `OutpostConfig` type is inferred and docs/configuration.md is generated.
 */

import { BlockList, isIP, isIPv4 } from 'node:net';

import { bridgesSchema } from '../bridge/config-schema.js';
import { fieldSchema } from '../field/config-schema.js';
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

const tlsSchema = object(
  {
    cert_file: string({
      description: 'PEM file with the server certificate, followed by any intermediate certificates. Re-read on SIGHUP.',
      default: '',
    }),
    key_file: string({
      description: 'PEM file with the private key of the server certificate. Re-read on SIGHUP.',
      default: '',
    }),
    ca_file: string({
      description: 'PEM file with the CA certificates that client certificates must chain to. Empty: Node.js\'s built-in CA list. Re-read on SIGHUP.',
      default: '',
    }),
    require_certificate: boolean({
      description: 'Require every client to present a certificate signed by a CA in `ca_file`; the TLS handshake fails otherwise.',
      default: false,
    }),
    use_identity_as_username: boolean({
      description:
        'Use the Common Name (CN) of the client certificate as the user name, ignoring the user name and password in CONNECT, like Mosquitto\'s option of the same name. Needs `require_certificate`.',
      default: false,
    }),
    use_subject_as_username: boolean({
      description:
        'Use the whole subject of the client certificate in RFC 2253 form (e.g. `CN=pump-7,O=Plant`) as the user name, like Mosquitto\'s option of the same name. Needs `require_certificate`.',
      default: false,
    }),
    min_version: enumOf(['TLSv1.2', 'TLSv1.3'], {
      description: 'Oldest TLS version accepted.',
      default: 'TLSv1.2',
    }),
    ciphers: string({
      description: 'OpenSSL cipher list for TLS 1.2 and older. Empty: Node.js\'s default list.',
      default: '',
    }),
  },
  { description: 'TLS settings of an `mqtts` or `wss` listener.', name: 'tls' },
);

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
    protocol: enumOf(['mqtt', 'mqtts', 'ws', 'wss'], {
      description:
        'Transport: `mqtt` is MQTT over plain TCP, `mqtts` MQTT over TLS, `ws` MQTT over WebSocket and `wss` MQTT over WebSocket over TLS (HTTPS). `mqtts` and `wss` need `tls.cert_file` and `tls.key_file`.',
      default: 'mqtt',
    }),
    path: string({
      description: 'URL path of the WebSocket endpoint (`ws` and `wss` only). Upgrade requests for other paths get HTTP 404.',
      default: '/mqtt',
      format: { describe: 'URL path starting with /', test: (value) => value.startsWith('/') && !/\s/.test(value) },
    }),
    tls: tlsSchema,
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
    password_file: string({
      description:
        'Mosquitto password file (as written by `mosquitto_passwd` or `outpost passwd`) that clients of this listener log in with. Empty: no password file, so only anonymous clients (if allowed), certificate identities and the auth plugin admit clients. Re-read on SIGHUP.',
      default: '',
    }),
    acl_file: string({
      description:
        'Mosquitto ACL file that limits which topics clients of this listener may publish, subscribe to and receive. Empty: every client may use every topic, except publishing to `$SYS`. Re-read on SIGHUP.',
      default: '',
    }),
    connection_rate: integer({
      description: 'New connections one source address may open per second on this listener (a burst of this size is allowed, then this rate). 0 turns the limit off.',
      min: 0,
      max: 100_000,
      unit: 'connections per second',
      derivedDefault: {
        describe: '`0` (off) when `host` is a loopback address, otherwise `20`',
        compute: ({ siblings }) => (typeof siblings.host === 'string' && isLoopbackHost(siblings.host) ? 0 : 20),
      },
    }),
    max_packet_size: integer({
      description: 'Largest MQTT packet accepted from a client of this listener. 0 uses `limits.max_packet_size`; a larger value is capped by it.',
      default: 0,
      min: 0,
      max: 268_435_455,
      unit: 'bytes',
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
    throttle_publishers: boolean({
      description:
        'Stop reading a client that publishes QoS 1 or 2 messages while an online subscriber of those messages has a long queue: half of `max_queued_messages` but at most 100 messages, or half of `max_queued_bytes`. Reading resumes when that queue is down to three quarters of the mark. A fast publisher then slows to the pace of its slowest subscriber instead of losing messages at the queue bound. A subscriber that acknowledges nothing for a second is not waited for. `false`: messages beyond the bound are dropped, as Mosquitto does.',
      default: true,
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
    max_client_buffer_bytes: integer({
      description:
        'Cap on the bytes buffered for all network clients together: partly received packets and data written but not yet sent. Checked once per second; above it, the clients with the largest buffers are disconnected (v5 reason 0x89) until the sum is below 90 % of the cap.',
      default: 67_108_864,
      min: 1_048_576,
      unit: 'bytes',
    }),
    max_retained_messages: integer({
      description: 'Maximum number of retained messages. A retained message on a new topic beyond it is delivered but not retained.',
      default: 100_000,
      min: 0,
    }),
    max_retained_bytes: integer({
      description: 'Maximum total payload size of retained messages. 0 means no limit.',
      default: 268_435_456,
      min: 0,
      unit: 'bytes',
    }),
  },
  { description: 'Bounds on connections, packets and per-client queues.' },
);

const persistenceSchema = object(
  {
    enabled: boolean({
      description:
        'Keep retained messages, sessions, subscriptions and queued messages in the SQLite database `outpost.db` in `data_dir`, so that they survive a restart.',
      default: true,
    }),
    batch_window_ms: integer({
      description:
        'Writes within this window are committed in one transaction, and QoS 1/2 acknowledgements wait for that commit. A longer window means fewer writes to the SD card and more latency.',
      default: 5,
      min: 0,
      max: 1000,
      unit: 'milliseconds',
    }),
    synchronous: enumOf(['full', 'normal'], {
      description:
        'SQLite synchronous mode. `full` syncs every commit, so an acknowledged message survives power loss. `normal` syncs at checkpoints only: fewer writes, and a power loss can lose the last commits (a process crash cannot).',
      default: 'full',
    }),
    max_database_bytes: integer({
      description:
        'Upper bound of the database file. When it is reached, QoS 1/2 messages are refused (v5 reason 0x97) until space is freed. 0 means no limit.',
      default: 1_073_741_824,
      min: 0,
      unit: 'bytes',
    }),
  },
  { description: 'Durable state in SQLite.' },
);

const authSchema = object(
  {
    plugin: string({
      description:
        'JavaScript module (an ES module or CommonJS file) exporting `authenticate` and/or `authorize` hooks that are asked before the listener\'s own settings; see docs/security.md. Empty: no plugin.',
      default: '',
    }),
    plugin_timeout_ms: integer({
      description: 'Time a plugin hook may take before `plugin_fallback` applies. The client\'s packets wait meanwhile.',
      default: 2000,
      min: 1,
      max: 60_000,
      unit: 'milliseconds',
    }),
    plugin_fallback: enumOf(['deny', 'defer', 'allow'], {
      description:
        'Decision when a plugin hook throws, rejects, times out or returns something other than true, false, undefined or null: `deny`, `defer` to the listener\'s own settings, or `allow`.',
      default: 'deny',
    }),
    login_delay_initial_ms: integer({
      description: 'Delay before a failed login is answered. Each further failure from the same address within 10 minutes doubles it. 0 turns the delay off.',
      default: 500,
      min: 0,
      max: 60_000,
      unit: 'milliseconds',
    }),
    login_delay_max_ms: integer({
      description: 'Upper bound of the failed-login delay.',
      default: 10_000,
      min: 0,
      max: 600_000,
      unit: 'milliseconds',
    }),
  },
  { description: 'Authentication settings shared by all listeners.' },
);

const httpSchema = object(
  {
    enabled: boolean({
      description:
        'Serve the operations endpoints over HTTP: `/metrics` (Prometheus text format), `/healthz` (200 when healthy, 503 with the reasons otherwise) and `/status` (JSON, read by `outpost status`).',
      default: false,
    }),
    host: string({
      description:
        'Address the operations endpoints bind. They have no authentication, so keep them on a loopback address unless a firewall or reverse proxy protects them.',
      default: '127.0.0.1',
      format: { describe: 'IP address or host name', test: isHostNameOrAddress },
    }),
    port: integer({
      description: 'TCP port of the operations endpoints. 0 picks a free port, which the `operations endpoint listening` log line reports.',
      default: 9183,
      min: 0,
      max: MAX_UINT16,
    }),
  },
  { description: 'HTTP endpoints for monitoring and `outpost status`.' },
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
        {
          name: 'default',
          host: '127.0.0.1',
          port: 1883,
          protocol: 'mqtt',
          path: '/mqtt',
          tls: {
            cert_file: '',
            key_file: '',
            ca_file: '',
            require_certificate: false,
            use_identity_as_username: false,
            use_subject_as_username: false,
            min_version: 'TLSv1.2',
            ciphers: '',
          },
          allow_anonymous: true,
          max_connections: 1000,
          password_file: '',
          acl_file: '',
          connection_rate: 0,
          max_packet_size: 0,
        },
      ],
    }),
    data_dir: string({
      description: 'Directory where the broker keeps its state. A relative path is taken from the working directory.',
      default: './data',
      minLength: 1,
    }),
    log: logSchema,
    limits: limitsSchema,
    persistence: persistenceSchema,
    auth: authSchema,
    sys: sysSchema,
    http: httpSchema,
    field: fieldSchema,
    bridges: bridgesSchema,
  },
  { description: 'The Outpost configuration file.' },
);

export type OutpostConfig = Infer<typeof configSchema>;
export type ListenerConfig = OutpostConfig['listeners'][number];
