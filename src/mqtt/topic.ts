/** Topic name and topic filter rules of MQTT 3.1.1 section 4.7 and MQTT 5.0 section 4.7 and 4.8. */

export const SHARE_PREFIX = '$share/';

export type TopicProblem = 'empty' | 'wildcard' | 'null-character' | 'too-many-levels';

/** Returns what is wrong with a topic name used in PUBLISH, or null when it is valid. */
export function checkTopicName(topic: string, maxLevels: number): TopicProblem | null {
  if (topic.length === 0) return 'empty'; // [MQTT-4.7.3-1]
  let levels = 1;
  for (let i = 0; i < topic.length; i++) {
    const c = topic.charCodeAt(i);
    if (c === 0x2b || c === 0x23) return 'wildcard'; // '+' or '#' [MQTT-3.3.2-2]
    if (c === 0) return 'null-character'; // [MQTT-4.7.3-2]
    if (c === 0x2f) levels++;
  }
  if (levels > maxLevels) return 'too-many-levels';
  return null;
}

export interface ParsedFilter {
  /** The filter that is matched against topic names, without any `$share/group/` prefix. */
  filter: string;
  /** Share name of a shared subscription, or null for an ordinary one. */
  shareGroup: string | null;
}

export type FilterProblem = 'empty' | 'bad-wildcard' | 'null-character' | 'too-many-levels' | 'bad-share';

/** Splits a subscription filter into its share group and filter, or reports what is wrong. */
export function parseFilter(raw: string, maxLevels: number): ParsedFilter | FilterProblem {
  let filter = raw;
  let shareGroup: string | null = null;
  if (raw.startsWith(SHARE_PREFIX)) {
    const slash = raw.indexOf('/', SHARE_PREFIX.length);
    if (slash < 0) return 'bad-share';
    shareGroup = raw.slice(SHARE_PREFIX.length, slash);
    filter = raw.slice(slash + 1);
    // The share name is at least one character and contains no wildcard or '/' [MQTT-4.8.2-1],
    // and the filter after it is not empty [MQTT-4.8.2-2].
    if (shareGroup.length === 0 || /[+#]/.test(shareGroup) || filter.length === 0) return 'bad-share';
  }
  const problem = checkFilter(filter, maxLevels);
  if (problem !== null) return problem;
  return { filter, shareGroup };
}

function checkFilter(filter: string, maxLevels: number): FilterProblem | null {
  if (filter.length === 0) return 'empty'; // [MQTT-4.7.3-1]
  let levels = 1;
  for (let i = 0; i < filter.length; i++) {
    const c = filter.charCodeAt(i);
    if (c === 0) return 'null-character'; // [MQTT-4.7.3-2]
    if (c === 0x2f) {
      levels++;
      continue;
    }
    const startsLevel = i === 0 || filter.charCodeAt(i - 1) === 0x2f;
    const endsLevel = i === filter.length - 1 || filter.charCodeAt(i + 1) === 0x2f;
    // '#' must be the whole last level [MQTT-4.7.1-2], and '+' a whole level [MQTT-4.7.1-3].
    if (c === 0x23 && !(startsLevel && i === filter.length - 1)) return 'bad-wildcard';
    if (c === 0x2b && !(startsLevel && endsLevel)) return 'bad-wildcard';
  }
  if (levels > maxLevels) return 'too-many-levels';
  return null;
}

/**
 * Tells whether a valid topic filter matches a valid topic name. A filter that starts with a
 * wildcard never matches a topic that starts with '$' [MQTT-4.7.2-1].
 */
export function topicMatchesFilter(filter: string, topic: string): boolean {
  if (topic.charCodeAt(0) === 0x24 && (filter.charCodeAt(0) === 0x2b || filter.charCodeAt(0) === 0x23)) {
    return false;
  }
  let f = 0;
  let t = 0;
  while (f < filter.length) {
    const c = filter.charCodeAt(f);
    if (c === 0x23) return true; // '#' matches the rest, including the parent level
    if (c === 0x2b) {
      while (t < topic.length && topic.charCodeAt(t) !== 0x2f) t++;
      f++;
    } else {
      const fEnd = nextSlash(filter, f);
      const tEnd = nextSlash(topic, t);
      if (t > topic.length || fEnd - f !== tEnd - t || filter.slice(f, fEnd) !== topic.slice(t, tEnd)) {
        return false;
      }
      f = fEnd;
      t = tEnd;
    }
    // Both sides are now at a '/' or at their end.
    if (f >= filter.length) return t >= topic.length;
    if (t >= topic.length) {
      // "a/#" matches "a": the filter may end in "/#" here.
      return filter.length - f === 2 && filter.charCodeAt(f + 1) === 0x23;
    }
    f++;
    t++;
  }
  return t >= topic.length && f === filter.length;
}

function nextSlash(text: string, from: number): number {
  const i = text.indexOf('/', from);
  return i < 0 ? text.length : i;
}
