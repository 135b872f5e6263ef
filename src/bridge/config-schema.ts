/**
 * The `bridges` section of the configuration: connections to remote brokers with their topic
 * rules, outbox bounds and drain settings. src/config/schema.ts includes `bridgesSchema` as the
 * top-level key `bridges`.
 */

import { array, boolean, enumOf, integer, object, string, type Infer, type ObjectOutput } from '../config/schema-kit.js';
import { checkedObject, type ReportProblem } from '../field/schema-parts.js';
import { parseFilter } from '../mqtt/topic.js';
import { parseAddress } from './address.js';

const MAX_UINT16 = 65_535;
const MAX_UINT32 = 4_294_967_295;
const MAX_TIMER_MS = 2_147_483_647;

const NAME_FORMAT = {
  describe: 'name of letters, digits, `_`, `-` and `.`',
  test: (value: string): boolean => /^[A-Za-z0-9_.-]{1,64}$/.test(value),
};

const ADDRESS_FORMAT = {
  describe: '`host:port`, `host` or `[IPv6 address]:port`',
  test: (value: string): boolean => typeof parseAddress(value, 1883) !== 'string',
};

const topicRuleFields = {
  pattern: string({
    description:
      'Topic filter, as in Mosquitto\'s `topic` line. The local filter is `local_prefix` + `pattern` and the remote one `remote_prefix` + `pattern`. An empty pattern maps the single topic `local_prefix` to `remote_prefix`.',
    default: '#',
  }),
  direction: enumOf(['out', 'in', 'both'], {
    description: '`out` forwards local messages to the remote broker, `in` remote messages to the local router, `both` does both.',
    default: 'out',
  }),
  qos: integer({
    description:
      'Highest QoS on the link: outgoing messages are sent at the lower of their own QoS and this one, and inbound topics are subscribed with it.',
    default: 1,
    min: 0,
    max: 2,
  }),
  local_prefix: string({ description: 'Prefix of the topics on this gateway; removed before `remote_prefix` is added.', default: '' }),
  remote_prefix: string({ description: 'Prefix of the topics on the remote broker; removed before `local_prefix` is added.', default: '' }),
};

const topicRuleSchema = checkedObject(
  topicRuleFields,
  { description: 'One topic mapping, with the meaning of Mosquitto\'s `topic pattern direction qos local_prefix remote_prefix`.', name: 'topic rule' },
  checkTopicRule,
);

function checkTopicRule(rule: ObjectOutput<typeof topicRuleFields>, report: ReportProblem): void {
  if (rule.pattern === '' && (rule.local_prefix === '' || rule.remote_prefix === '')) {
    report('pattern', 'an empty pattern needs both local_prefix and remote_prefix, which are then the full topic names');
    return;
  }
  for (const [key, prefix] of [['local_prefix', rule.local_prefix], ['remote_prefix', rule.remote_prefix]] as const) {
    if (/[+#]/.test(prefix)) report(key, `the prefix ${JSON.stringify(prefix)} contains a wildcard; prefixes are plain topic levels`);
  }
  for (const prefix of [rule.local_prefix, rule.remote_prefix]) {
    const filter = prefix + rule.pattern;
    if (typeof parseFilter(filter, MAX_UINT16) === 'string' || filter.startsWith('$share/')) {
      report('pattern', `${JSON.stringify(filter)} (prefix + pattern) is not a valid topic filter`);
      return;
    }
  }
}

const tlsSchema = object(
  {
    enabled: boolean({ description: 'Connect to the remote broker over TLS.', default: false }),
    ca_file: string({ description: 'PEM file with the CA certificates the remote server certificate must chain to. Empty: Node.js\'s built-in CA list.', default: '' }),
    cert_file: string({ description: 'PEM file with the client certificate (and intermediates) for brokers that authenticate clients by certificate.', default: '' }),
    key_file: string({ description: 'PEM file with the private key of `cert_file`.', default: '' }),
    server_name: string({ description: 'Server name sent in SNI and checked against the certificate. Empty: the host of the address.', default: '' }),
    alpn: array(string({ description: 'ALPN protocol name.', minLength: 1 }), {
      description: 'ALPN protocol names offered in the handshake, e.g. `[x-amzn-mqtt-ca]` for AWS IoT Core on port 443.',
      itemName: 'protocol name',
      default: [],
    }),
    verify: boolean({
      description: 'Check the server certificate and its name. Turning it off makes the link open to interception; use it only for tests.',
      default: true,
    }),
  },
  { description: 'TLS toward the remote broker.', name: 'bridge tls' },
);

const outboxSchema = object(
  {
    max_messages: integer({ description: 'Messages the outbox may hold. 0 means no bound.', default: 1_000_000, min: 0, unit: 'messages' }),
    max_bytes: integer({
      description: 'Payload and topic bytes the outbox may hold. 0 means no bound.',
      default: 268_435_456,
      min: 0,
      unit: 'bytes',
    }),
    max_age_seconds: integer({
      description: 'Messages older than this are dropped from the outbox unsent. 0 means they never expire.',
      default: 604_800,
      min: 0,
      max: MAX_UINT32,
      unit: 'seconds',
    }),
    when_full: enumOf(['drop_oldest', 'reject_new'], {
      description:
        'What happens when a bound is reached: `drop_oldest` deletes the oldest unsent messages to make room; `reject_new` drops the new message, and a v5 publisher of a QoS 1/2 message gets reason 0x97 (Quota exceeded). Every dropped message is counted.',
      default: 'drop_oldest',
    }),
  },
  { description: 'Bounds of the durable outbox of this bridge.' },
);

const drainSchema = object(
  {
    max_inflight: integer({
      description: 'QoS 1/2 messages sent to the remote broker and not yet acknowledged. The remote\'s Receive Maximum (MQTT 5) lowers it.',
      default: 100,
      min: 1,
      max: MAX_UINT16,
      unit: 'messages',
    }),
    max_rate: integer({ description: 'Messages per second sent to the remote broker. 0 means no cap.', default: 0, min: 0, unit: 'messages per second' }),
    order: enumOf(['strict', 'live_first'], {
      description:
        '`strict` sends every message in the order it was accepted, the backlog first. `live_first` sends new messages at once and drains the backlog behind them, so the remote sees current values sooner but out of order.',
      default: 'strict',
    }),
    batch_size: integer({ description: 'Messages read from the outbox database in one query while the backlog drains.', default: 500, min: 1, max: 100_000, unit: 'messages' }),
  },
  { description: 'How the outbox is sent to the remote broker.' },
);

const messageIdSchema = object(
  {
    enabled: boolean({
      description: 'Add an MQTT 5 user property with a stable id to every forwarded message, so the cloud side can drop duplicates of a replay. MQTT 5 only.',
      default: false,
    }),
    property: string({ description: 'Name of the user property.', default: 'outpost-message-id', minLength: 1 }),
    gateway_id: string({ description: 'First part of the id, `<gateway_id>:<sequence>`. Empty: the bridge\'s `client_id`.', default: '' }),
  },
  { description: 'De-duplication id on forwarded messages.' },
);

const reconnectSchema = object(
  {
    base_ms: integer({ description: 'Wait before the first reconnect attempt; it doubles after each failed attempt.', default: 1000, min: 10, max: MAX_TIMER_MS, unit: 'milliseconds' }),
    max_ms: integer({ description: 'Maximum wait between reconnect attempts; each wait is drawn at random between half and all of the doubled value.', default: 60_000, min: 10, max: MAX_TIMER_MS, unit: 'milliseconds' }),
    connect_timeout_ms: integer({ description: 'Time the TCP and TLS handshake plus CONNACK may take.', default: 10_000, min: 100, max: MAX_TIMER_MS, unit: 'milliseconds' }),
    primary_probe_seconds: integer({
      description:
        'While connected to an address other than the first, try a TCP connection to the first this often, and move back to it when it accepts. 0 turns the probe off.',
      default: 60,
      min: 0,
      max: 2_147_483,
      unit: 'seconds',
    }),
  },
  { description: 'Reconnection to the remote broker.' },
);

const bridgeFields = {
  name: string({ description: 'Name of the bridge in logs, metrics and `$SYS/broker/connection/<name>/state`.', format: NAME_FORMAT }),
  addresses: array(string({ description: 'Address of the remote broker.', format: ADDRESS_FORMAT }), {
    description:
      'Remote brokers, tried in order. After a connection is lost the bridge starts again from the first, so it returns to the first address when that one is back. The port defaults to 1883, or 8883 with TLS.',
    itemName: 'address',
    minItems: 1,
  }),
  protocol_version: enumOf(['3.1.1', '5'], { description: 'MQTT version spoken to the remote broker.', default: '5' }),
  client_id: string({ description: 'Client id at the remote broker. Empty: `outpost-<name>`.', default: '' }),
  username: string({ description: 'User name at the remote broker. Empty: none.', default: '' }),
  password: string({ description: 'Password at the remote broker. Prefer `password_file`, which keeps it out of the configuration.', default: '' }),
  password_file: string({ description: 'File whose first line is the password; trailing spaces and the line end are removed. Overrides `password`.', default: '' }),
  keepalive_seconds: integer({ description: 'Keep alive sent in CONNECT; a PINGREQ goes out when the link is idle.', default: 60, min: 0, max: MAX_UINT16, unit: 'seconds' }),
  clean_start: boolean({
    description: 'Start a new session at the remote broker on every connection. With `false` the remote keeps inbound messages for the bridge while the link is down.',
    default: false,
  }),
  session_expiry_seconds: integer({
    description: 'Session Expiry Interval asked of an MQTT 5 remote broker when `clean_start` is false.',
    default: 86_400,
    min: 0,
    max: MAX_UINT32,
    unit: 'seconds',
  }),
  try_private: boolean({
    description:
      'With MQTT 3.1.1, tell the remote broker that this is a bridge (Mosquitto\'s bridge flag in the protocol level), so that it does not send messages back and keeps RETAIN as published. A remote that rejects it is retried without the flag.',
    default: true,
  }),
  upgrade_qos0: boolean({
    description:
      'Send QoS 0 messages to the remote broker at the rule\'s QoS, so that they too are acknowledged before they leave the outbox. Without it, a QoS 0 message leaves the outbox when it is written to the socket.',
    default: false,
  }),
  notification_topic: string({
    description:
      'Topic on the remote broker that gets a retained `1` when the bridge connects and, as its will, `0` when the link is lost (like Mosquitto\'s `notification_topic`). Empty: none.',
    default: '',
  }),
  tls: tlsSchema,
  topics: array(topicRuleSchema, { description: 'Topic rules; the first `out` rule that matches a message decides its remote topic and QoS.', itemName: 'topic rule', minItems: 1 }),
  outbox: outboxSchema,
  drain: drainSchema,
  message_id: messageIdSchema,
  reconnect: reconnectSchema,
};

const bridgeSchema = checkedObject(bridgeFields, { description: 'One bridge to a remote broker.', name: 'bridge' }, checkBridge);

function checkBridge(bridge: ObjectOutput<typeof bridgeFields>, report: ReportProblem): void {
  if (bridge.reconnect.max_ms < bridge.reconnect.base_ms) report('reconnect', `max_ms ${bridge.reconnect.max_ms} is below base_ms ${bridge.reconnect.base_ms}`);
  if ((bridge.tls.cert_file === '') !== (bridge.tls.key_file === '')) report('tls', 'cert_file and key_file go together; give both or neither');
  if (bridge.message_id.enabled && bridge.protocol_version !== '5') report('message_id', 'the message id is an MQTT 5 user property; set protocol_version to 5 or turn message_id off');
}

export const bridgesSchema = array(bridgeSchema, {
  description: 'Bridges to remote brokers, each with its own durable outbox.',
  itemName: 'bridge',
  default: [],
  unique: { describe: 'name', key: (bridge) => bridge.name },
});

export type BridgeConfig = Infer<typeof bridgeSchema>;
export type TopicRuleConfig = BridgeConfig['topics'][number];
