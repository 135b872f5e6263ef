/**
 * `outpost status`: reads `/status` from the operations endpoint of a running gateway and prints
 * a summary for a person at a shell.
 */

import { isIPv6 } from 'node:net';

import type { GatewayStatus, PerQos } from '../service/gateway-status.js';
import type { HttpSettings } from '../service/http.js';

/** Time to wait for the gateway's HTTP response. */
const REQUEST_TIMEOUT_MS = 5_000;

/** Failure to read the status. The message names the address and what to check. */
export class StatusError extends Error {
  readonly code = 'ERR_STATUS';
}

/**
 * Returns the base URL of the operations endpoint that `settings` (the `http` section of the
 * configuration read from `source`) describes. A wildcard bind address is reached on loopback.
 */
export function operationsBaseUrl(settings: HttpSettings, source: string): string {
  if (!settings.enabled) {
    throw new StatusError(`http.enabled is false in ${source}, so the gateway serves no status; set it to true and restart outpost, or pass --url`);
  }
  if (settings.port === 0) {
    throw new StatusError(`http.port is 0 in ${source}, so the port is chosen at start; pass --url with the port from the 'operations endpoint listening' log line`);
  }
  let host = settings.host;
  if (host === '0.0.0.0') host = '127.0.0.1';
  if (host === '::') host = '::1';
  return `http://${isIPv6(host) ? `[${host}]` : host}:${settings.port}`;
}

/** Fetches `/status` from `baseUrl` (for example `http://127.0.0.1:9183`). */
export async function fetchStatus(baseUrl: string): Promise<GatewayStatus> {
  const url = new URL('/status', baseUrl).href;
  let response: Response;
  try {
    response = await fetch(url, { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  } catch (error: unknown) {
    throw new StatusError(`cannot read ${url}: ${describeFetchError(error)}; check that outpost runs with http.enabled: true on that address`);
  }
  const body = await response.text();
  if (response.status !== 200) throw new StatusError(`${url} returned HTTP ${response.status}: ${body.trim()}`);
  try {
    return JSON.parse(body) as GatewayStatus;
  } catch {
    throw new StatusError(`${url} did not return JSON; is another program listening on that port?`);
  }
}

function describeFetchError(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  if (error.name === 'TimeoutError') return `no response within ${REQUEST_TIMEOUT_MS / 1000} s`;
  // fetch wraps the socket error (ECONNREFUSED and the like) in `cause`.
  const cause = error.cause;
  if (cause instanceof Error) return 'code' in cause ? String(cause.code) : cause.message;
  return error.message;
}

/** Formats a status snapshot as lines of text. */
export function formatStatus(status: GatewayStatus): string {
  const lines: string[] = [];
  lines.push(`Outpost ${status.version}, pid ${status.pid}, up ${formatDuration(status.uptimeSeconds)}`);
  lines.push(status.health.ok ? 'Health:    ok' : `Health:    NOT HEALTHY\n${status.health.problems.map((problem) => `  - ${problem}`).join('\n')}`);
  lines.push('Listeners:');
  for (const listener of status.listeners) {
    const state = listener.bound ? `${listener.connections} ${plural(listener.connections, 'connection')}` : 'NOT LISTENING';
    lines.push(`  ${listener.name.padEnd(12)} ${listener.protocol.padEnd(5)} ${`${listener.host}:${listener.port}`.padEnd(22)} ${state}`);
  }
  const clients = status.clients;
  lines.push(
    `Clients:   ${clients.connected} connected (at most ${clients.maximum} since start), ${clients.offlineSessions} offline ${plural(clients.offlineSessions, 'session')}, ${status.subscriptions} ${plural(status.subscriptions, 'subscription')}`,
  );
  const messages = status.messages;
  lines.push(`Messages:  in ${formatPerQos(messages.receivedByQos)}; out ${formatPerQos(messages.sentByQos)}; dropped ${messages.dropped}`);
  lines.push(`Retained:  ${status.retained.messages} ${plural(status.retained.messages, 'message')} (${formatBytes(status.retained.bytes)}); queued: ${status.queuedMessages}`);
  lines.push(formatStore(status));
  lines.push(...formatBridges(status));
  lines.push(...formatDevices(status));
  const proc = status.process;
  lines.push(
    `Process:   RSS ${formatBytes(proc.residentBytes)}, heap ${formatBytes(proc.heapUsedBytes)}, CPU ${proc.cpuSeconds.toFixed(1)} s, event loop lag p99 ${(proc.eventLoopLag.p99Seconds * 1000).toFixed(1)} ms`,
  );
  return `${lines.join('\n')}\n`;
}

function formatStore(status: GatewayStatus): string {
  const store = status.store;
  if (store === null) return 'Store:     off (persistence.enabled is false)';
  const bound = store.maxBytes > 0 ? ` of ${formatBytes(store.maxBytes)}` : '';
  const state = store.writable ? 'writable' : 'FULL, QoS 1/2 refused';
  return `Store:     ${formatBytes(store.sizeBytes)}${bound}, ${state}, ${formatBytes(store.processBytesWritten)} written since start`;
}

function formatBridges(status: GatewayStatus): string[] {
  if (status.bridges.length === 0) return ['Bridges:   none'];
  return [
    'Bridges:',
    ...status.bridges.map((bridge) => {
      const state = bridge.connected ? 'connected' : 'DISCONNECTED';
      const error = bridge.lastError === null ? '' : `, last error: ${bridge.lastError}`;
      return `  ${bridge.name.padEnd(12)} ${state}, backlog ${bridge.backlogMessages} ${plural(bridge.backlogMessages, 'message')} (${formatBytes(bridge.backlogBytes)}), dropped ${bridge.droppedMessages}${error}`;
    }),
  ];
}

function formatDevices(status: GatewayStatus): string[] {
  const devices = status.devices;
  if (devices.length === 0) return ['Devices:   none'];
  const offline = devices.filter((device) => !device.online);
  const lines = [`Devices:   ${devices.length - offline.length} online, ${offline.length} offline`];
  for (const device of offline) {
    const error = device.lastError === null ? '' : `, last error: ${device.lastError}`;
    lines.push(`  ${device.name.padEnd(12)} offline, ${device.pollErrors} poll ${plural(device.pollErrors, 'error')}${error}`);
  }
  return lines;
}

function formatPerQos(values: PerQos): string {
  return `${values[0] + values[1] + values[2]} (QoS 0: ${values[0]}, QoS 1: ${values[1]}, QoS 2: ${values[2]})`;
}

function formatDuration(totalSeconds: number): string {
  const days = Math.floor(totalSeconds / 86_400);
  const hours = Math.floor((totalSeconds % 86_400) / 3600);
  const minutes = Math.floor((totalSeconds % 3600) / 60);
  const seconds = totalSeconds % 60;
  if (days > 0) return `${days}d ${hours}h ${minutes}m`;
  if (hours > 0) return `${hours}h ${minutes}m ${seconds}s`;
  return minutes > 0 ? `${minutes}m ${seconds}s` : `${seconds}s`;
}

function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

function plural(count: number, word: string): string {
  return count === 1 ? word : `${word}s`;
}

/**
 * Reads and prints the status of the gateway at `baseUrl`. Returns the exit status: 0 when it
 * reports healthy, 1 when it cannot be read or reports a problem.
 */
export async function printStatus(baseUrl: string): Promise<number> {
  let status: GatewayStatus;
  try {
    status = await fetchStatus(baseUrl);
  } catch (error: unknown) {
    if (!(error instanceof StatusError)) throw error;
    process.stderr.write(`outpost: ${error.message}\n`);
    return 1;
  }
  process.stdout.write(formatStatus(status));
  return status.health.ok ? 0 : 1;
}
