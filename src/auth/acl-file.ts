/**
 * Mosquitto ACL files and the access checks made with them.
 *
 * The file format is Mosquitto's:
 * - `topic [read|write|readwrite|deny] FILTER` grants or denies access to the topics that FILTER
 *   matches; without an access word the rule grants readwrite.
 * - `user NAME` makes the `topic` lines that follow apply to that user. `topic` lines before the
 *   first `user` line apply to anonymous clients (no user name).
 * - `pattern [access] FILTER` applies to every client; `%c` in FILTER stands for the client id and
 *   `%u` for the user name. A pattern with `%u` does not apply to anonymous clients.
 * - Lines starting with `#` and blank lines are ignored.
 *
 * Outpost's decision rule: a matching `deny` rule wins over every grant, from `topic` lines and
 * patterns alike. Otherwise access needs a matching rule that grants it. Unlike Mosquitto 2.0,
 * which compares rules in file order with user rules before patterns, the order of lines does not
 * change the outcome.
 */

import { parseFilter, topicMatchesFilter } from '../mqtt/topic.js';

export type AclAccess = 'read' | 'write' | 'readwrite' | 'deny';

/** The access a check requests. */
export type AclAction = 'read' | 'write';

const ACCESS_WORDS: ReadonlySet<string> = new Set(['read', 'write', 'readwrite', 'deny']);

/** Topic levels allowed in a rule; enough for any real tree, and it bounds the per-rule work. */
const MAX_RULE_LEVELS = 1024;

export interface AclRule {
  readonly access: AclAccess;
  /** The filter as written; in a pattern it still contains `%c` and `%u`. */
  readonly filter: string;
  readonly usesClientId: boolean;
  readonly usesUsername: boolean;
  /** Line in the file, for log messages. */
  readonly line: number;
}

/** The client identity that rules are matched against. */
export interface AclSubject {
  readonly clientId: string;
  readonly username: string | undefined;
}

/** An ACL file that cannot be used; `problems` has one `file:line: message` item per problem. */
export class AclFileError extends Error {
  readonly code = 'ERR_ACL_FILE';

  constructor(readonly problems: string[]) {
    super(problems.join('\n'));
    this.name = 'AclFileError';
  }
}

/** The rules of one ACL file. */
export class AclRules {
  constructor(
    readonly anonymous: readonly AclRule[],
    readonly users: ReadonlyMap<string, readonly AclRule[]>,
    readonly patterns: readonly AclRule[],
  ) {}

  /** Tells whether `subject` may read (receive) or write (publish) `topic`. */
  allows(subject: AclSubject, action: AclAction, topic: string): boolean {
    let granted = false;
    for (const filter of this.applicableFilters(subject)) {
      if (filter === null) return false; // a pattern could not be applied safely
      if (!topicMatchesFilter(filter.filter, topic)) continue;
      if (filter.access === 'deny') return false;
      if (grants(filter.access, action)) granted = true;
    }
    return granted;
  }

  /**
   * Tells whether `subject` may subscribe to `filter`: some rule that grants read must overlap the
   * filter, and no deny rule may cover all of it. Messages on topics inside the filter that the
   * subject may not read are dropped at delivery by `allows`.
   */
  allowsSubscribe(subject: AclSubject, filter: string): boolean {
    let granted = false;
    for (const rule of this.applicableFilters(subject)) {
      if (rule === null) return false;
      if (rule.access === 'deny') {
        if (filterCovers(rule.filter, filter)) return false;
        continue;
      }
      if (grants(rule.access, 'read') && filtersOverlap(rule.filter, filter)) granted = true;
    }
    return granted;
  }

  /**
   * Yields the rules for `subject` with patterns filled in. It yields null for a pattern whose
   * client id or user name contains `+`, `#` or `/`, because substituted, such a value would widen
   * the rule or reach into another client's topics. The check then fails closed.
   */
  private *applicableFilters(subject: AclSubject): Generator<{ access: AclAccess; filter: string } | null> {
    const own = subject.username === undefined ? this.anonymous : this.users.get(subject.username) ?? [];
    for (const rule of own) yield rule;
    for (const rule of this.patterns) {
      if (rule.usesUsername && subject.username === undefined) continue;
      if (rule.usesClientId && UNSAFE_IN_PATTERN.test(subject.clientId)) {
        yield null;
        return;
      }
      if (rule.usesUsername && UNSAFE_IN_PATTERN.test(subject.username ?? '')) {
        yield null;
        return;
      }
      yield { access: rule.access, filter: substitute(rule.filter, subject) };
    }
  }
}

const UNSAFE_IN_PATTERN = /[+#/]/;

function grants(access: AclAccess, action: AclAction): boolean {
  return access === 'readwrite' || access === action;
}

function substitute(filter: string, subject: AclSubject): string {
  return filter.replace(/%[cu]/g, (token) => (token === '%c' ? subject.clientId : subject.username ?? ''));
}

/**
 * Parses the text of an ACL file. Throws AclFileError naming each bad line: an unknown keyword, a
 * missing filter, an invalid filter or a `%c`/`%u` outside a `pattern` line.
 */
export function parseAclFile(text: string, fileName: string): AclRules {
  const anonymous: AclRule[] = [];
  const users = new Map<string, AclRule[]>();
  const patterns: AclRule[] = [];
  const problems: string[] = [];
  let current: AclRule[] = anonymous;

  const lines = text.split('\n');
  for (let index = 0; index < lines.length; index++) {
    const line = lines[index].replace(/\r$/, '').trim();
    if (line === '' || line.startsWith('#')) continue;
    const where = `${fileName}:${index + 1}`;
    const [keyword, rest] = splitWord(line);

    if (keyword === 'user') {
      if (rest === '') {
        problems.push(`${where}: "user" needs a user name`);
        continue;
      }
      current = users.get(rest) ?? [];
      users.set(rest, current);
      continue;
    }
    if (keyword !== 'topic' && keyword !== 'pattern') {
      problems.push(`${where}: unknown keyword ${JSON.stringify(keyword)}; lines start with user, topic or pattern`);
      continue;
    }
    const rule = parseRule(keyword, rest, index + 1);
    if (typeof rule === 'string') {
      problems.push(`${where}: ${rule}`);
      continue;
    }
    (keyword === 'pattern' ? patterns : current).push(rule);
  }
  if (problems.length > 0) throw new AclFileError(problems);
  return new AclRules(anonymous, users, patterns);
}

function splitWord(text: string): [string, string] {
  const match = /^(\S+)\s*(.*)$/.exec(text);
  return match === null ? [text, ''] : [match[1], match[2].trim()];
}

/** Parses the part of a `topic` or `pattern` line after the keyword; returns a problem or the rule. */
function parseRule(keyword: 'topic' | 'pattern', text: string, line: number): AclRule | string {
  let [first, rest] = splitWord(text);
  let access: AclAccess = 'readwrite';
  if (ACCESS_WORDS.has(first)) {
    // Like Mosquitto, an access word with nothing after it is an error, not a topic named "read".
    if (rest === '') return `"${keyword} ${first}" needs a topic filter after the access word`;
    access = first as AclAccess;
  } else {
    // No access word: the whole rest of the line is the filter, which may contain spaces.
    rest = text;
    first = '';
  }
  const filter = rest;
  if (filter === '') return `"${keyword}" needs a topic filter, e.g. ${keyword} read sensors/#`;

  const usesClientId = filter.includes('%c');
  const usesUsername = filter.includes('%u');
  if (keyword === 'topic' && (usesClientId || usesUsername)) {
    return `%c and %u are replaced only in "pattern" lines; write "pattern ${first === '' ? '' : `${first} `}${filter}"`;
  }
  // Check the filter with stand-ins for the substitutions, which contain no wildcard.
  const checked = parseFilter(filter.replace(/%[cu]/g, 'x'), MAX_RULE_LEVELS);
  if (typeof checked === 'string') return `${JSON.stringify(filter)} is not a valid topic filter (${checked})`;
  if (checked.shareGroup !== null) return `${JSON.stringify(filter)}: a rule names topics, not a shared subscription ($share/...)`;
  return { access, filter, usesClientId, usesUsername, line };
}

/** Tells whether some topic name matches both filters. */
export function filtersOverlap(a: string, b: string): boolean {
  const left = a.split('/');
  const right = b.split('/');
  // A wildcard in the first level matches no topic starting with '$' [MQTT-4.7.2-1].
  if (startsWithDollar(left[0]) && isWildcard(right[0])) return false;
  if (startsWithDollar(right[0]) && isWildcard(left[0])) return false;
  for (let i = 0; ; i++) {
    const l = left[i];
    const r = right[i];
    if (l === '#' || r === '#') return true;
    // One filter ended while the other goes on without '#': their topics differ in length.
    if (l === undefined || r === undefined) return l === r;
    if (l !== '+' && r !== '+' && l !== r) return false;
  }
}

/** Tells whether every topic name that `inner` matches also matches `outer`. */
export function filterCovers(outer: string, inner: string): boolean {
  const o = outer.split('/');
  const n = inner.split('/');
  if (isWildcard(o[0]) && !isWildcard(n[0]) && startsWithDollar(n[0])) return false;
  for (let i = 0; ; i++) {
    const ol = o[i];
    const nl = n[i];
    // '#' also matches the parent level, so "a/#" covers "a".
    if (ol === '#') return true;
    if (ol === undefined || nl === undefined) return ol === nl;
    // inner '#' matches any depth below, which only an outer '#' (handled above) covers.
    if (nl === '#') return false;
    if (ol === '+') continue;
    if (nl === '+' || ol !== nl) return false;
  }
}

function isWildcard(level: string | undefined): boolean {
  return level === '+' || level === '#';
}

function startsWithDollar(level: string | undefined): boolean {
  return level !== undefined && level.startsWith('$');
}
