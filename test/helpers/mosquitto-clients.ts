import { spawn } from 'node:child_process';

/** Debian's mosquitto-clients package installs its tools here. */
const MOSQUITTO_PUB = '/usr/bin/mosquitto_pub';
const MOSQUITTO_SUB = '/usr/bin/mosquitto_sub';
/**
 * mosquitto_sub block-buffers stdout when it is a pipe, so the SUBACK line would arrive only at
 * exit. coreutils' stdbuf makes it line-buffered.
 */
const STDBUF = '/usr/bin/stdbuf';

/** Value of the `-V` option of mosquitto_pub and mosquitto_sub. */
export type MosquittoProtocol = 'mqttv31' | 'mqttv311' | 'mqttv5';

export interface ProcessResult {
  /** Exit code, or null when the process ended on a signal (for example after the timeout). */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** True when the helper killed the process because it ran past its timeout. */
  timedOut: boolean;
}

interface RunOptions {
  input?: string;
  timeoutMs: number;
  /** Called with each chunk of stdout as it arrives. */
  onStdout?: (text: string) => void;
}

interface RunningProcess {
  result: Promise<ProcessResult>;
  /** Sends `signal` (SIGTERM unless given) to the process if it is still running. */
  kill(signal?: NodeJS.Signals): void;
}

function runProcess(command: string, args: string[], options: RunOptions): RunningProcess {
  const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  let timedOut = false;

  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (text: string) => {
    stdout += text;
    options.onStdout?.(text);
  });
  child.stderr.on('data', (text: string) => {
    stderr += text;
  });
  // The tool may exit before it reads all of stdin. Its exit code reports the failure instead.
  child.stdin.on('error', () => undefined);
  child.stdin.end(options.input ?? '');

  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, options.timeoutMs);

  const result = new Promise<ProcessResult>((resolve, reject) => {
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`failed to start ${command}: ${error.message}`));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
  });

  return {
    result,
    kill(signal: NodeJS.Signals = 'SIGTERM'): void {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill(signal);
      }
    },
  };
}

export interface PublishOptions {
  topic: string;
  /** Payload for `-m`; ignored when `lines` is given. */
  message?: string;
  /** Publishes one message per line read from stdin (`-l`). */
  lines?: string[];
  qos?: 0 | 1 | 2;
  retain?: boolean;
  protocol?: MosquittoProtocol;
  clientId?: string;
  /** Further command-line arguments, appended as given. */
  extraArgs?: string[];
  timeoutMs?: number;
}

/** Runs mosquitto_pub against 127.0.0.1:`port` and resolves when it exits. */
export function mosquittoPub(port: number, options: PublishOptions): Promise<ProcessResult> {
  const args = ['-h', '127.0.0.1', '-p', String(port), '-t', options.topic];
  args.push('-V', options.protocol ?? 'mqttv311', '-q', String(options.qos ?? 0));
  if (options.clientId !== undefined) {
    args.push('-i', options.clientId);
  }
  if (options.retain === true) {
    args.push('-r');
  }

  let input: string | undefined;
  if (options.lines !== undefined) {
    args.push('-l');
    input = options.lines.map((line) => `${line}\n`).join('');
  } else if (options.message !== undefined) {
    args.push('-m', options.message);
  } else {
    args.push('-n');
  }
  args.push(...(options.extraArgs ?? []));

  const run = runProcess(MOSQUITTO_PUB, args, { input, timeoutMs: options.timeoutMs ?? 5000 });
  return run.result;
}

/** One message as printed by mosquitto_sub with the helper's output format. */
export interface ReceivedMessage {
  topic: string;
  qos: number;
  retain: boolean;
  payload: string;
}

export interface SubscribeOptions {
  topics: string[];
  /** Exit after this many messages (`-C`). */
  count: number;
  /** Exit after this many seconds without finishing (`-W`); the default is 5. */
  timeoutSeconds?: number;
  qos?: 0 | 1 | 2;
  protocol?: MosquittoProtocol;
  clientId?: string;
  extraArgs?: string[];
}

export interface MosquittoSubscription {
  /** Resolves when the broker has acknowledged every subscription (SUBACK seen in debug output). */
  subscribed: Promise<void>;
  /** Resolves when mosquitto_sub exits, after `count` messages or on its `-W` timeout. */
  done: Promise<{ result: ProcessResult; messages: ReceivedMessage[] }>;
  /** Sends `signal` (SIGTERM unless given) to mosquitto_sub if it is still running. */
  kill(signal?: NodeJS.Signals): void;
}

const MESSAGE_PREFIX = 'MSG\t';

/**
 * Starts mosquitto_sub against 127.0.0.1:`port`. It runs with `-d` so the helper can see the
 * SUBACK, and prints each message as `MSG<tab>topic<tab>qos<tab>retain<tab>payload`, so payloads
 * must not contain newlines.
 */
export function mosquittoSub(port: number, options: SubscribeOptions): MosquittoSubscription {
  const timeoutSeconds = options.timeoutSeconds ?? 5;
  const args = ['-h', '127.0.0.1', '-p', String(port), '-d'];
  args.push('-V', options.protocol ?? 'mqttv311', '-q', String(options.qos ?? 0));
  args.push('-C', String(options.count), '-W', String(timeoutSeconds));
  args.push('-F', `${MESSAGE_PREFIX}%t\t%q\t%r\t%p`);
  if (options.clientId !== undefined) {
    args.push('-i', options.clientId);
  }
  for (const topic of options.topics) {
    args.push('-t', topic);
  }
  args.push(...(options.extraArgs ?? []));

  let markSubscribed: () => void = () => undefined;
  const subscribed = new Promise<void>((resolve) => {
    markSubscribed = resolve;
  });
  let output = '';
  const run = runProcess(STDBUF, ['-oL', MOSQUITTO_SUB, ...args], {
    // The process gets one second beyond its own -W timeout before the helper kills it.
    timeoutMs: (timeoutSeconds + 1) * 1000,
    onStdout: (text) => {
      output += text;
      if (output.includes('received SUBACK')) {
        markSubscribed();
      }
    },
  });

  const done = run.result.then((result) => ({ result, messages: parseMessages(result.stdout) }));
  const subscribedOrExited = Promise.race([
    subscribed,
    done.then(({ result }) => {
      if (!output.includes('received SUBACK')) {
        throw new Error(
          `mosquitto_sub exited (code ${String(result.code)}) before its SUBACK: ${result.stderr}${result.stdout}`,
        );
      }
    }),
  ]);

  return { subscribed: subscribedOrExited, done, kill: run.kill };
}

function parseMessages(stdout: string): ReceivedMessage[] {
  const messages: ReceivedMessage[] = [];
  for (const line of stdout.split('\n')) {
    if (!line.startsWith(MESSAGE_PREFIX)) {
      continue;
    }
    const [topic = '', qos = '', retain = '', ...payload] = line.slice(MESSAGE_PREFIX.length).split('\t');
    messages.push({ topic, qos: Number(qos), retain: retain === '1', payload: payload.join('\t') });
  }
  return messages;
}

/**
 * Subscribes with mosquitto_sub, runs `publish` once the SUBACK arrived, and resolves with the
 * messages when `count` of them arrived or the `-W` timeout ended the subscriber.
 */
export async function subscribe(
  port: number,
  options: SubscribeOptions,
  publish: () => Promise<unknown> = async () => undefined,
): Promise<{ result: ProcessResult; messages: ReceivedMessage[] }> {
  const subscription = mosquittoSub(port, options);
  try {
    await subscription.subscribed;
    await publish();
    return await subscription.done;
  } finally {
    subscription.kill();
  }
}
