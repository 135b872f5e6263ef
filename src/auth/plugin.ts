/**
 * Authentication and authorization plugins: a JavaScript module that exports `authenticate`
 * and/or `authorize` (as named exports or as properties of the default export). Each hook may
 * be async. It returns true to allow, false to deny, or undefined/null to leave the decision to
 * the listener's own settings (password file, ACL file, allow_anonymous). docs/security.md has an
 * example.
 */

import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

import type { Logger } from '../service/logger.js';

/** The request passed to `authenticate` for a client that sends CONNECT. */
export interface AuthenticateRequest {
  readonly listener: string;
  readonly clientId: string;
  readonly username: string | undefined;
  /** The password as sent; it may be any bytes, so it stays a Buffer. */
  readonly password: Buffer | undefined;
  /** Source IP address of the connection. */
  readonly remoteAddress: string;
  /** The verified client certificate on TLS listeners that request one, else undefined. */
  readonly certificate: { readonly commonName: string | undefined; readonly subject: string } | undefined;
}

/** The request passed to `authorize` for a PUBLISH or SUBSCRIBE. */
export interface AuthorizeRequest {
  readonly listener: string;
  readonly clientId: string;
  readonly username: string | undefined;
  readonly action: 'publish' | 'subscribe';
  /** Topic name of a PUBLISH, or the topic filter of a SUBSCRIBE without any `$share/group/` prefix. */
  readonly topic: string;
}

/** true allows, false denies, undefined or null defers to the listener's settings. */
export type HookDecision = boolean | undefined | null;

export interface AuthPlugin {
  authenticate?: (request: AuthenticateRequest) => HookDecision | Promise<HookDecision>;
  authorize?: (request: AuthorizeRequest) => HookDecision | Promise<HookDecision>;
}

export type PluginFallback = 'deny' | 'allow' | 'defer';

/** The plugin module could not be loaded or does not export a hook. */
export class PluginLoadError extends Error {
  readonly code = 'ERR_AUTH_PLUGIN';

  constructor(message: string) {
    super(message);
    this.name = 'PluginLoadError';
  }
}

/** How often a failing hook is logged, per hook. */
const FAILURE_LOG_INTERVAL_MS = 10_000;

/** A loaded plugin with its time limit and the decision that applies when a hook fails. */
export class LoadedPlugin {
  constructor(
    readonly path: string,
    private readonly hooks: AuthPlugin,
    private readonly timeoutMs: number,
    private readonly fallback: PluginFallback,
    private readonly logger: Logger,
  ) {}

  get hasAuthenticate(): boolean {
    return this.hooks.authenticate !== undefined;
  }

  get hasAuthorize(): boolean {
    return this.hooks.authorize !== undefined;
  }

  authenticate(request: AuthenticateRequest): Promise<HookDecision> {
    const hook = this.hooks.authenticate;
    if (hook === undefined) return Promise.resolve(undefined);
    return this.call('authenticate', () => hook(request), { client_id: request.clientId, listener: request.listener });
  }

  authorize(request: AuthorizeRequest): Promise<HookDecision> {
    const hook = this.hooks.authorize;
    if (hook === undefined) return Promise.resolve(undefined);
    return this.call('authorize', () => hook(request), { client_id: request.clientId, listener: request.listener, action: request.action });
  }

  /** Runs a hook with the time limit; a throw, a rejection, a timeout or a wrong type gives the fallback. */
  private async call(name: string, run: () => HookDecision | Promise<HookDecision>, fields: Record<string, string>): Promise<HookDecision> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after auth.plugin_timeout_ms (${this.timeoutMs} ms)`)), this.timeoutMs);
    });
    try {
      const result: unknown = await Promise.race([Promise.resolve().then(run), timeout]);
      if (typeof result === 'boolean' || result === undefined || result === null) return result;
      throw new Error(`returned ${typeof result} instead of true, false, undefined or null`);
    } catch (error: unknown) {
      this.logger.limited('error', `plugin-failed:${name}`, FAILURE_LOG_INTERVAL_MS, `auth plugin hook ${name} failed; applying auth.plugin_fallback`, {
        ...fields,
        plugin: this.path,
        error: error instanceof Error ? error.message : String(error),
        fallback: this.fallback,
      });
      return fallbackDecision(this.fallback);
    } finally {
      clearTimeout(timer);
    }
  }
}

function fallbackDecision(fallback: PluginFallback): HookDecision {
  if (fallback === 'allow') return true;
  return fallback === 'deny' ? false : undefined;
}

/**
 * Imports the plugin module at `path` (relative paths are taken from the working directory).
 * Throws PluginLoadError when the import fails or the module exports no hook.
 */
export async function loadPlugin(path: string, timeoutMs: number, fallback: PluginFallback, logger: Logger): Promise<LoadedPlugin> {
  const absolute = resolve(path);
  let module: Record<string, unknown>;
  try {
    module = (await import(pathToFileURL(absolute).href)) as Record<string, unknown>;
  } catch (error: unknown) {
    throw new PluginLoadError(`auth.plugin ${absolute}: cannot load the module: ${error instanceof Error ? error.message : String(error)}`);
  }
  const source = typeof module.default === 'object' && module.default !== null ? (module.default as Record<string, unknown>) : module;
  const hooks: AuthPlugin = {
    authenticate: hookExport(source, module, 'authenticate', absolute) as AuthPlugin['authenticate'],
    authorize: hookExport(source, module, 'authorize', absolute) as AuthPlugin['authorize'],
  };
  if (hooks.authenticate === undefined && hooks.authorize === undefined) {
    throw new PluginLoadError(`auth.plugin ${absolute}: the module exports neither authenticate nor authorize`);
  }
  return new LoadedPlugin(absolute, hooks, timeoutMs, fallback, logger);
}

/** Returns the function exported as `name`, or undefined; throws when the export is not a function. */
function hookExport(source: Record<string, unknown>, module: Record<string, unknown>, name: string, path: string): unknown {
  const value = source[name] ?? module[name];
  if (value !== undefined && typeof value !== 'function') {
    throw new PluginLoadError(`auth.plugin ${path}: export ${name} is a ${typeof value}, not a function`);
  }
  return value;
}
