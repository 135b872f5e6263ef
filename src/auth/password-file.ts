/**
 * Mosquitto password files: one `username:hash` line per user, as written by `mosquitto_passwd`.
 *
 * Two hash formats exist (checked against Debian's mosquitto_passwd 2.0.11):
 * - `$7$<iterations>$<base64 salt>$<base64 hash>`: PBKDF2-HMAC-SHA512 over the password with the
 *   decoded salt, 64 bytes of output. mosquitto_passwd 2.0 writes this by default, with 101
 *   iterations and a 12-byte salt.
 * - `$6$<base64 salt>$<base64 hash>`: one SHA-512 over the password followed by the decoded salt.
 *   mosquitto_passwd writes it with `-H sha512`; Mosquitto 1.6 and older wrote only this.
 */

import { createHash, createHmac, pbkdf2, randomBytes, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';

const pbkdf2Async = promisify(pbkdf2);

/** Iterations `outpost passwd` uses for new `$7$` hashes unless `-I` sets another count. */
export const DEFAULT_PBKDF2_ITERATIONS = 100_000;

/** Iteration counts above this are rejected, so one login cannot occupy a worker thread for minutes. */
export const MAX_PBKDF2_ITERATIONS = 10_000_000;

/** Salt length mosquitto_passwd uses, in bytes. */
const SALT_BYTES = 12;

/** SHA-512 output length in bytes; PBKDF2 derives this many bytes. */
const HASH_BYTES = 64;

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

export type PasswordHash =
  | { readonly kind: 'sha512'; readonly salt: Buffer; readonly hash: Buffer }
  | { readonly kind: 'pbkdf2-sha512'; readonly iterations: number; readonly salt: Buffer; readonly hash: Buffer };

/** One user of a password file. */
export interface PasswordEntry {
  readonly username: string;
  /** The hash exactly as written in the file, e.g. `$7$101$...`. */
  readonly hashText: string;
  readonly hash: PasswordHash;
}

/** A password file that cannot be used; `problems` has one `file:line: message` item per problem. */
export class PasswordFileError extends Error {
  readonly code = 'ERR_PASSWORD_FILE';

  constructor(readonly problems: string[]) {
    super(problems.join('\n'));
    this.name = 'PasswordFileError';
  }
}

/**
 * Parses a hash in `$6$` or `$7$` form; returns a description of the problem when it is neither.
 */
export function parseHash(text: string): PasswordHash | string {
  const parts = text.split('$');
  // A hash starts with '$', so the first part is empty.
  if (parts[0] !== '' || parts.length < 4) return 'not a mosquitto_passwd hash ($6$ or $7$)';
  if (parts[1] === '6') {
    if (parts.length !== 4) return 'a $6$ hash has the form $6$<salt>$<hash>';
    const salt = decodeBase64(parts[2]);
    const hash = decodeBase64(parts[3]);
    if (salt === null || hash === null) return 'the salt or hash of the $6$ entry is not valid base64';
    if (hash.length !== HASH_BYTES) return `the $6$ hash is ${hash.length} bytes long instead of ${HASH_BYTES}`;
    return { kind: 'sha512', salt, hash };
  }
  if (parts[1] === '7') {
    if (parts.length !== 5) return 'a $7$ hash has the form $7$<iterations>$<salt>$<hash>';
    const iterations = /^[1-9][0-9]{0,9}$/.test(parts[2]) ? Number(parts[2]) : NaN;
    if (!(iterations <= MAX_PBKDF2_ITERATIONS)) {
      return `the iteration count ${JSON.stringify(parts[2])} is not an integer from 1 to ${MAX_PBKDF2_ITERATIONS}`;
    }
    const salt = decodeBase64(parts[3]);
    const hash = decodeBase64(parts[4]);
    if (salt === null || hash === null) return 'the salt or hash of the $7$ entry is not valid base64';
    if (hash.length !== HASH_BYTES) return `the $7$ hash is ${hash.length} bytes long instead of ${HASH_BYTES}`;
    return { kind: 'pbkdf2-sha512', iterations, salt, hash };
  }
  return `unknown hash type $${parts[1]}$; only $6$ and $7$ (from mosquitto_passwd) are supported`;
}

function decodeBase64(text: string): Buffer | null {
  if (!BASE64.test(text)) return null;
  return Buffer.from(text, 'base64');
}

/**
 * Parses the text of a password file. Blank lines and lines starting with `#` are skipped.
 * Throws PasswordFileError naming each bad line; a plain-text password (never run through
 * mosquitto_passwd) counts as bad, so it is never compared as written.
 */
export function parsePasswordFile(text: string, fileName: string): Map<string, PasswordEntry> {
  const entries = new Map<string, PasswordEntry>();
  const problems: string[] = [];
  const lines = text.split('\n');
  for (let index = 0; index < lines.length; index++) {
    const line = lines[index].replace(/\r$/, '').trim();
    if (line === '' || line.startsWith('#')) continue;
    const where = `${fileName}:${index + 1}`;
    const colon = line.indexOf(':');
    if (colon <= 0) {
      problems.push(`${where}: expected username:hash`);
      continue;
    }
    const username = line.slice(0, colon);
    const hashText = line.slice(colon + 1);
    const hash = parseHash(hashText);
    if (typeof hash === 'string') {
      problems.push(`${where}: user ${JSON.stringify(username)}: ${hash}; set the password again with outpost passwd or mosquitto_passwd`);
      continue;
    }
    if (entries.has(username)) {
      problems.push(`${where}: user ${JSON.stringify(username)} appears a second time; remove one of the lines`);
      continue;
    }
    entries.set(username, { username, hashText, hash });
  }
  if (problems.length > 0) throw new PasswordFileError(problems);
  return entries;
}

/** Computes the hash of `password` with the salt and parameters of `reference`. */
async function computeHash(reference: PasswordHash, password: Buffer): Promise<Buffer> {
  if (reference.kind === 'sha512') {
    return createHash('sha512').update(password).update(reference.salt).digest();
  }
  return pbkdf2Async(password, reference.salt, reference.iterations, HASH_BYTES, 'sha512');
}

/** Checks `password` against a stored hash in constant time. PBKDF2 runs on the libuv thread pool. */
export async function verifyPassword(hash: PasswordHash, password: Buffer): Promise<boolean> {
  const computed = await computeHash(hash, password);
  return computed.length === hash.hash.length && timingSafeEqual(computed, hash.hash);
}

/**
 * A hash to check passwords of unknown users against, so that a wrong user name takes as long as
 * a wrong password and the response time does not tell which user names exist.
 */
export const UNKNOWN_USER_HASH: PasswordHash = {
  kind: 'pbkdf2-sha512',
  iterations: DEFAULT_PBKDF2_ITERATIONS,
  salt: randomBytes(SALT_BYTES),
  hash: randomBytes(HASH_BYTES),
};

export type HashAlgorithm = 'sha512-pbkdf2' | 'sha512';

/** Hashes a new password in the form mosquitto_passwd writes for `algorithm`. */
export async function hashPassword(
  password: Buffer,
  algorithm: HashAlgorithm = 'sha512-pbkdf2',
  iterations: number = DEFAULT_PBKDF2_ITERATIONS,
): Promise<string> {
  const salt = randomBytes(SALT_BYTES);
  if (algorithm === 'sha512') {
    const hash = createHash('sha512').update(password).update(salt).digest();
    return `$6$${salt.toString('base64')}$${hash.toString('base64')}`;
  }
  const hash = await pbkdf2Async(password, salt, iterations, HASH_BYTES, 'sha512');
  return `$7$${iterations}$${salt.toString('base64')}$${hash.toString('base64')}`;
}

/** Number of successful logins the verification cache keeps. */
const VERIFIED_CACHE_SIZE = 1024;

/**
 * Remembers recent successful logins, so a client that reconnects does not pay for PBKDF2 again.
 * Keys are an HMAC of user name, stored hash and password under a key made at process start, so
 * the cache contains no password, and a changed hash in the file no longer matches.
 */
export class VerifiedLoginCache {
  private readonly key = randomBytes(32);
  private readonly entries = new Set<string>();

  private cacheKey(entry: PasswordEntry, password: Buffer): string {
    return createHmac('sha256', this.key).update(entry.username).update('\0').update(entry.hashText).update('\0').update(password).digest('base64');
  }

  has(entry: PasswordEntry, password: Buffer): boolean {
    return this.entries.has(this.cacheKey(entry, password));
  }

  add(entry: PasswordEntry, password: Buffer): void {
    if (this.entries.size >= VERIFIED_CACHE_SIZE) {
      // Sets iterate in insertion order, so this evicts the oldest entry.
      const oldest = this.entries.values().next().value;
      if (oldest !== undefined) this.entries.delete(oldest);
    }
    this.entries.add(this.cacheKey(entry, password));
  }

  clear(): void {
    this.entries.clear();
  }
}

/** Returns why a user name cannot go into a password file, or null when it can. */
export function checkUsername(username: string): string | null {
  if (username === '') return 'the user name is empty';
  if (username.includes(':')) return 'the user name contains ":", which separates user name and hash in the file';
  if (/[\r\n\u0000]/.test(username)) return 'the user name contains a line break or U+0000';
  if (username.startsWith('#')) return 'the user name starts with "#", which marks a comment line';
  if (username !== username.trim()) return 'the user name starts or ends with white space, which the file format drops';
  return null;
}

/**
 * Returns the text of a password file with `username` set to `hashText` (or removed when
 * `hashText` is null). Other lines, comments included, are kept as they are.
 */
export function updatePasswordText(text: string, username: string, hashText: string | null): { text: string; found: boolean } {
  const lines = text === '' ? [] : text.replace(/\n$/, '').split('\n');
  const output: string[] = [];
  let found = false;
  for (const line of lines) {
    const colon = line.indexOf(':');
    const isUser = colon > 0 && !line.trimStart().startsWith('#') && line.slice(0, colon).trim() === username;
    if (!isUser) {
      output.push(line);
      continue;
    }
    found = true;
    if (hashText !== null) output.push(`${username}:${hashText}`);
  }
  if (!found && hashText !== null) output.push(`${username}:${hashText}`);
  return { text: output.length === 0 ? '' : `${output.join('\n')}\n`, found };
}
