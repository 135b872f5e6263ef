import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';

import { defaultConfig } from '../src/config/defaults.js';
import { ConfigError, loadConfigFile, parseConfig } from '../src/config/load.js';
import { renderExampleConfig } from '../src/config/example.js';
import { renderConfigReference } from '../src/config/reference.js';
import { configSchema } from '../src/config/schema.js';
import { array, integer, keyPaths, object, string, ValidationContext, INVALID } from '../src/config/schema-kit.js';

/** Listener fields that every parsed listener on 127.0.0.1 gets from the schema's defaults. */
const LISTENER_DEFAULTS = {
  host: '127.0.0.1',
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
};

const repoRoot = fileURLToPath(new URL('..', import.meta.url));

/** Parses `text` and returns the problems of the ConfigError it must throw. */
function problemsOf(text: string, fileName = 'outpost.yaml'): string[] {
  try {
    parseConfig(text, fileName);
  } catch (error: unknown) {
    if (error instanceof ConfigError) return error.problems;
    throw error;
  }
  throw new Error('parseConfig accepted the text, but a ConfigError was expected');
}

describe('parseConfig problems', () => {
  it('reports a value out of range with position and allowed range', () => {
    const text = ['listeners:', '  - port: 1883', 'limits:', '  max_packet_size: 10', ''].join('\n');
    expect(problemsOf(text)).toEqual([
      'outpost.yaml:4:20: limits.max_packet_size: 10 is below the minimum 20 (allowed: integer 20..268435455 bytes)',
    ]);
  });

  it('reports a value above the maximum', () => {
    expect(problemsOf('listeners:\n  - port: 70000\n')).toEqual([
      'outpost.yaml:2:11: listeners[0].port: 70000 is above the maximum 65535 (allowed: integer 0..65535)',
    ]);
  });

  it('reports a value of the wrong type', () => {
    expect(problemsOf('listeners:\n  - port: abc\n')).toEqual([
      'outpost.yaml:2:11: listeners[0].port: "abc" is not an integer (allowed: integer 0..65535)',
    ]);
  });

  it('reports a quoted number with a hint', () => {
    expect(problemsOf('listeners:\n  - port: "1884"\n')).toEqual([
      'outpost.yaml:2:11: listeners[0].port: the string "1884" is not an integer; remove the quotes (allowed: integer 0..65535)',
    ]);
  });

  it('reports a fraction where an integer is required', () => {
    expect(problemsOf('sys:\n  interval_seconds: 1.5\n')).toEqual([
      'outpost.yaml:2:21: sys.interval_seconds: 1.5 is not an integer (allowed: integer 0..2147483 seconds)',
    ]);
  });

  it('reports yes as a string, not a boolean', () => {
    expect(problemsOf('limits:\n  queue_qos0_messages: yes\n')).toEqual([
      'outpost.yaml:2:24: limits.queue_qos0_messages: "yes" is not a boolean; YAML 1.2 booleans are written true or false (allowed: true or false)',
    ]);
  });

  it('reports an unknown key with a suggestion', () => {
    expect(problemsOf('limits:\n  max_pakcet_size: 100\n')).toEqual([
      'outpost.yaml:2:3: limits.max_pakcet_size: unknown key; did you mean max_packet_size?',
    ]);
  });

  it('reports an unknown key without a close match', () => {
    expect(problemsOf('log:\n  colour: true\n')).toEqual(['outpost.yaml:2:3: log.colour: unknown key (allowed keys here: level)']);
  });

  it('points a misplaced key to its section', () => {
    expect(problemsOf('max_packet_size: 100\n')).toEqual([
      'outpost.yaml:1:1: max_packet_size: unknown key here; it belongs at listeners[].max_packet_size or limits.max_packet_size, so check the indentation',
    ]);
  });

  it('reports a bad enum value with a suggestion', () => {
    expect(problemsOf('log:\n  level: verbos\n')).toEqual([
      'outpost.yaml:2:10: log.level: "verbos" is not allowed (allowed: one of error, warn, info, debug)',
    ]);
    expect(problemsOf('log:\n  level: inf\n')).toEqual([
      'outpost.yaml:2:10: log.level: "inf" is not allowed; did you mean info? (allowed: one of error, warn, info, debug)',
    ]);
  });

  it('reports a key written without a value', () => {
    expect(problemsOf('listeners:\n  - port:\n')).toEqual([
      'outpost.yaml:2:10: listeners[0].port: no value given (allowed: integer 0..65535); remove the key to use the default 1883',
    ]);
  });

  it('reports an empty listener list', () => {
    expect(problemsOf('listeners: []\n')).toEqual([
      'outpost.yaml:1:12: listeners: the list has 0 items (allowed: list of at least 1 listener)',
    ]);
  });

  it('reports a section that is not a mapping', () => {
    expect(problemsOf('limits: 5\n')).toEqual(['outpost.yaml:1:9: limits: 5 is not a mapping of keys (allowed: mapping)']);
  });

  it('reports a document that is not a mapping', () => {
    expect(problemsOf('- 1\n')).toEqual(['outpost.yaml:1:1: top level: a list is not a mapping of keys (allowed: mapping)']);
  });

  it('reports an invalid host', () => {
    expect(problemsOf('listeners:\n  - host: "bad host!"\n')).toEqual([
      'outpost.yaml:2:11: listeners[0].host: "bad host!" is not a valid IP address or host name',
    ]);
  });

  it('reports duplicate listener names', () => {
    expect(problemsOf('listeners:\n  - name: a\n    port: 0\n  - name: a\n    port: 0\n')).toEqual([
      'outpost.yaml:4:5: listeners[1]: name "a" is already used by listeners[0]; each listener needs its own',
    ]);
  });

  it('collects every problem in file order', () => {
    const text = [
      'listeners:',
      '  - port: -1',
      '    protocol: mqttx',
      'log:',
      '  level: 3',
      'limits:',
      '  receive_maximum: 0',
      '  bogus: 1',
      '',
    ].join('\n');
    expect(problemsOf(text)).toEqual([
      'outpost.yaml:2:11: listeners[0].port: -1 is below the minimum 0 (allowed: integer 0..65535)',
      'outpost.yaml:3:15: listeners[0].protocol: "mqttx" is not allowed; did you mean mqtt? (allowed: one of mqtt, mqtts, ws, wss)',
      'outpost.yaml:5:10: log.level: 3 is not allowed (allowed: one of error, warn, info, debug)',
      'outpost.yaml:7:20: limits.receive_maximum: 0 is below the minimum 1 (allowed: integer 1..65535 messages)',
      expect.stringMatching(/^outpost\.yaml:8:3: limits\.bogus: unknown key \(allowed keys here: max_connections, /),
    ]);
  });

  it('reports a YAML syntax error with its line', () => {
    const problems = problemsOf('log:\n  level: [info\nlimits: {}\n');
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^outpost\.yaml:3:1: YAML syntax error: /);
  });

  it('reports a duplicate key as a YAML error', () => {
    expect(problemsOf('log: {}\nlog: {}\n')).toEqual(['outpost.yaml:2:1: YAML syntax error: Map keys must be unique']);
  });

  it('reports an unknown YAML tag', () => {
    expect(problemsOf('data_dir: !secret x\n')).toEqual(['outpost.yaml:1:11: YAML warning: Unresolved tag: !secret']);
  });

  it('reports a second YAML document', () => {
    expect(problemsOf('log: {}\n---\nlimits: {}\n')).toEqual([
      'outpost.yaml:2:1: YAML syntax error: the file contains more than one YAML document; remove the `---` line that starts the second',
    ]);
  });

  it('reports a key that is not a name', () => {
    expect(problemsOf('log:\n  ? [level]\n  : info\n')).toEqual([
      'outpost.yaml:2:5: log: a list is not a valid key; keys are plain names such as level',
    ]);
  });

  it('shortens a long value in messages', () => {
    const host = 'h_'.repeat(150);
    expect(problemsOf(`listeners:\n  - host: ${host}\n`)).toEqual([
      `outpost.yaml:2:11: listeners[0].host: ${JSON.stringify(host.slice(0, 60))}... (300 characters) is not a valid IP address or host name`,
    ]);
  });

  it('sets the stable error code', () => {
    try {
      parseConfig('limits: {max_topic_levels: 0}', 'a.yaml');
      expect.unreachable('parseConfig accepted max_topic_levels 0');
    } catch (error: unknown) {
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as ConfigError).code).toBe('ERR_CONFIG_INVALID');
      expect((error as ConfigError).message).toBe((error as ConfigError).problems.join('\n'));
    }
  });
});

describe('parseConfig defaults', () => {
  it('treats an empty file as all defaults', () => {
    expect(parseConfig('', 'empty.yaml')).toEqual(defaultConfig());
  });

  it('treats a file of comments as all defaults', () => {
    expect(parseConfig('# nothing set\n\n# at all\n', 'comments.yaml')).toEqual(defaultConfig());
  });

  it('treats an empty section as its defaults', () => {
    expect(parseConfig('limits:\nlog: {}\n', 'sections.yaml')).toEqual(defaultConfig());
  });

  it('fills in keys omitted in a section', () => {
    const config = parseConfig('limits:\n  max_packet_size: 2048\n', 'partial.yaml');
    expect(config.limits.max_packet_size).toBe(2048);
    expect(config.limits.max_inflight_messages).toBe(20);
    expect(config.log.level).toBe('info');
    expect(config.data_dir).toBe('./data');
  });

  it('fills in listener defaults and names', () => {
    const config = parseConfig('listeners:\n  - port: 0\n  - port: 1884\n    name: second\n  - {}\n', 'listeners.yaml');
    expect(config.listeners).toEqual([
      { ...LISTENER_DEFAULTS, name: 'listener-0', port: 0 },
      { ...LISTENER_DEFAULTS, name: 'second', port: 1884 },
      { ...LISTENER_DEFAULTS, name: 'listener-2', port: 1883 },
    ]);
  });

  it('derives allow_anonymous from the host', () => {
    const cases: [string, boolean][] = [
      ['127.0.0.1', true],
      ['127.10.20.30', true],
      ['::1', true],
      ['::ffff:127.0.0.1', true],
      ['localhost', true],
      ['LOCALHOST', true],
      ['0.0.0.0', false],
      ['::', false],
      ['192.168.1.10', false],
      ['128.0.0.1', false],
      ['broker.example', false],
    ];
    for (const [host, expected] of cases) {
      const config = parseConfig(`listeners:\n  - host: "${host}"\n`, 'hosts.yaml');
      expect(config.listeners[0]?.allow_anonymous, host).toBe(expected);
    }
  });

  it('keeps an explicit allow_anonymous', () => {
    const config = parseConfig('listeners:\n  - host: 0.0.0.0\n    allow_anonymous: true\n  - allow_anonymous: false\n', 'anon.yaml');
    expect(config.listeners.map((listener) => listener.allow_anonymous)).toEqual([true, false]);
  });

  it('reads values through YAML aliases', () => {
    const config = parseConfig('log: &shared\n  level: debug\nsys:\n  interval_seconds: &ten 0\nlimits:\n  topic_alias_maximum: *ten\n', 'alias.yaml');
    expect(config.log.level).toBe('debug');
    expect(config.limits.topic_alias_maximum).toBe(0);
  });
});

describe('defaultConfig', () => {
  it('matches the documented built-in defaults', () => {
    const config = defaultConfig();
    expect(config.listeners).toEqual([
      { ...LISTENER_DEFAULTS, name: 'default', port: 1883 },
    ]);
    expect(config.data_dir).toBe('./data');
    expect(config.log.level).toBe('info');
    expect(config.limits.max_session_expiry_seconds).toBe(4294967295);
    expect(config.sys.interval_seconds).toBe(10);
  });

  it('agrees with the listener field defaults', () => {
    const fromFields = parseConfig('listeners:\n  - name: default\n', 'fields.yaml');
    expect(defaultConfig()).toEqual(fromFields);
  });

  it('returns an independent copy each time', () => {
    const first = defaultConfig();
    const firstListener = first.listeners[0];
    if (firstListener === undefined) throw new Error('the default configuration has no listener');
    firstListener.port = 9999;
    first.limits.max_connections = 1;
    expect(defaultConfig().listeners[0]?.port).toBe(1883);
    expect(defaultConfig().limits.max_connections).toBe(1000);
  });
});

describe('loadConfigFile', () => {
  const directory = mkdtempSync(join(tmpdir(), 'outpost-config-'));
  afterAll(() => rmSync(directory, { recursive: true, force: true }));

  it('names the path of a missing file', () => {
    const path = join(directory, 'missing.yaml');
    expect(() => loadConfigFile(path)).toThrow(ConfigError);
    expect(() => loadConfigFile(path)).toThrow(`${path}: configuration file not found; check the path`);
  });

  it('rejects a directory', () => {
    expect(() => loadConfigFile(directory)).toThrow(`${directory}: is a directory, not a configuration file`);
  });

  it('names the file in problems', () => {
    const path = join(directory, 'bad.yaml');
    writeFileSync(path, '\n\nlimits:\n  max_topic_levels: 0\n');
    expect(() => loadConfigFile(path)).toThrow(`${path}:4:21: limits.max_topic_levels: 0 is below the minimum 1 (allowed: integer 1..65535)`);
  });

  it('loads an empty file as defaults', () => {
    const path = join(directory, 'empty.yaml');
    writeFileSync(path, '');
    expect(loadConfigFile(path)).toEqual(defaultConfig());
  });
});

describe('schema kit', () => {
  const schema = object(
    {
      id: string({ description: 'An id without default.' }),
      sizes: array(integer({ description: 'A size.', min: 1 }), { description: 'Sizes.', itemName: 'size', minItems: 2 }),
    },
    { description: 'A test object.' },
  );

  it('reports a missing required key', () => {
    const context = new ValidationContext(undefined);
    const result = schema.validateAbsent({ path: 'thing', offset: 4 }, context);
    expect(result).toBe(INVALID);
    expect(context.problems).toEqual([
      { offset: 4, path: 'thing.id', message: 'missing required key (allowed: string)' },
      { offset: 4, path: 'thing.sizes', message: 'missing required key (allowed: list of at least 2 sizes)' },
    ]);
  });

  it('lists key paths', () => {
    expect(keyPaths(schema)).toEqual(['id', 'sizes']);
    expect(keyPaths(configSchema)).toContain('listeners[].allow_anonymous');
    expect(keyPaths(configSchema)).toContain('limits.max_packet_size');
  });
});

describe('configuration docs', () => {
  it('docs/configuration.md matches the schema', () => {
    const committed = readFileSync(join(repoRoot, 'docs/configuration.md'), 'utf8');
    // On failure, run `npm run build && node scripts/gen-config-docs.mjs` and commit the result.
    expect(committed).toBe(renderConfigReference());
  });

  it('documents every key', () => {
    const reference = renderConfigReference();
    for (const path of keyPaths(configSchema)) expect(reference, path).toContain(`| \`${path}\` |`);
  });
});

describe('outpost.example.yaml', () => {
  const examplePath = join(repoRoot, 'outpost.example.yaml');

  it('is valid and equals the defaults', () => {
    expect(loadConfigFile(examplePath)).toEqual(defaultConfig());
  });

  it('matches the generator', () => {
    // On failure, run `npm run docs:config` and commit the result.
    expect(readFileSync(examplePath, 'utf8')).toBe(renderExampleConfig());
  });

  it('shows every key', () => {
    const text = readFileSync(examplePath, 'utf8');
    const examplePaths = new Set<string>();
    collectPaths(parseYaml(text), '', examplePaths);
    // Keys of lists that are empty by default appear in a commented-out example item.
    const missing = keyPaths(configSchema).filter((path) => {
      if (examplePaths.has(path)) return false;
      const key = path.split(/[.[\]]+/).filter((part) => part !== '').pop() ?? path;
      return !new RegExp(`^\\s*# (- )?${key}:`, 'm').test(text);
    });
    expect(missing).toEqual([]);
  });
});

/** Adds the key paths of a plain parsed YAML value to `paths`, list items written as `[]`. */
function collectPaths(value: unknown, prefix: string, paths: Set<string>): void {
  if (Array.isArray(value)) {
    for (const item of value) collectPaths(item, `${prefix}[]`, paths);
    return;
  }
  if (typeof value !== 'object' || value === null) return;
  for (const [key, child] of Object.entries(value)) {
    const path = prefix === '' ? key : `${prefix}.${key}`;
    paths.add(path);
    collectPaths(child, path, paths);
  }
}
