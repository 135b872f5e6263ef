/** TLS settings of `mqtts` and `wss` listeners, and the identity in a client certificate. */

import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { createSecureContext, TLSSocket, type SecureContextOptions, type TlsOptions } from 'node:tls';

import type { ListenerConfig } from '../config/schema.js';
import { WebSocketStream } from './websocket-stream.js';

/** The TLS settings of a listener are incomplete, or a certificate or key file cannot be used. */
export class TlsConfigError extends Error {
  readonly code = 'ERR_TLS_CONFIG';

  constructor(message: string) {
    super(message);
    this.name = 'TlsConfigError';
  }
}

export function isTlsProtocol(protocol: ListenerConfig['protocol']): boolean {
  return protocol === 'mqtts' || protocol === 'wss';
}

/**
 * Checks that the TLS keys of a listener fit together. Returns one problem per mistake, naming
 * the key, so that the start fails with all of them listed at once.
 */
export function checkTlsSettings(settings: ListenerConfig): string[] {
  const tls = settings.tls;
  const where = `listener ${settings.name}`;
  const problems: string[] = [];
  if (isTlsProtocol(settings.protocol)) {
    if (tls.cert_file === '') problems.push(`${where}: protocol ${settings.protocol} needs tls.cert_file (the server certificate, PEM)`);
    if (tls.key_file === '') problems.push(`${where}: protocol ${settings.protocol} needs tls.key_file (the private key, PEM)`);
    if (tls.require_certificate && tls.ca_file === '') {
      problems.push(`${where}: tls.require_certificate needs tls.ca_file, the CA certificates that client certificates must chain to`);
    }
  }
  const identity = tls.use_identity_as_username || tls.use_subject_as_username;
  if (identity && !isTlsProtocol(settings.protocol)) {
    problems.push(`${where}: tls.use_identity_as_username and tls.use_subject_as_username need protocol mqtts or wss`);
  } else if (identity && !tls.require_certificate) {
    problems.push(`${where}: tls.use_identity_as_username and tls.use_subject_as_username need tls.require_certificate: true`);
  }
  if (tls.use_identity_as_username && tls.use_subject_as_username) {
    problems.push(`${where}: set only one of tls.use_identity_as_username and tls.use_subject_as_username`);
  }
  return problems;
}

function readPem(path: string, key: string, settings: ListenerConfig): Buffer {
  try {
    return readFileSync(path);
  } catch (error: unknown) {
    const code = error instanceof Error && 'code' in error ? String(error.code) : 'error';
    throw new TlsConfigError(`listener ${settings.name}: cannot read ${key} ${path} (${code}); check the path and its permissions`);
  }
}

/**
 * Reads the certificate, key and CA files of a listener and returns the secure context options.
 * Throws TlsConfigError when a file cannot be read or OpenSSL rejects the contents (for example
 * a key that does not belong to the certificate).
 */
export function readSecureContextOptions(settings: ListenerConfig): SecureContextOptions {
  const tls = settings.tls;
  const options: SecureContextOptions = {
    cert: readPem(tls.cert_file, 'tls.cert_file', settings),
    key: readPem(tls.key_file, 'tls.key_file', settings),
    minVersion: tls.min_version,
  };
  if (tls.ca_file !== '') options.ca = readPem(tls.ca_file, 'tls.ca_file', settings);
  if (tls.ciphers !== '') options.ciphers = tls.ciphers;
  try {
    createSecureContext(options);
  } catch (error: unknown) {
    const message = error instanceof Error ? error.message : String(error);
    throw new TlsConfigError(
      `listener ${settings.name}: OpenSSL rejected tls.cert_file ${tls.cert_file}, tls.key_file ${tls.key_file}${tls.ca_file === '' ? '' : ` or tls.ca_file ${tls.ca_file}`} (${message}); check that the files are PEM and the key belongs to the certificate`,
    );
  }
  return options;
}

/** Server options for tls.createServer and https.createServer. */
export function serverTlsOptions(settings: ListenerConfig, handshakeTimeoutMs: number): TlsOptions {
  const requireCertificate = settings.tls.require_certificate;
  return {
    ...readSecureContextOptions(settings),
    requestCert: requireCertificate,
    rejectUnauthorized: requireCertificate,
    handshakeTimeout: handshakeTimeoutMs,
  };
}

/** The identity in a verified client certificate. */
export interface CertificateIdentity {
  readonly commonName: string | undefined;
  /** The subject in RFC 2253 order, most specific part first, e.g. `CN=pump-7,O=Plant,C=DE`. */
  readonly subject: string;
}

/**
 * Returns the identity in the client certificate of a TLS socket or a `wss` stream, or null when
 * the client sent no certificate or the certificate was not verified.
 */
export function certificateIdentity(stream: unknown): CertificateIdentity | null {
  let socket: TLSSocket | null = null;
  if (stream instanceof TLSSocket) socket = stream;
  if (stream instanceof WebSocketStream) socket = stream.tlsSocket;
  if (socket === null || !socket.authorized) return null;
  const certificate = socket.getPeerX509Certificate();
  if (certificate === undefined) return null;
  return identityOf(certificate);
}

export function identityOf(certificate: X509Certificate): CertificateIdentity {
  // Node lists the subject one attribute per line, least specific first.
  const parts = certificate.subject.split('\n').filter((part) => part !== '');
  const commonName = parts.find((part) => part.startsWith('CN='))?.slice(3);
  return { commonName, subject: [...parts].reverse().join(',') };
}
