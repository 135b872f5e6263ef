/**
 * The one place where the broker checks who may connect and what a client may do. It keeps the
 * password and ACL files of every listener, the auth plugin and the failed-login delay.
 *
 * Decision order for a login: the plugin's `authenticate` (when configured and it returns true or
 * false), then the client certificate identity (`tls.use_identity_as_username`), then the password
 * file, then `allow_anonymous`. For PUBLISH and SUBSCRIBE: the plugin's `authorize`, then the
 * ACL file. Deliveries to subscribers, retained ones included, are checked against the ACL file
 * only, because routing does not wait for a plugin.
 */

import { readFileSync } from 'node:fs';
import type { IPublishPacket, ISubscribePacket, Packet } from 'mqtt-packet';

import type { ListenerConfig, OutpostConfig } from '../config/schema.js';
import { ReasonCode } from '../mqtt/reason-codes.js';
import { SHARE_PREFIX } from '../mqtt/topic.js';
import type { Logger } from '../service/logger.js';
import { checkTlsSettings, type CertificateIdentity } from '../transport/tls.js';
import { AclFileError, parseAclFile, type AclRules, type AclSubject } from './acl-file.js';
import { LoginDelay } from './login-delay.js';
import {
  parsePasswordFile,
  PasswordFileError,
  UNKNOWN_USER_HASH,
  VerifiedLoginCache,
  verifyPassword,
  type PasswordEntry,
} from './password-file.js';
import { loadPlugin, PluginLoadError, type HookDecision, type LoadedPlugin } from './plugin.js';

/** The fields of a network connection that access decisions use. */
export interface ClientConnection {
  readonly id: number;
  readonly listener: ListenerConfig;
  readonly clientId: string;
  readonly username: string | undefined;
  readonly remoteIp: string;
  readonly certificate: CertificateIdentity | null;
  readonly incomingAliases: ReadonlyMap<number, string> | null;
}

/** The result of a login check. */
export interface AuthOutcome {
  /** 0 to accept, or the v5 CONNACK reason code to refuse with. */
  readonly code: number;
  /** The user name the client has from now on: from CONNECT, or from its certificate. */
  readonly username: string | undefined;
  /** Reason for a failed login, for the log; empty on success. */
  readonly reason: string;
}

/** Invalid security settings or files found at start; `problems` has one line per problem. */
export class SecurityConfigError extends Error {
  readonly code = 'ERR_SECURITY_CONFIG';

  constructor(readonly problems: string[]) {
    super(problems.join('\n'));
    this.name = 'SecurityConfigError';
  }
}

/** The password and ACL files of one listener as last loaded. */
interface ListenerSecurity {
  readonly settings: ListenerConfig;
  passwords: ReadonlyMap<string, PasswordEntry> | null;
  acl: AclRules | null;
}

/** A client's identity kept with its session, for the read checks of deliveries. */
interface SessionIdentity {
  readonly subject: AclSubject;
  readonly security: ListenerSecurity;
  /** Read decisions by topic, valid for `generation`. */
  readonly readCache: Map<string, boolean>;
  generation: number;
}

/** Plugin decisions of one connection, keyed `p:topic` for PUBLISH and `s:filter` for SUBSCRIBE. */
interface DecisionCache {
  readonly decisions: Map<string, HookDecision>;
  generation: number;
}

/** Topics per identity or connection whose decision is cached before the cache starts over. */
const MAX_CACHED_DECISIONS = 1024;

/** How often a failed login from one address reaches the log. */
const LOGIN_FAILURE_LOG_MS = 30_000;

/** How often a repeated rejection by one client reaches the log. */
const REPEAT_LOG_MS = 10_000;

const SYS_LOGIN_FAILURES_TOPIC = '$SYS/broker/clients/login_failures';

export class AccessControl {
  /** True when some listener has an ACL file, so deliveries need a read check. */
  readChecks = false;
  /** True when the plugin has an `authorize` hook, so PUBLISH and SUBSCRIBE wait for it. */
  asyncAuthorize = false;
  /** Failed logins since start. */
  loginFailures = 0;
  private readonly config: OutpostConfig;
  private readonly logger: Logger;
  private readonly publishSys: (topic: string, value: string) => void;
  private readonly byListener = new Map<ListenerConfig, ListenerSecurity>();
  private readonly sessionIdentities = new WeakMap<object, SessionIdentity>();
  private readonly connectionDecisions = new WeakMap<object, DecisionCache>();
  private readonly verifiedLogins = new VerifiedLoginCache();
  private readonly loginDelay: LoginDelay;
  private plugin: LoadedPlugin | null = null;
  /** Increases on every reload, so cached decisions made under older files are not reused. */
  private generation = 0;
  private sysTimer: NodeJS.Timeout | null = null;
  private stopped = false;

  /** `publishSys` publishes a retained `$SYS` value through the router. */
  constructor(config: OutpostConfig, logger: Logger, publishSys: (topic: string, value: string) => void) {
    this.config = config;
    this.logger = logger;
    this.publishSys = publishSys;
    this.loginDelay = new LoginDelay(config.auth.login_delay_initial_ms, config.auth.login_delay_max_ms);
  }

  /**
   * Checks the TLS settings, reads every password and ACL file and loads the plugin. Throws
   * SecurityConfigError listing every problem, so the broker does not start half secured.
   */
  async start(): Promise<void> {
    const problems: string[] = [];
    for (const settings of this.config.listeners) problems.push(...checkTlsSettings(settings));
    const loaded = this.loadFiles(problems);
    const auth = this.config.auth;
    if (auth.plugin !== '') {
      try {
        this.plugin = await loadPlugin(auth.plugin, auth.plugin_timeout_ms, auth.plugin_fallback, this.logger);
      } catch (error: unknown) {
        if (!(error instanceof PluginLoadError)) throw error;
        problems.push(error.message);
      }
    }
    if (problems.length > 0) throw new SecurityConfigError(problems);
    for (const security of loaded) this.byListener.set(security.settings, security);
    this.readChecks = loaded.some((security) => security.acl !== null);
    this.asyncAuthorize = this.plugin !== null && this.plugin.hasAuthorize;
    this.stopped = false;
    for (const security of loaded) this.warnIfNobodyCanLogIn(security.settings);
    if (this.plugin !== null) this.logger.info('auth plugin loaded', { plugin: this.plugin.path });
  }

  stop(): void {
    this.stopped = true;
    if (this.sysTimer !== null) clearTimeout(this.sysTimer);
    this.sysTimer = null;
  }

  /**
   * Reads the password and ACL files again (on SIGHUP). A listener whose new files have a problem
   * keeps its old contents. Returns what was reloaded and what failed, one line each.
   */
  reload(): { reloaded: string[]; failed: string[] } {
    const reloaded: string[] = [];
    const failed: string[] = [];
    for (const security of this.byListener.values()) {
      const { settings } = security;
      const problems: string[] = [];
      const passwords = this.readPasswords(settings, problems);
      const acl = this.readAcl(settings, problems);
      if (problems.length > 0) {
        failed.push(...problems);
        continue;
      }
      security.passwords = passwords;
      security.acl = acl;
      if (settings.password_file !== '') reloaded.push(`listener ${settings.name}: password file ${settings.password_file} (${passwords?.size ?? 0} users)`);
      if (settings.acl_file !== '') reloaded.push(`listener ${settings.name}: ACL file ${settings.acl_file}`);
    }
    this.generation++;
    this.readChecks = [...this.byListener.values()].some((security) => security.acl !== null);
    return { reloaded, failed };
  }

  private loadFiles(problems: string[]): ListenerSecurity[] {
    const loaded: ListenerSecurity[] = [];
    for (const settings of this.config.listeners) {
      loaded.push({ settings, passwords: this.readPasswords(settings, problems), acl: this.readAcl(settings, problems) });
    }
    return loaded;
  }

  private readPasswords(settings: ListenerConfig, problems: string[]): ReadonlyMap<string, PasswordEntry> | null {
    const path = settings.password_file;
    if (path === '') return null;
    const text = readSecurityFile(path, `listener ${settings.name}: password_file`, problems);
    if (text === null) return null;
    try {
      return parsePasswordFile(text, path);
    } catch (error: unknown) {
      if (!(error instanceof PasswordFileError)) throw error;
      problems.push(...error.problems);
      return null;
    }
  }

  private readAcl(settings: ListenerConfig, problems: string[]): AclRules | null {
    const path = settings.acl_file;
    if (path === '') return null;
    const text = readSecurityFile(path, `listener ${settings.name}: acl_file`, problems);
    if (text === null) return null;
    try {
      return parseAclFile(text, path);
    } catch (error: unknown) {
      if (!(error instanceof AclFileError)) throw error;
      problems.push(...error.problems);
      return null;
    }
  }

  private warnIfNobodyCanLogIn(settings: ListenerConfig): void {
    const tls = settings.tls;
    const identity = tls.use_identity_as_username || tls.use_subject_as_username;
    if (settings.allow_anonymous || settings.password_file !== '' || identity || this.plugin?.hasAuthenticate === true) return;
    this.logger.warn('listener admits no client: allow_anonymous is false and there is no password_file, certificate identity or auth plugin', {
      listener: settings.name,
    });
  }

  private securityOf(settings: ListenerConfig): ListenerSecurity {
    let security = this.byListener.get(settings);
    if (security === undefined) {
      // A listener added after start (tests build configurations by hand) has no files.
      security = { settings, passwords: null, acl: null };
      this.byListener.set(settings, security);
    }
    return security;
  }

  // -------------------------------------------------------------------------------------------
  // Authentication

  /**
   * Decides on a CONNECT. Returns the outcome at once when no plugin, password hash or login
   * delay is involved, else a promise. Never rejects.
   */
  authenticate(connection: ClientConnection, clientId: string, username: string | undefined, password: Buffer | undefined): AuthOutcome | Promise<AuthOutcome> {
    const settings = connection.listener;
    const tls = settings.tls;
    let effectiveUsername = username;
    let certificateAuthenticated = false;
    if (tls.use_identity_as_username || tls.use_subject_as_username) {
      const certificate = connection.certificate;
      let identity: string | undefined;
      if (certificate !== null) identity = tls.use_identity_as_username ? certificate.commonName : certificate.subject;
      if (identity === undefined || identity === '') {
        return this.fail(connection, clientId, username, ReasonCode.NotAuthorized, 'client certificate has no usable identity (CN or subject)');
      }
      effectiveUsername = identity;
      certificateAuthenticated = true;
    }

    const plugin = this.plugin;
    if (plugin !== null && plugin.hasAuthenticate) {
      return plugin
        .authenticate({
          listener: settings.name,
          clientId,
          username: effectiveUsername,
          password,
          remoteAddress: connection.remoteIp,
          certificate: connection.certificate ?? undefined,
        })
        .then((decision) => {
          if (decision === true) return this.succeed(connection, effectiveUsername);
          if (decision === false) return this.fail(connection, clientId, effectiveUsername, ReasonCode.NotAuthorized, 'denied by the auth plugin');
          return this.builtInAuthenticate(connection, clientId, effectiveUsername, password, certificateAuthenticated);
        });
    }
    return this.builtInAuthenticate(connection, clientId, effectiveUsername, password, certificateAuthenticated);
  }

  private builtInAuthenticate(
    connection: ClientConnection,
    clientId: string,
    username: string | undefined,
    password: Buffer | undefined,
    certificateAuthenticated: boolean,
  ): AuthOutcome | Promise<AuthOutcome> {
    if (certificateAuthenticated) return this.succeed(connection, username);
    const settings = connection.listener;
    if (username === undefined) {
      if (settings.allow_anonymous) return this.succeed(connection, undefined);
      return this.fail(connection, clientId, undefined, ReasonCode.NotAuthorized, 'anonymous clients are not allowed on this listener');
    }
    const passwords = this.securityOf(settings).passwords;
    if (passwords === null) {
      // Like Mosquitto: without a password file a user name is not checked, only anonymous access.
      if (settings.allow_anonymous) return this.succeed(connection, username);
      return this.fail(connection, clientId, username, ReasonCode.BadUserNameOrPassword, 'no password file on this listener');
    }
    const entry = passwords.get(username);
    if (entry !== undefined && password !== undefined && this.verifiedLogins.has(entry, password)) {
      return this.succeed(connection, username);
    }
    return this.checkPassword(connection, clientId, username, entry, password);
  }

  private async checkPassword(
    connection: ClientConnection,
    clientId: string,
    username: string,
    entry: PasswordEntry | undefined,
    password: Buffer | undefined,
  ): Promise<AuthOutcome> {
    // An unknown user costs one hash like a known one, so timing does not reveal user names.
    const matches = await verifyPassword(entry?.hash ?? UNKNOWN_USER_HASH, password ?? Buffer.alloc(0));
    if (entry === undefined) return this.fail(connection, clientId, username, ReasonCode.BadUserNameOrPassword, 'unknown user name');
    if (password === undefined) return this.fail(connection, clientId, username, ReasonCode.BadUserNameOrPassword, 'no password given');
    if (!matches) return this.fail(connection, clientId, username, ReasonCode.BadUserNameOrPassword, 'wrong password');
    this.verifiedLogins.add(entry, password);
    return this.succeed(connection, username);
  }

  private succeed(connection: ClientConnection, username: string | undefined): AuthOutcome {
    this.loginDelay.recordSuccess(connection.remoteIp);
    return { code: ReasonCode.Success, username, reason: '' };
  }

  /** Counts and logs a failed login; the outcome resolves after the address's login delay. */
  private fail(connection: ClientConnection, clientId: string, username: string | undefined, code: number, reason: string): AuthOutcome | Promise<AuthOutcome> {
    const address = connection.remoteIp;
    const delayMs = this.loginDelay.recordFailure(address);
    this.loginFailures++;
    this.scheduleSysUpdate();
    this.logger.limited('warn', `login-failed:${address}`, LOGIN_FAILURE_LOG_MS, 'login failed', {
      listener: connection.listener.name,
      remote: address,
      conn: connection.id,
      client_id: clientId,
      user: username,
      reason,
      failures_from_address: this.loginDelay.failuresOf(address),
      delay_ms: delayMs,
    });
    const outcome: AuthOutcome = { code, username, reason };
    if (delayMs === 0) return outcome;
    return new Promise((resolve) => setTimeout(resolve, delayMs, outcome).unref());
  }

  private scheduleSysUpdate(): void {
    const intervalSeconds = this.config.sys.interval_seconds;
    if (intervalSeconds === 0 || this.sysTimer !== null || this.stopped) return;
    // One update per $SYS interval at most, however many logins fail.
    this.sysTimer = setTimeout(() => {
      this.sysTimer = null;
      if (!this.stopped) this.publishSys(SYS_LOGIN_FAILURES_TOPIC, String(this.loginFailures));
    }, intervalSeconds * 1000);
    this.sysTimer.unref();
  }

  /** Remembers who owns a session, so deliveries to it are checked while it is offline too. */
  bindSession(session: object, connection: ClientConnection): void {
    this.sessionIdentities.set(session, {
      subject: { clientId: connection.clientId, username: connection.username },
      security: this.securityOf(connection.listener),
      readCache: new Map(),
      generation: this.generation,
    });
  }

  /**
   * Remembers the owner of a session restored from the store: the user name and the name of the
   * listener of the client that last held it. A listener that no longer exists leaves it unbound.
   */
  bindStoredSession(session: object, clientId: string, username: string | undefined, listenerName: string): void {
    const settings = this.config.listeners.find((listener) => listener.name === listenerName);
    if (settings === undefined) return;
    this.sessionIdentities.set(session, {
      subject: { clientId, username },
      security: this.securityOf(settings),
      readCache: new Map(),
      generation: this.generation,
    });
  }

  /**
   * Tells whether `connection` may take over `session`: true unless the session was last bound to
   * a client with another user name or on another listener.
   */
  isSameOwner(session: object, connection: ClientConnection): boolean {
    const identity = this.sessionIdentities.get(session);
    // A session without a known owner (stored before a listener was renamed) goes to any client.
    if (identity === undefined) return true;
    return identity.subject.username === connection.username && identity.security.settings === connection.listener;
  }

  // -------------------------------------------------------------------------------------------
  // Authorization

  /**
   * Asks the plugin's `authorize` hook about the topics of a PUBLISH or SUBSCRIBE whose decision
   * is not cached yet. Returns null when nothing needs asking, else a promise that resolves (never
   * rejects) when the decisions are cached for `mayPublish` and `maySubscribe`.
   */
  prepareAuthorization(connection: ClientConnection, packet: Packet): Promise<void> | null {
    const plugin = this.plugin;
    if (plugin === null || !plugin.hasAuthorize) return null;
    const requests: Array<{ key: string; action: 'publish' | 'subscribe'; topic: string }> = [];
    if (packet.cmd === 'publish') {
      const topic = publishTopic(connection, packet);
      if (topic !== '' && !isSysTopic(topic)) requests.push({ key: `p:${topic}`, action: 'publish', topic });
    } else if (packet.cmd === 'subscribe') {
      for (const request of (packet as ISubscribePacket).subscriptions) {
        const filter = withoutShare(request.topic);
        requests.push({ key: `s:${filter}`, action: 'subscribe', topic: filter });
      }
    }
    const cache = this.decisionsOf(connection);
    const missing = requests.filter((request) => !cache.decisions.has(request.key));
    if (missing.length === 0) return null;
    if (cache.decisions.size + missing.length > MAX_CACHED_DECISIONS) cache.decisions.clear();
    const asked = missing.map(async (request) => {
      const decision = await plugin.authorize({
        listener: connection.listener.name,
        clientId: connection.clientId,
        username: connection.username,
        action: request.action,
        topic: request.topic,
      });
      cache.decisions.set(request.key, decision);
    });
    return Promise.all(asked).then(() => undefined);
  }

  private decisionsOf(connection: ClientConnection): DecisionCache {
    let cache = this.connectionDecisions.get(connection);
    if (cache === undefined || cache.generation !== this.generation) {
      cache = { decisions: new Map(), generation: this.generation };
      this.connectionDecisions.set(connection, cache);
    }
    return cache;
  }

  /** Returns the plugin's cached decision, or undefined to defer to the ACL. A missing decision denies. */
  private pluginDecision(connection: ClientConnection, key: string): HookDecision {
    if (!this.asyncAuthorize) return undefined;
    const decisions = this.decisionsOf(connection).decisions;
    if (!decisions.has(key)) return false;
    return decisions.get(key);
  }

  /** Tells whether a client may publish to `topic`. No client may publish to `$SYS`. */
  mayPublish(connection: ClientConnection, topic: string): boolean {
    if (isSysTopic(topic)) {
      this.logRejected(connection, 'publish to $SYS topic rejected', topic);
      return false;
    }
    const decision = this.pluginDecision(connection, `p:${topic}`);
    let allowed: boolean;
    if (decision === true || decision === false) {
      allowed = decision;
    } else {
      const acl = this.securityOf(connection.listener).acl;
      allowed = acl === null || acl.allows(subjectOf(connection), 'write', topic);
    }
    if (!allowed) this.logRejected(connection, 'publish not authorized', topic);
    return allowed;
  }

  /**
   * Tells whether a connecting client may have a will on `topic`: never on `$SYS`, else as the ACL
   * allows a PUBLISH.
   */
  mayPublishWill(connection: ClientConnection, topic: string): boolean {
    // NOTE: the plugin's authorize hook is not asked about will topics, only the ACL file.
    if (isSysTopic(topic)) {
      this.logRejected(connection, 'will on $SYS topic rejected', topic);
      return false;
    }
    const acl = this.securityOf(connection.listener).acl;
    const allowed = acl === null || acl.allows(subjectOf(connection), 'write', topic);
    if (!allowed) this.logRejected(connection, 'will topic not authorized', topic);
    return allowed;
  }

  /** Tells whether a client may subscribe to `rawFilter` (a `$share/group/` prefix is ignored). */
  maySubscribe(connection: ClientConnection, rawFilter: string): boolean {
    const filter = withoutShare(rawFilter);
    const decision = this.pluginDecision(connection, `s:${filter}`);
    let allowed: boolean;
    if (decision === true || decision === false) {
      allowed = decision;
    } else {
      const acl = this.securityOf(connection.listener).acl;
      allowed = acl === null || acl.allowsSubscribe(subjectOf(connection), filter);
    }
    if (!allowed) this.logRejected(connection, 'subscription not authorized', rawFilter);
    return allowed;
  }

  /**
   * Tells whether the owner of `session` may receive a message on `topic`. Sessions of in-process
   * clients have no identity and receive everything.
   */
  mayRead(session: { readonly sink: object | null }, topic: string): boolean {
    const identity = this.sessionIdentities.get(session);
    if (identity === undefined) {
      // Every network client is bound at CONNECT, so a connected session without identity belongs
      // to an in-process client. An offline one was restored from the store after a restart.
      // NOTE: the store keeps no user name, so such a session gets nothing until its client
      // reconnects, whenever some listener has an ACL file.
      return session.sink !== null;
    }
    const acl = identity.security.acl;
    if (acl === null) return true;
    if (identity.generation !== this.generation || identity.readCache.size >= MAX_CACHED_DECISIONS) {
      identity.readCache.clear();
      identity.generation = this.generation;
    }
    let allowed = identity.readCache.get(topic);
    if (allowed === undefined) {
      allowed = acl.allows(identity.subject, 'read', topic);
      identity.readCache.set(topic, allowed);
    }
    return allowed;
  }

  private logRejected(connection: ClientConnection, message: string, topic: string): void {
    this.logger.limited('warn', `${message}:${connection.clientId}`, REPEAT_LOG_MS, message, {
      client_id: connection.clientId,
      conn: connection.id,
      user: connection.username,
      topic,
    });
  }
}

function readSecurityFile(path: string, key: string, problems: string[]): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch (error: unknown) {
    const code = error instanceof Error && 'code' in error ? String(error.code) : 'error';
    let hint = 'cannot read it';
    if (code === 'ENOENT') hint = 'file not found; check the path';
    if (code === 'EACCES') hint = 'permission denied; let the outpost user read it';
    problems.push(`${key} ${path}: ${hint} (${code})`);
    return null;
  }
}

function subjectOf(connection: ClientConnection): AclSubject {
  return { clientId: connection.clientId, username: connection.username };
}

function isSysTopic(topic: string): boolean {
  return topic === '$SYS' || topic.startsWith('$SYS/');
}

function withoutShare(rawFilter: string): string {
  if (!rawFilter.startsWith(SHARE_PREFIX)) return rawFilter;
  const slash = rawFilter.indexOf('/', SHARE_PREFIX.length);
  return slash < 0 ? rawFilter : rawFilter.slice(slash + 1);
}

/** Returns the topic of a PUBLISH, resolving a topic alias set earlier on the connection; '' when unknown. */
function publishTopic(connection: ClientConnection, packet: IPublishPacket): string {
  if (packet.topic !== '') return packet.topic;
  const alias = packet.properties?.topicAlias;
  return alias === undefined ? '' : connection.incomingAliases?.get(alias) ?? '';
}
