/**
 * `outpost passwd`: creates and updates Mosquitto password files, with the options of
 * `mosquitto_passwd`. The files it writes are read by Outpost and by Mosquitto 2.
 */

import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { parseArgs } from 'node:util';

import {
  checkUsername,
  DEFAULT_PBKDF2_ITERATIONS,
  hashPassword,
  MAX_PBKDF2_ITERATIONS,
  parsePasswordFile,
  PasswordFileError,
  updatePasswordText,
  type HashAlgorithm,
} from '../auth/password-file.js';

export const PASSWD_USAGE = `Usage: outpost passwd [-c | -D] [-H sha512-pbkdf2 | -H sha512] [-I N] FILE USER
       outpost passwd [-c] [-H ...] [-I N] -b FILE USER PASSWORD

Sets the password of USER in the Mosquitto password file FILE, or deletes USER.
Without -b the password is read twice from the terminal without echo, or once
from standard input when that is not a terminal.

Options:
  -b             batch mode: take the password from the command line (it is
                 then visible in the process list and the shell history)
  -c             create FILE, replacing an existing file
  -D             delete USER from FILE
  -H ALGORITHM   sha512-pbkdf2 (default, written as $7$) or sha512 (written as
                 $6$, for Mosquitto 1.6 and older; weak, avoid it)
  -I N           PBKDF2 iterations for sha512-pbkdf2 (default ${DEFAULT_PBKDF2_ITERATIONS}, 1..${MAX_PBKDF2_ITERATIONS})
  -h, --help     print this help and exit

Exit status: 0 on success, 1 on failure, 2 for a usage error.
`;

/** Input and output of the command: the password source and the message streams. */
export interface PasswdIo {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  /** Reads a password: twice with a prompt when on a terminal, else one line. */
  readPassword(): Promise<string>;
}

interface PasswdOptions {
  file: string;
  username: string;
  password: string | undefined;
  create: boolean;
  remove: boolean;
  algorithm: HashAlgorithm;
  iterations: number;
}

class PasswdUsageError extends Error {}

/** Runs `outpost passwd` with the arguments after `passwd`; resolves to the exit status. */
export async function runPasswd(args: readonly string[], io: PasswdIo = processIo()): Promise<number> {
  let options: PasswdOptions | 'help';
  try {
    options = parsePasswdArgs(args);
  } catch (error: unknown) {
    if (!(error instanceof PasswdUsageError)) throw error;
    io.stderr.write(`outpost passwd: ${error.message}\nRun 'outpost passwd --help' for usage.\n`);
    return 2;
  }
  if (options === 'help') {
    io.stdout.write(PASSWD_USAGE);
    return 0;
  }
  try {
    await updateFile(options, io);
    return 0;
  } catch (error: unknown) {
    io.stderr.write(`outpost passwd: ${error instanceof Error ? error.message : String(error)}\n`);
    return 1;
  }
}

function parsePasswdArgs(args: readonly string[]): PasswdOptions | 'help' {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...args],
      allowPositionals: true,
      options: {
        b: { type: 'boolean' },
        c: { type: 'boolean' },
        D: { type: 'boolean' },
        H: { type: 'string' },
        I: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (error: unknown) {
    throw new PasswdUsageError(error instanceof Error ? error.message : String(error));
  }
  const { values, positionals } = parsed;
  if (values.help === true) return 'help';

  if (values.c === true && values.D === true) throw new PasswdUsageError('-c and -D cannot be combined');
  const algorithm = values.H ?? 'sha512-pbkdf2';
  if (algorithm !== 'sha512-pbkdf2' && algorithm !== 'sha512') {
    throw new PasswdUsageError(`unknown hash algorithm ${JSON.stringify(algorithm)} for -H; use sha512-pbkdf2 or sha512`);
  }
  const iterations = values.I === undefined ? DEFAULT_PBKDF2_ITERATIONS : /^[0-9]{1,8}$/.test(values.I) ? Number(values.I) : NaN;
  if (!(iterations >= 1 && iterations <= MAX_PBKDF2_ITERATIONS)) {
    throw new PasswdUsageError(`invalid iteration count ${JSON.stringify(values.I)} for -I; use an integer from 1 to ${MAX_PBKDF2_ITERATIONS}`);
  }

  const expected = values.b === true ? 3 : 2;
  if (values.D === true && values.b === true) throw new PasswdUsageError('-D takes no password, so -b does not apply');
  if (positionals.length !== expected) {
    throw new PasswdUsageError(values.b === true ? 'expected FILE USER PASSWORD with -b' : 'expected FILE USER');
  }
  const [file, username, password] = positionals;
  const problem = checkUsername(username);
  if (problem !== null) throw new PasswdUsageError(`invalid user name ${JSON.stringify(username)}: ${problem}`);
  return { file, username, password, create: values.c === true, remove: values.D === true, algorithm, iterations };
}

async function updateFile(options: PasswdOptions, io: PasswdIo): Promise<void> {
  const { file, username } = options;
  let text = '';
  let mode = 0o600;
  let owner: { uid: number; gid: number } | null = null;
  if (!options.create) {
    if (!existsSync(file)) throw new Error(`${file}: file not found; use -c to create it`);
    text = readFileSync(file, 'utf8');
    const stats = statSync(file);
    mode = stats.mode & 0o777;
    owner = { uid: stats.uid, gid: stats.gid };
    // Refuse to rewrite a file that Outpost would not load, so no line is silently changed.
    try {
      parsePasswordFile(text, file);
    } catch (error: unknown) {
      if (error instanceof PasswordFileError) throw new Error(`${error.message}\nfix these lines first; the file was not changed`);
      throw error;
    }
  }

  let hashText: string | null = null;
  if (!options.remove) {
    const password = options.password ?? (await io.readPassword());
    if (password.includes('\n') || password.includes('\r')) throw new Error('the password contains a line break; choose another');
    hashText = await hashPassword(Buffer.from(password, 'utf8'), options.algorithm, options.iterations);
  }
  const updated = updatePasswordText(text, username, hashText);
  if (options.remove && !updated.found) throw new Error(`${file}: user ${JSON.stringify(username)} not found; the file was not changed`);
  writeAtomically(file, updated.text, mode, owner);
  let action = updated.found ? 'updated' : 'added';
  if (options.remove) action = 'deleted';
  io.stdout.write(`${file}: user ${JSON.stringify(username)} ${action}\n`);
}

/**
 * Writes to a temporary file beside `file` and renames it, so a reader never sees half a file.
 * The new file keeps the mode and, where this process may set it, the owner of the old one, so
 * the broker's service user can still read a file that root updated.
 */
function writeAtomically(file: string, text: string, mode: number, owner: { uid: number; gid: number } | null): void {
  const temporary = join(dirname(file), `.${basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    writeFileSync(temporary, text, { mode, flag: 'wx' });
    if (owner !== null && isRoot()) chownSync(temporary, owner.uid, owner.gid);
    renameSync(temporary, file);
  } catch (error: unknown) {
    rmSync(temporary, { force: true });
    throw error;
  }
}

function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

function processIo(): PasswdIo {
  return { stdout: process.stdout, stderr: process.stderr, readPassword: readPasswordFromStdin };
}

/** Reads the password from the terminal twice without echo, or one line from a pipe. */
async function readPasswordFromStdin(): Promise<string> {
  const stdin = process.stdin;
  if (!stdin.isTTY) {
    const line = await readLine(stdin, false);
    if (line === null) throw new Error('no password on standard input');
    return line;
  }
  process.stderr.write('Password: ');
  const first = await readLine(stdin, true);
  process.stderr.write('\nReenter password: ');
  const second = await readLine(stdin, true);
  process.stderr.write('\n');
  if (first === null || second === null) throw new Error('no password entered');
  if (first !== second) throw new Error('the passwords do not match; the file was not changed');
  return first;
}

/** Reads one line from `stream`; on a terminal in raw mode so the typed characters are not echoed. */
function readLine(stream: NodeJS.ReadStream, hidden: boolean): Promise<string | null> {
  return new Promise((resolve, reject) => {
    let line = '';
    if (hidden) stream.setRawMode(true);
    stream.setEncoding('utf8');
    const finish = (value: string | null, error?: Error): void => {
      stream.off('data', onData);
      stream.off('end', onEnd);
      if (hidden) stream.setRawMode(false);
      stream.pause();
      if (error !== undefined) reject(error);
      else resolve(value);
    };
    const onData = (chunk: string): void => {
      for (const character of chunk) {
        if (character === '\u0003') {
          finish(null, new Error('interrupted; the file was not changed'));
          return;
        }
        if (character === '\n' || character === '\r' || character === '\u0004') {
          finish(line);
          return;
        }
        if (character === '\u007f' || character === '\b') line = line.slice(0, -1);
        else line += character;
      }
    };
    const onEnd = (): void => finish(line === '' ? null : line);
    stream.on('data', onData);
    stream.on('end', onEnd);
    stream.resume();
  });
}
