import type { QoS } from 'mqtt-packet';
import { topicMatchesFilter } from '../mqtt/topic.js';
import type { TopicRuleConfig } from './config-schema.js';

/**
 * One topic rule with the meaning of Mosquitto's bridge `topic` line (mosquitto.conf(5), 2.0):
 * the local filter is `local_prefix + pattern`, the remote one `remote_prefix + pattern`, and a
 * topic crosses the link by swapping one prefix for the other.
 */
export interface TopicRule {
  readonly direction: 'out' | 'in' | 'both';
  readonly qos: QoS;
  readonly localPrefix: string;
  readonly remotePrefix: string;
  readonly localFilter: string;
  readonly remoteFilter: string;
}

/** A message's topic and QoS after a rule mapped it across the link. */
export interface MappedTopic {
  topic: string;
  qos: QoS;
  /** The QoS of the rule that matched. */
  ruleQos: QoS;
}

export function buildRules(configs: readonly TopicRuleConfig[]): TopicRule[] {
  return configs.map((config) => ({
    direction: config.direction,
    qos: config.qos as QoS,
    localPrefix: config.local_prefix,
    remotePrefix: config.remote_prefix,
    localFilter: config.local_prefix + config.pattern,
    remoteFilter: config.remote_prefix + config.pattern,
  }));
}

export function isOutbound(rule: TopicRule): boolean {
  return rule.direction === 'out' || rule.direction === 'both';
}

export function isInbound(rule: TopicRule): boolean {
  return rule.direction === 'in' || rule.direction === 'both';
}

/**
 * Maps a local topic to its remote topic with the first outbound rule whose local filter matches;
 * returns null when no rule matches. The QoS is the lower of the message's and the rule's.
 */
export function mapOutbound(rules: readonly TopicRule[], topic: string, qos: QoS): MappedTopic | null {
  for (const rule of rules) {
    if (!isOutbound(rule) || !topicMatchesFilter(rule.localFilter, topic)) continue;
    return { topic: rule.remotePrefix + topic.slice(rule.localPrefix.length), qos: Math.min(qos, rule.qos) as QoS, ruleQos: rule.qos };
  }
  return null;
}

/** Maps a remote topic to its local topic with the first inbound rule that matches, or null. */
export function mapInbound(rules: readonly TopicRule[], topic: string): string | null {
  for (const rule of rules) {
    if (!isInbound(rule) || !topicMatchesFilter(rule.remoteFilter, topic)) continue;
    return rule.localPrefix + topic.slice(rule.remotePrefix.length);
  }
  return null;
}
