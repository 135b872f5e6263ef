import { readFileSync } from 'node:fs';
import type { IConnectPacket } from 'mqtt-packet';
import type { BridgeConfig } from './config-schema.js';
import type { RemoteTlsOptions } from './remote-connection.js';

/** Limits of the local broker that the bridge announces to the remote in an MQTT 5 CONNECT. */
export interface LocalLimits {
  receiveMaximum: number;
  maxPacketSize: number;
}

/**
 * Builds the CONNECT packet of a bridge. Files (password) are read on every call, so a changed
 * password file takes effect at the next connection.
 */
export function buildConnectPacket(config: BridgeConfig, clientId: string, limits: LocalLimits): IConnectPacket {
  const protocolVersion = config.protocol_version === '5' ? 5 : 4;
  const username = config.username;
  const connect: IConnectPacket = {
    cmd: 'connect',
    protocolId: 'MQTT',
    protocolVersion,
    clientId,
    clean: config.clean_start,
    keepalive: config.keepalive_seconds,
    username: username === '' ? undefined : username,
    password: readPassword(config),
  };
  if (protocolVersion === 5) {
    connect.properties = {
      sessionExpiryInterval: config.clean_start ? 0 : config.session_expiry_seconds,
      receiveMaximum: limits.receiveMaximum,
      maximumPacketSize: limits.maxPacketSize,
    };
  }
  if (config.notification_topic !== '') {
    // Like Mosquitto's bridge notifications: the remote publishes the retained 0 when the link dies.
    connect.will = { topic: config.notification_topic, payload: Buffer.from('0'), qos: 1, retain: true };
  }
  return connect;
}

/** Reads the CA, certificate and key files of the bridge's TLS settings; null when TLS is off. */
export function readTlsOptions(config: BridgeConfig): RemoteTlsOptions | null {
  const settings = config.tls;
  if (!settings.enabled) return null;
  return {
    ca: readOptionalFile(settings.ca_file, 'tls.ca_file'),
    cert: readOptionalFile(settings.cert_file, 'tls.cert_file'),
    key: readOptionalFile(settings.key_file, 'tls.key_file'),
    serverName: settings.server_name,
    alpn: settings.alpn,
    verify: settings.verify,
  };
}

function readPassword(config: BridgeConfig): Buffer | undefined {
  if (config.password_file !== '') {
    const text = readOptionalFile(config.password_file, 'password_file')?.toString('utf8') ?? '';
    return Buffer.from((text.split(/\r?\n/)[0] ?? '').trimEnd());
  }
  return config.password === '' ? undefined : Buffer.from(config.password);
}

function readOptionalFile(path: string, key: string): Buffer | undefined {
  if (path === '') return undefined;
  try {
    return readFileSync(path);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new Error(`cannot read the bridge's ${key} ${path} (${reason}); fix the path or the file's permissions`);
  }
}
