import { describe, expect, it } from 'vitest';
import { parseAddress } from '../src/bridge/address.js';
import { buildRules, mapInbound, mapOutbound } from '../src/bridge/topic-rules.js';
import { ConfigError, parseConfig } from '../src/config/load.js';
import { parseBridgeConfig } from './helpers/remote-mosquitto.js';

/** Builds the rules of a bridge from YAML topic rule items. */
function rules(topicsYaml: string) {
  return buildRules(parseBridgeConfig(`name: b\naddresses: ["127.0.0.1:1"]\ntopics:\n${topicsYaml}`).topics);
}

function problems(yaml: string): string[] {
  try {
    parseConfig(yaml, 'test.yaml');
  } catch (error) {
    if (error instanceof ConfigError) return error.problems;
    throw error;
  }
  return [];
}

describe('bridge topic rules', () => {
  it('maps like Mosquitto topic # out 1 local/ remote/', () => {
    const mapped = rules('  - pattern: "#"\n    direction: out\n    qos: 1\n    local_prefix: local/\n    remote_prefix: remote/');
    expect(mapped[0]?.localFilter).toBe('local/#');
    expect(mapped[0]?.remoteFilter).toBe('remote/#');
    expect(mapOutbound(mapped, 'local/a/b', 2)).toEqual({ topic: 'remote/a/b', qos: 1, ruleQos: 1 });
    expect(mapOutbound(mapped, 'local/a', 0)).toEqual({ topic: 'remote/a', qos: 0, ruleQos: 1 });
    expect(mapOutbound(mapped, 'other/a', 1)).toBeNull();
    expect(mapInbound(mapped, 'remote/a')).toBeNull();
  });

  it('maps an empty pattern as one full topic', () => {
    const mapped = rules('  - pattern: ""\n    direction: both\n    qos: 0\n    local_prefix: plant/line1/state\n    remote_prefix: fleet/gw-1/state');
    expect(mapOutbound(mapped, 'plant/line1/state', 1)).toEqual({ topic: 'fleet/gw-1/state', qos: 0, ruleQos: 0 });
    expect(mapInbound(mapped, 'fleet/gw-1/state')).toBe('plant/line1/state');
    expect(mapOutbound(mapped, 'plant/line1/state/x', 1)).toBeNull();
  });

  it('maps inbound topics by swapping prefixes', () => {
    const mapped = rules('  - pattern: "sensors/+"\n    direction: in\n    qos: 1\n    remote_prefix: cloud/');
    expect(mapped[0]?.remoteFilter).toBe('cloud/sensors/+');
    expect(mapInbound(mapped, 'cloud/sensors/t1')).toBe('sensors/t1');
    expect(mapInbound(mapped, 'cloud/sensors/t1/x')).toBeNull();
    expect(mapOutbound(mapped, 'sensors/t1', 1)).toBeNull();
  });

  it('uses the first matching out rule', () => {
    const mapped = rules(
      '  - pattern: "alarm/#"\n    qos: 2\n    remote_prefix: urgent/\n  - pattern: "#"\n    qos: 0\n    remote_prefix: bulk/',
    );
    expect(mapOutbound(mapped, 'alarm/fire', 2)).toEqual({ topic: 'urgent/alarm/fire', qos: 2, ruleQos: 2 });
    expect(mapOutbound(mapped, 'meter/1', 2)).toEqual({ topic: 'bulk/meter/1', qos: 0, ruleQos: 0 });
  });
});

describe('bridge configuration', () => {
  it('fills in the defaults', () => {
    const config = parseBridgeConfig('name: cloud\naddresses: ["broker.example.com"]\ntopics:\n  - pattern: "#"');
    expect(config.protocol_version).toBe('5');
    expect(config.topics[0]).toEqual({ pattern: '#', direction: 'out', qos: 1, local_prefix: '', remote_prefix: '' });
    expect(config.outbox).toEqual({ max_messages: 1_000_000, max_bytes: 268_435_456, max_age_seconds: 604_800, when_full: 'drop_oldest' });
    expect(config.drain.order).toBe('strict');
    expect(config.tls.verify).toBe(true);
    expect(config.message_id.enabled).toBe(false);
  });

  it('has no bridges by default', () => {
    expect(parseConfig('', 'empty.yaml').bridges).toEqual([]);
  });

  it.each([
    ['an empty pattern without prefixes', 'topics:\n      - pattern: ""', /empty pattern needs both/],
    ['a wildcard in a prefix', 'topics:\n      - pattern: "#"\n        local_prefix: "a/+/"', /contains a wildcard/],
    ['a message id with MQTT 3.1.1', 'protocol_version: "3.1.1"\n    message_id:\n      enabled: true\n    topics:\n      - pattern: "#"', /MQTT 5 user property/],
    ['a certificate without its key', 'tls:\n      cert_file: /c.pem\n    topics:\n      - pattern: "#"', /cert_file and key_file go together/],
    ['a bad direction', 'topics:\n      - pattern: "#"\n        direction: sideways', /not allowed/],
  ])('rejects %s', (_case, extra, message) => {
    const found = problems(`bridges:\n  - name: cloud\n    addresses: ["127.0.0.1:1883"]\n    ${extra}\n`);
    expect(found.join('\n')).toMatch(message);
  });

  it('rejects an address with a bad port', () => {
    const found = problems('bridges:\n  - name: cloud\n    addresses: ["host:99999"]\n    topics:\n      - pattern: "#"\n');
    expect(found.join('\n')).toMatch(/bridges\[0\]\.addresses\[0\]/);
  });

  it('rejects two bridges with one name', () => {
    const bridge = '  - name: cloud\n    addresses: ["127.0.0.1"]\n    topics:\n      - pattern: "#"\n';
    expect(problems(`bridges:\n${bridge}${bridge}`).join('\n')).toMatch(/name "cloud" is already used/);
  });

  it('parses addresses', () => {
    expect(parseAddress('broker.example.com', 8883)).toEqual({ host: 'broker.example.com', port: 8883 });
    expect(parseAddress('10.0.0.1:1884', 1883)).toEqual({ host: '10.0.0.1', port: 1884 });
    expect(parseAddress('[::1]:1883', 1)).toEqual({ host: '::1', port: 1883 });
    expect(parseAddress('::1', 1883)).toMatch(/brackets/);
    expect(parseAddress('host:0', 1883)).toMatch(/not in 1..65535/);
  });
});
