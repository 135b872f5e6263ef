import type { MqttClient } from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { SecurityConfigError } from '../src/auth/access-control.js';
import type { AuthenticateRequest, AuthorizeRequest } from '../src/auth/plugin.js';
import { connectMqttJs, endMqttJs } from './helpers/broker.js';
import { createTempDir, passwordFileText, startSecureBroker, type SecureBroker, type TempDir } from './helpers/security.js';
import { waitFor } from './helpers/wait.js';

/**
 * A plugin as a user would write it. It records each request on globalThis, because the broker
 * imports it by file URL and the test cannot share a module instance with it.
 */
const PLUGIN = `
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const calls = (globalThis.outpostPluginCalls ??= []);

export async function authenticate(request) {
  calls.push({ hook: 'authenticate', ...request, password: request.password?.toString() });
  switch (request.username) {
    case 'plugin-user': return request.password?.toString() === 'plugin-pass';
    case 'slow': await sleep(5000); return true;
    case 'thrower': throw new Error('user database unreachable');
    case 'odd': return 'yes';
    default: return undefined;
  }
}

export async function authorize(request) {
  calls.push({ hook: 'authorize', ...request });
  if (request.topic.startsWith('plugin/deny')) return false;
  if (request.topic.startsWith('plugin/slow')) { await sleep(150); return true; }
  if (request.topic.startsWith('plugin/throw')) throw new Error('policy service down');
  if (request.topic === 'outside/acl') return true;
  return null;
}
`;

type RecordedCall = ({ hook: 'authenticate' } & Omit<AuthenticateRequest, 'password'> & { password: string | undefined }) | ({ hook: 'authorize' } & AuthorizeRequest);

function recordedCalls(): RecordedCall[] {
  const holder = globalThis as { outpostPluginCalls?: RecordedCall[] };
  holder.outpostPluginCalls ??= [];
  return holder.outpostPluginCalls;
}

let files: TempDir;
let pluginFile: string;
let passwordFile: string;
let aclFile: string;

beforeAll(async () => {
  files = await createTempDir();
  pluginFile = await files.write('plugin.mjs', PLUGIN);
  passwordFile = await files.write('passwd', await passwordFileText({ filed: 'filed-pass', thrower: 'thrower-pass' }));
  aclFile = await files.write('acl', 'pattern readwrite plugin/#\npattern readwrite acl/%u/#\n');
});

afterAll(async () => {
  await files.remove();
});

describe('auth plugin with fallback deny', () => {
  let tb: SecureBroker;
  let url: string;
  const clients: MqttClient[] = [];

  beforeAll(async () => {
    tb = await startSecureBroker(
      { listeners: [{ name: 'plant', allow_anonymous: false, password_file: passwordFile, acl_file: aclFile }] },
      { plugin: pluginFile, plugin_timeout_ms: 300, plugin_fallback: 'deny' },
    );
    url = `mqtt://127.0.0.1:${tb.ports[0]}`;
  });

  afterAll(async () => {
    await tb.stop();
  });

  afterEach(async () => {
    for (const client of clients.splice(0)) await endMqttJs(client, true);
    recordedCalls().length = 0;
  });

  async function connect(username: string, password: string | undefined, clientId: string): Promise<MqttClient> {
    const client = await connectMqttJs(url, { username, password, clientId, protocolVersion: 5 });
    clients.push(client);
    return client;
  }

  it('authenticate true admits a user unknown to the file', async () => {
    await connect('plugin-user', 'plugin-pass', 'p1');
    const call = recordedCalls().find((entry) => entry.hook === 'authenticate');
    expect(call).toMatchObject({ listener: 'plant', clientId: 'p1', username: 'plugin-user', password: 'plugin-pass', remoteAddress: '127.0.0.1' });
    expect(call?.hook === 'authenticate' ? call.certificate : 'missing').toBeUndefined();
  });

  it('authenticate false refuses with 0x87', async () => {
    await expect(connect('plugin-user', 'wrong', 'p2')).rejects.toThrow(/Not authorized/i);
  });

  it('undefined defers to the password file', async () => {
    await connect('filed', 'filed-pass', 'p3');
    await expect(connect('filed', 'nope', 'p4')).rejects.toThrow(/Bad User Name or Password/i);
  });

  it('a timeout applies the fallback', async () => {
    const started = Date.now();
    await expect(connect('slow', 'x', 'p5')).rejects.toThrow(/Not authorized/i);
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it('a throw applies the fallback', async () => {
    // thrower is in the password file, but the fallback deny wins over it.
    await expect(connect('thrower', 'thrower-pass', 'p6')).rejects.toThrow(/Not authorized/i);
  });

  it('a non-boolean answer applies the fallback', async () => {
    await expect(connect('odd', 'x', 'p7')).rejects.toThrow(/Not authorized/i);
  });

  it('authorize false refuses publish and subscribe', async () => {
    const client = await connect('filed', 'filed-pass', 'p8');
    await expect(client.subscribeAsync('plugin/deny/x')).rejects.toThrow(/Not authorized/i);
    await expect(client.publishAsync('plugin/deny/x', 'm', { qos: 1 })).rejects.toThrow(/Not authorized/i);
    const calls = recordedCalls().filter((entry) => entry.hook === 'authorize');
    expect(calls).toContainEqual({ hook: 'authorize', listener: 'plant', clientId: 'p8', username: 'filed', action: 'subscribe', topic: 'plugin/deny/x' });
    expect(calls).toContainEqual({ hook: 'authorize', listener: 'plant', clientId: 'p8', username: 'filed', action: 'publish', topic: 'plugin/deny/x' });
  });

  it('authorize true overrides the ACL', async () => {
    const client = await connect('filed', 'filed-pass', 'p9');
    const received: string[] = [];
    client.on('message', (topic) => received.push(topic));
    expect((await client.subscribeAsync('outside/acl'))[0]?.qos).toBe(0);
    await client.publishAsync('outside/acl', 'm', { qos: 1 });
    // Deliveries are still checked against the ACL file's read rules, which do not cover the topic.
    await client.publishAsync('plugin/marker', 'm', { qos: 1 });
    await client.subscribeAsync('plugin/marker');
    await client.publishAsync('plugin/marker', 'm', { qos: 1 });
    await waitFor(() => received.includes('plugin/marker'), 2000, 'message on plugin/marker');
    expect(received).toEqual(['plugin/marker']);
  });

  it('authorize null defers to the ACL', async () => {
    const client = await connect('filed', 'filed-pass', 'p10');
    expect((await client.subscribeAsync('acl/filed/#'))[0]?.qos).toBe(0);
    await expect(client.subscribeAsync('acl/other/#')).rejects.toThrow(/Not authorized/i);
  });

  it('authorize throw applies the fallback', async () => {
    const client = await connect('filed', 'filed-pass', 'p11');
    await expect(client.publishAsync('plugin/throw', 'm', { qos: 1 })).rejects.toThrow(/Not authorized/i);
  });

  it('packets keep their order while authorize runs', async () => {
    const subscriber = await connect('filed', 'filed-pass', 'p12');
    const received: string[] = [];
    subscriber.on('message', (_topic, payload) => received.push(payload.toString()));
    await subscriber.subscribeAsync('plugin/#');
    const publisher = await connect('filed', 'filed-pass', 'p13');
    // The first topic makes the plugin wait 150 ms; the second is decided at once.
    publisher.publish('plugin/slow/a', '1', { qos: 0 });
    publisher.publish('plugin/fast/b', '2', { qos: 0 });
    publisher.publish('plugin/slow/a', '3', { qos: 0 });
    await waitFor(() => received.length === 3, 3000, 'three messages');
    expect(received).toEqual(['1', '2', '3']);
    // The decision for a topic is cached for the connection: one call per topic.
    const slowCalls = recordedCalls().filter((entry) => entry.hook === 'authorize' && entry.clientId === 'p13' && entry.topic === 'plugin/slow/a');
    expect(slowCalls).toHaveLength(1);
  });
});

describe('auth plugin with fallback defer', () => {
  it('a throw defers to the password file', async () => {
    const tb = await startSecureBroker(
      { listeners: [{ allow_anonymous: false, password_file: passwordFile }] },
      { plugin: pluginFile, plugin_timeout_ms: 300, plugin_fallback: 'defer' },
    );
    try {
      const client = await connectMqttJs(`mqtt://127.0.0.1:${tb.ports[0]}`, { username: 'thrower', password: 'thrower-pass', clientId: 'd1' });
      await endMqttJs(client);
      await expect(connectMqttJs(`mqtt://127.0.0.1:${tb.ports[0]}`, { username: 'thrower', password: 'bad', clientId: 'd2' })).rejects.toThrow(
        /Bad username or password/i,
      );
    } finally {
      await tb.stop();
    }
  });
});

describe('auth plugin loading', () => {
  it('module without hooks stops the start', async () => {
    const empty = await files.write('empty.mjs', 'export const name = "nothing";\n');
    await expect(startSecureBroker({}, { plugin: empty })).rejects.toThrow(SecurityConfigError);
    await expect(startSecureBroker({}, { plugin: empty })).rejects.toThrow(/exports neither authenticate nor authorize/);
  });

  it('missing module stops the start', async () => {
    await expect(startSecureBroker({}, { plugin: '/nonexistent/plugin.mjs' })).rejects.toThrow(/auth\.plugin \/nonexistent\/plugin\.mjs: cannot load the module/);
  });

  it('default export object is accepted', async () => {
    const plugin = await files.write('default.mjs', 'export default { authenticate: async () => true };\n');
    const tb = await startSecureBroker({ listeners: [{ allow_anonymous: false }] }, { plugin });
    try {
      const client = await connectMqttJs(`mqtt://127.0.0.1:${tb.ports[0]}`, { username: 'anyone', password: 'x', clientId: 'default-export' });
      await endMqttJs(client);
    } finally {
      await tb.stop();
    }
  });
});
