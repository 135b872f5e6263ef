import { writeFile } from 'node:fs/promises';
import type { IPubackPacket, IPublishPacket, ISubackPacket } from 'mqtt-packet';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { AclFileError, filterCovers, filtersOverlap, parseAclFile } from '../src/auth/acl-file.js';
import { SecurityConfigError } from '../src/auth/access-control.js';
import { RawClient, type ProtocolVersion } from './helpers/raw-client.js';
import { createTempDir, passwordFileText, startSecureBroker, type SecureBroker, type TempDir } from './helpers/security.js';

const ACL = `# Rules before the first user line apply to anonymous clients.
topic read public/#
topic write public/anon/#

user alice
topic readwrite plant/#
topic deny plant/secret/#
topic read $SYS/#

user bob
topic read plant/line1/+
topic write plant/line1/cmd
topic readwrite plant/shared/#

pattern readwrite clients/%c/#
pattern read users/%u/inbox
`;

describe('ACL file parsing', () => {
  it('parses users, anonymous rules and patterns', () => {
    const rules = parseAclFile(ACL, 'acl');
    expect(rules.anonymous.map((rule) => `${rule.access} ${rule.filter}`)).toEqual(['read public/#', 'write public/anon/#']);
    expect(rules.users.get('alice')?.length).toBe(3);
    expect(rules.users.get('bob')?.length).toBe(3);
    expect(rules.patterns.map((rule) => rule.filter)).toEqual(['clients/%c/#', 'users/%u/inbox']);
  });

  it('reads a rule without access word as readwrite', () => {
    const rules = parseAclFile('topic a/b c\n', 'acl');
    expect(rules.anonymous[0]?.access).toBe('readwrite');
    // The rest of the line is the filter, spaces included, as in Mosquitto.
    expect(rules.anonymous[0]?.filter).toBe('a/b c');
  });

  it('names the file and line of each bad line', () => {
    const text = 'user alice\ntopic read\nfrobnicate x\ntopic read a/#/b\ntopic read clients/%c\n';
    let caught: unknown;
    try {
      parseAclFile(text, 'site.acl');
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(AclFileError);
    const problems = (caught as AclFileError).problems;
    expect(problems).toHaveLength(4);
    expect(problems[0]).toMatch(/^site\.acl:2: "topic read" needs a topic filter after the access word/);
    expect(problems[1]).toMatch(/^site\.acl:3: unknown keyword "frobnicate"/);
    expect(problems[2]).toMatch(/^site\.acl:4: "a\/#\/b" is not a valid topic filter/);
    expect(problems[3]).toMatch(/^site\.acl:5: %c and %u are replaced only in "pattern" lines/);
  });
});

describe('ACL parser robustness', () => {
  it('random text parses or raises AclFileError', () => {
    // A fixed-seed generator keeps the 500 inputs the same in every run.
    let seed = 12345;
    const random = (): number => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed / 2147483648;
    };
    const pieces = ['topic ', 'pattern ', 'user ', 'read ', 'write ', 'deny ', 'readwrite ', '#', '+', '/', '%c', '%u', '$SYS', 'a', ' ', '\t', '\n', '\r\n', '\u0000', 'é'];
    for (let run = 0; run < 500; run++) {
      let text = '';
      const length = Math.floor(random() * 40);
      for (let i = 0; i < length; i++) text += pieces[Math.floor(random() * pieces.length)];
      try {
        const rules = parseAclFile(text, 'fuzz.acl');
        rules.allows({ clientId: 'c', username: 'u' }, 'read', 'a/b');
        rules.allowsSubscribe({ clientId: 'c', username: undefined }, '#');
      } catch (error) {
        expect(error, JSON.stringify(text)).toBeInstanceOf(AclFileError);
      }
    }
  });
});

describe('ACL decisions', () => {
  const rules = parseAclFile(ACL, 'acl');
  const alice = { clientId: 'a1', username: 'alice' };
  const bob = { clientId: 'dev1', username: 'bob' };
  const anonymous = { clientId: 'anon', username: undefined };

  const cases: Array<[string, { clientId: string; username: string | undefined }, 'read' | 'write', string, boolean]> = [
    ['user rule grants', alice, 'write', 'plant/line2/temp', true],
    ['deny wins over readwrite', alice, 'read', 'plant/secret/key', false],
    ['deny wins for write too', alice, 'write', 'plant/secret/key', false],
    ['read-only rule refuses write', bob, 'write', 'plant/line1/temp', false],
    ['read-only rule grants read', bob, 'read', 'plant/line1/temp', true],
    ['write-only rule refuses read', bob, 'read', 'plant/line1/cmd/x', false],
    ['no rule means no access', bob, 'read', 'plant/line2/temp', false],
    ['%c pattern matches own client id', bob, 'write', 'clients/dev1/status', true],
    ['%c pattern refuses another client id', bob, 'write', 'clients/dev2/status', false],
    ['%u pattern matches own user', alice, 'read', 'users/alice/inbox', true],
    ['%u pattern refuses another user', alice, 'read', 'users/bob/inbox', false],
    ['%u pattern skips anonymous', anonymous, 'read', 'users//inbox', false],
    ['anonymous rule grants read', anonymous, 'read', 'public/news', true],
    ['anonymous rule refuses write', anonymous, 'write', 'public/news', false],
    ['anonymous write rule', anonymous, 'write', 'public/anon/x', true],
    ['user rules do not apply to anonymous', anonymous, 'read', 'plant/line1/temp', false],
    ['$SYS needs a $ rule', alice, 'read', '$SYS/broker/uptime', true],
    ['# does not reach $SYS', bob, 'read', '$SYS/broker/uptime', false],
    ['wildcard client id fails closed', { clientId: 'x/#', username: 'bob' }, 'write', 'clients/x/#', false],
    ['client id with slash fails closed', { clientId: 'dev1/evil', username: 'bob' }, 'read', 'plant/line1/temp', false],
  ];
  for (const [name, subject, action, topic, expected] of cases) {
    it(name, () => {
      expect(rules.allows(subject, action, topic)).toBe(expected);
    });
  }

  it('deny wins whatever the line order', () => {
    const denyFirst = parseAclFile('topic deny a/b\ntopic readwrite a/#\n', 'acl');
    const denyLast = parseAclFile('topic readwrite a/#\ntopic deny a/b\n', 'acl');
    const subject = { clientId: 'c', username: undefined };
    expect(denyFirst.allows(subject, 'read', 'a/b')).toBe(false);
    expect(denyLast.allows(subject, 'read', 'a/b')).toBe(false);
    expect(denyLast.allows(subject, 'read', 'a/c')).toBe(true);
  });

  it('pattern deny beats a user grant', () => {
    const acl = parseAclFile('user u\ntopic readwrite a/#\npattern deny a/%u/#\n', 'acl');
    expect(acl.allows({ clientId: 'c', username: 'u' }, 'write', 'a/u/x')).toBe(false);
    expect(acl.allows({ clientId: 'c', username: 'u' }, 'write', 'a/v/x')).toBe(true);
  });

  it('subscribe needs an overlapping read grant', () => {
    expect(rules.allowsSubscribe(bob, 'plant/#')).toBe(true);
    expect(rules.allowsSubscribe(bob, 'plant/line1/+')).toBe(true);
    expect(rules.allowsSubscribe(bob, 'plant/line2/#')).toBe(false);
    expect(rules.allowsSubscribe(bob, '#')).toBe(true);
    expect(rules.allowsSubscribe(bob, '$SYS/#')).toBe(false);
    expect(rules.allowsSubscribe(alice, '$SYS/#')).toBe(true);
  });

  it('subscribe refused when a deny covers the filter', () => {
    expect(rules.allowsSubscribe(alice, 'plant/secret/#')).toBe(false);
    expect(rules.allowsSubscribe(alice, 'plant/secret/a/+')).toBe(false);
    // A deny inside a wider filter only filters deliveries.
    expect(rules.allowsSubscribe(alice, 'plant/#')).toBe(true);
  });
});

describe('filter relations', () => {
  const overlaps: Array<[string, string, boolean]> = [
    ['a/#', 'a', true],
    ['a/+', 'a', false],
    ['a/+/c', 'a/b/+', true],
    ['a/b', 'a/c', false],
    ['#', '$SYS/x', false],
    ['+/x', '$SYS/x', false],
    ['$SYS/#', '$SYS/broker/+', true],
    ['a/b/c', 'a/b', false],
    ['#', 'anything/at/all', true],
  ];
  for (const [a, b, expected] of overlaps) {
    it(`overlap ${a} and ${b}`, () => {
      expect(filtersOverlap(a, b)).toBe(expected);
      expect(filtersOverlap(b, a)).toBe(expected);
    });
  }

  const covers: Array<[string, string, boolean]> = [
    ['a/#', 'a', true],
    ['a/#', 'a/b/+', true],
    ['a/+', 'a/#', false],
    ['a/+', 'a/b', true],
    ['a/b', 'a/+', false],
    ['#', '$SYS/x', false],
    ['+/b', 'a/b', true],
    ['a/+/c', 'a/+/c', true],
    ['a/b', 'a/b/c', false],
  ];
  for (const [outer, inner, expected] of covers) {
    it(`${outer} covers ${inner}: ${expected}`, () => {
      expect(filterCovers(outer, inner)).toBe(expected);
    });
  }
});

describe('ACL enforced by the broker', () => {
  let files: TempDir;
  let aclFile: string;
  let tb: SecureBroker;
  const clients: RawClient[] = [];

  beforeAll(async () => {
    files = await createTempDir();
    aclFile = await files.write('acl', ACL);
    const passwordFile = await files.write('passwd', await passwordFileText({ alice: 'alice-pw', bob: 'bob-pw' }));
    tb = await startSecureBroker({
      listeners: [{ allow_anonymous: true, password_file: passwordFile, acl_file: aclFile }],
      sys: { interval_seconds: 60 },
    });
  });

  afterAll(async () => {
    await tb.stop();
    await files.remove();
  });

  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    await writeFile(aclFile, ACL);
    tb.broker.reloadSecurity();
  });

  async function connect(clientId: string, username: string | undefined, version: ProtocolVersion = 5): Promise<RawClient> {
    const client = await RawClient.connect(tb.ports[0] ?? 0, { protocolVersion: version });
    clients.push(client);
    const password = username === undefined ? undefined : Buffer.from(`${username}-pw`);
    const connack = await client.connectMqtt({ clientId, username, password });
    expect(version === 5 ? connack.reasonCode : connack.returnCode).toBe(0);
    return client;
  }

  async function subscribe(client: RawClient, topics: string[], messageId = 1): Promise<number[]> {
    client.send({ cmd: 'subscribe', messageId, subscriptions: topics.map((topic) => ({ topic, qos: 1 })) });
    const suback = (await client.expectPacket('suback')) as ISubackPacket;
    return suback.granted as number[];
  }

  async function publish(client: RawClient, topic: string, payload: string, options: { qos?: 0 | 1; retain?: boolean; messageId?: number } = {}): Promise<IPubackPacket | null> {
    const qos = options.qos ?? 1;
    client.send({ cmd: 'publish', topic, payload: Buffer.from(payload), qos, retain: options.retain ?? false, dup: false, messageId: qos > 0 ? options.messageId ?? 7 : undefined });
    if (qos === 0) return null;
    // A client subscribed to its own topic gets the message back before its PUBACK.
    for (;;) {
      const packet = await client.nextPacket();
      if (packet.cmd === 'puback') return packet;
      expect(packet.cmd).toBe('publish');
      receiveEarly(client, packet as IPublishPacket);
    }
  }

  const early = new Map<RawClient, string[]>();

  function receiveEarly(client: RawClient, packet: IPublishPacket): void {
    early.set(client, [...(early.get(client) ?? []), packet.topic]);
    if (packet.qos === 1) client.send({ cmd: 'puback', messageId: packet.messageId });
  }

  async function receivedTopics(client: RawClient, waitMs = 300): Promise<string[]> {
    const topics: string[] = early.get(client) ?? [];
    early.delete(client);
    const deadline = Date.now() + waitMs;
    for (;;) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) return topics;
      try {
        const packet = await client.nextPacket(remaining);
        if (packet.cmd === 'publish') {
          const publishPacket = packet as IPublishPacket;
          topics.push(publishPacket.topic);
          if (publishPacket.qos === 1) client.send({ cmd: 'puback', messageId: publishPacket.messageId });
        }
      } catch {
        return topics;
      }
    }
  }

  it('v5 SUBACK 0x87 for an unreadable filter', async () => {
    const bob = await connect('bob-sub-v5', 'bob');
    expect(await subscribe(bob, ['plant/line1/+', 'plant/line2/#', 'secret/#'])).toEqual([1, 0x87, 0x87]);
  });

  it('3.1.1 SUBACK 0x80 for an unreadable filter', async () => {
    const bob = await connect('bob-sub-v4', 'bob', 4);
    expect(await subscribe(bob, ['plant/line1/+', 'secret/#'])).toEqual([1, 0x80]);
  });

  it('subscription covered by deny is refused', async () => {
    const alice = await connect('alice-deny', 'alice');
    expect(await subscribe(alice, ['plant/secret/#', 'plant/#'])).toEqual([0x87, 1]);
  });

  it('v5 denied publish gets PUBACK 0x87 and is dropped', async () => {
    const alice = await connect('alice-watch', 'alice');
    expect(await subscribe(alice, ['plant/#'])).toEqual([1]);
    const bob = await connect('bob-pub-v5', 'bob');
    const puback = await publish(bob, 'plant/line1/temp', '21');
    expect(puback?.reasonCode).toBe(0x87);
    expect(await receivedTopics(alice)).toEqual([]);
  });

  it('3.1.1 denied publish is acknowledged and dropped', async () => {
    const alice = await connect('alice-watch-v4', 'alice');
    expect(await subscribe(alice, ['plant/#'])).toEqual([1]);
    const bob = await connect('bob-pub-v4', 'bob', 4);
    // 3.1.1 has no negative PUBACK, so the broker acknowledges and drops the message.
    const puback = await publish(bob, 'plant/line1/temp', '21');
    expect(puback?.cmd).toBe('puback');
    expect(puback?.reasonCode ?? 0).toBe(0);
    expect(await receivedTopics(alice)).toEqual([]);
  });

  it('allowed publish is delivered', async () => {
    const alice = await connect('alice-watch-2', 'alice');
    expect(await subscribe(alice, ['plant/line1/cmd'])).toEqual([1]);
    const bob = await connect('bob-cmd', 'bob');
    expect((await publish(bob, 'plant/line1/cmd', 'start'))?.reasonCode).toBe(0);
    expect(await receivedTopics(alice)).toEqual(['plant/line1/cmd']);
  });

  it('delivery skips topics the subscriber cannot read', async () => {
    const bob = await connect('bob-wide', 'bob');
    expect(await subscribe(bob, ['#'])).toEqual([1]);
    const alice = await connect('alice-pub', 'alice');
    await publish(alice, 'plant/line1/temp', '1', { messageId: 1 });
    await publish(alice, 'plant/line2/temp', '2', { messageId: 2 });
    await publish(alice, 'plant/shared/x', '3', { messageId: 3 });
    expect(await receivedTopics(bob)).toEqual(['plant/line1/temp', 'plant/shared/x']);
  });

  it('retained delivery follows read rules', async () => {
    const alice = await connect('alice-retain', 'alice');
    await publish(alice, 'plant/line1/level', 'r1', { retain: true, messageId: 1 });
    await publish(alice, 'plant/line2/level', 'r2', { retain: true, messageId: 2 });
    const bob = await connect('bob-retain', 'bob');
    expect(await subscribe(bob, ['plant/#'])).toEqual([1]);
    expect(await receivedTopics(bob)).toEqual(['plant/line1/level']);
    const watcher = await connect('alice-retain-2', 'alice');
    expect(await subscribe(watcher, ['plant/+/level'])).toEqual([1]);
    expect((await receivedTopics(watcher)).sort()).toEqual(['plant/line1/level', 'plant/line2/level']);
    await publish(alice, 'plant/line1/level', '', { retain: true, messageId: 3 });
    await publish(alice, 'plant/line2/level', '', { retain: true, messageId: 4 });
  });

  it('%c pattern lets a client use its own tree', async () => {
    const bob = await connect('dev1', 'bob');
    expect(await subscribe(bob, ['clients/dev1/#', 'clients/dev2/#'])).toEqual([1, 0x87]);
    expect((await publish(bob, 'clients/dev1/status', 'up', { messageId: 1 }))?.reasonCode).toBe(0);
    expect((await publish(bob, 'clients/dev2/status', 'up', { messageId: 2 }))?.reasonCode).toBe(0x87);
    expect(await receivedTopics(bob)).toEqual(['clients/dev1/status']);
  });

  it('%u pattern applies to users only', async () => {
    const alice = await connect('alice-inbox', 'alice');
    expect(await subscribe(alice, ['users/alice/inbox', 'users/bob/inbox'])).toEqual([1, 0x87]);
    const anonymous = await connect('anon-inbox', undefined);
    expect(await subscribe(anonymous, ['users/+/inbox'])).toEqual([0x87]);
  });

  it('anonymous clients get the rules before any user line', async () => {
    const anonymous = await connect('anon-1', undefined);
    expect(await subscribe(anonymous, ['public/#', 'plant/#'])).toEqual([1, 0x87]);
    expect((await publish(anonymous, 'public/anon/hello', 'hi', { messageId: 1 }))?.reasonCode).toBe(0);
    expect((await publish(anonymous, 'public/news', 'fake', { messageId: 2 }))?.reasonCode).toBe(0x87);
    expect(await receivedTopics(anonymous)).toEqual(['public/anon/hello']);
  });

  it('$SYS readable only with a $SYS rule', async () => {
    const alice = await connect('alice-sys', 'alice');
    expect(await subscribe(alice, ['$SYS/broker/version'])).toEqual([1]);
    expect(await receivedTopics(alice)).toEqual(['$SYS/broker/version']);
    const bob = await connect('bob-sys', 'bob');
    expect(await subscribe(bob, ['$SYS/#'])).toEqual([0x87]);
    const anonymous = await connect('anon-sys', undefined);
    expect(await subscribe(anonymous, ['$SYS/broker/version'])).toEqual([0x87]);
  });

  it('nobody publishes to $SYS even with a rule', async () => {
    await writeFile(aclFile, `${ACL}\nuser alice\ntopic readwrite $SYS/#\n`);
    expect(tb.broker.reloadSecurity().failed).toEqual([]);
    const alice = await connect('alice-sys-pub', 'alice');
    expect((await publish(alice, '$SYS/broker/version', 'fake'))?.reasonCode).toBe(0x87);
  });

  it('will topic needs write access', async () => {
    const will = (topic: string) => ({ topic, payload: Buffer.from('gone'), qos: 0 as const, retain: false });
    const refused = await RawClient.connect(tb.ports[0] ?? 0, { protocolVersion: 5 });
    clients.push(refused);
    const refusedConnack = await refused.connectMqtt({ clientId: 'bob-will-1', username: 'bob', password: Buffer.from('bob-pw'), will: will('plant/line2/x') });
    expect(refusedConnack.reasonCode).toBe(0x87);
    const refusedV4 = await RawClient.connect(tb.ports[0] ?? 0, { protocolVersion: 4 });
    clients.push(refusedV4);
    const refusedV4Connack = await refusedV4.connectMqtt({ clientId: 'bob-will-2', username: 'bob', password: Buffer.from('bob-pw'), will: will('$SYS/x') });
    expect(refusedV4Connack.returnCode).toBe(5);
    const accepted = await RawClient.connect(tb.ports[0] ?? 0, { protocolVersion: 5 });
    clients.push(accepted);
    const acceptedConnack = await accepted.connectMqtt({ clientId: 'bob-will-3', username: 'bob', password: Buffer.from('bob-pw'), will: will('plant/line1/cmd') });
    expect(acceptedConnack.reasonCode).toBe(0);
  });

  it('session of another user is not taken over', async () => {
    const alice = await RawClient.connect(tb.ports[0] ?? 0, { protocolVersion: 4 });
    clients.push(alice);
    expect((await alice.connectMqtt({ clientId: 'shared-id', clean: false, username: 'alice', password: Buffer.from('alice-pw') })).returnCode).toBe(0);
    expect(await subscribe(alice, ['plant/line2/#'])).toEqual([1]);
    await alice.disconnect();
    const publisher = await connect('alice-publisher', 'alice');
    await publish(publisher, 'plant/line2/queued', 'for alice only');

    const bob = await RawClient.connect(tb.ports[0] ?? 0, { protocolVersion: 4 });
    clients.push(bob);
    const connack = await bob.connectMqtt({ clientId: 'shared-id', clean: false, username: 'bob', password: Buffer.from('bob-pw') });
    expect(connack.returnCode).toBe(0);
    expect(connack.sessionPresent).toBe(false);
    expect(await receivedTopics(bob)).toEqual([]);
  });

  it('same user resumes its session', async () => {
    const first = await RawClient.connect(tb.ports[0] ?? 0, { protocolVersion: 4 });
    clients.push(first);
    expect((await first.connectMqtt({ clientId: 'own-id', clean: false, username: 'alice', password: Buffer.from('alice-pw') })).returnCode).toBe(0);
    expect(await subscribe(first, ['plant/line2/#'])).toEqual([1]);
    await first.disconnect();
    const publisher = await connect('alice-publisher-2', 'alice');
    await publish(publisher, 'plant/line2/queued', 'kept');

    const again = await RawClient.connect(tb.ports[0] ?? 0, { protocolVersion: 4 });
    clients.push(again);
    const connack = await again.connectMqtt({ clientId: 'own-id', clean: false, username: 'alice', password: Buffer.from('alice-pw') });
    expect(connack.sessionPresent).toBe(true);
    expect(await receivedTopics(again)).toEqual(['plant/line2/queued']);
  });

  it('reload applies a changed ACL file', async () => {
    const bob = await connect('bob-reload', 'bob');
    expect(await subscribe(bob, ['plant/line2/#'], 1)).toEqual([0x87]);
    await writeFile(aclFile, ACL.replace('topic read plant/line1/+', 'topic read plant/line1/+\ntopic read plant/line2/#'));
    const result = tb.broker.reloadSecurity();
    expect(result.failed).toEqual([]);
    expect(result.reloaded.some((line) => line.includes('ACL file'))).toBe(true);
    expect(await subscribe(bob, ['plant/line2/#'], 2)).toEqual([1]);
  });

  it('reload keeps old rules when the file is bad', async () => {
    await writeFile(aclFile, 'topic read\n');
    const result = tb.broker.reloadSecurity();
    expect(result.failed).toHaveLength(1);
    expect(result.failed[0]).toContain(':1:');
    const bob = await connect('bob-bad-reload', 'bob');
    expect(await subscribe(bob, ['plant/line1/+'])).toEqual([1]);
  });
});

describe('ACL file at start', () => {
  it('bad ACL file stops the start', async () => {
    const files = await createTempDir();
    try {
      const aclFile = await files.write('bad.acl', 'user alice\ntopic sometimes a/b\npattern read a/%x/#\ntopic read a/#/b\n');
      await expect(startSecureBroker({ listeners: [{ acl_file: aclFile }] })).rejects.toThrow(SecurityConfigError);
      await expect(startSecureBroker({ listeners: [{ acl_file: aclFile }] })).rejects.toThrow(/bad\.acl:4: "a\/#\/b" is not a valid topic filter/);
    } finally {
      await files.remove();
    }
  });

  it('missing ACL file stops the start', async () => {
    await expect(startSecureBroker({ listeners: [{ acl_file: '/nonexistent/outpost.acl' }] })).rejects.toThrow(
      /acl_file \/nonexistent\/outpost\.acl: file not found/,
    );
  });
});
