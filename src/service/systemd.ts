/**
 * Service notification for systemd (the sd_notify protocol): READY=1, STATUS=, STOPPING=1 and
 * watchdog pings, sent to the unix datagram socket named by NOTIFY_SOCKET.
 *
 * Node.js has no unix datagram sockets, so each message is sent by the `systemd-notify` program
 * (package systemd) as a child process. systemd accepts messages from a process other than the
 * main PID only with `NotifyAccess=all` in the unit. After the message, `systemd-notify` sends
 * BARRIER=1 and waits until the manager has processed both (seen with systemd 252 and 257), so
 * the short-lived sender is still alive when systemd looks up which unit it belongs to.
 *
 * Without NOTIFY_SOCKET (not started by systemd, or `Type=` other than notify) every method is
 * a no-op.
 */

import { execFile, type ExecFileException } from 'node:child_process';

import type { Logger } from './logger.js';

/** Time a `systemd-notify` child may take, barrier included, before it is killed. */
const SEND_TIMEOUT_MS = 10_000;

/** Interval for rate-limited warnings about failed sends, so a broken socket logs once a minute. */
const FAILURE_LOG_INTERVAL_MS = 60_000;

export interface SystemdNotifierOptions {
  /** Environment to read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID from; default process.env. */
  env?: NodeJS.ProcessEnv;
  /** The program that sends one message; default `systemd-notify`, looked up in PATH. */
  program?: string;
  /** Process id that WATCHDOG_PID must match; default process.pid. */
  pid?: number;
}

/** A running watchdog timer. */
export interface Watchdog {
  /** Interval between two pings, in milliseconds: half of WATCHDOG_USEC. */
  readonly intervalMs: number;
  stop(): void;
}

export class SystemdNotifier {
  /** Path of the notification socket, or undefined when notification is off. */
  readonly socketPath: string | undefined;
  private readonly env: NodeJS.ProcessEnv;
  private readonly program: string;
  private readonly pid: number;
  private readonly logger: Logger;
  /** The last queued send. Messages go out one at a time, so READY=1 cannot overtake STATUS=. */
  private tail: Promise<void> = Promise.resolve();
  private watchdogPingQueued = false;

  constructor(logger: Logger, options: SystemdNotifierOptions = {}) {
    this.env = options.env ?? process.env;
    this.program = options.program ?? 'systemd-notify';
    this.pid = options.pid ?? process.pid;
    this.logger = logger;
    const socketPath = this.env.NOTIFY_SOCKET;
    this.socketPath = socketPath === undefined || socketPath === '' ? undefined : socketPath;
  }

  get enabled(): boolean {
    return this.socketPath !== undefined;
  }

  /** Sends READY=1, with STATUS= when `status` is given. Call it once the service accepts clients. */
  notifyReady(status?: string): Promise<void> {
    const assignments = ['READY=1'];
    if (status !== undefined) assignments.push(statusAssignment(status));
    return this.send(assignments);
  }

  /** Sends STATUS=, the one-line text that `systemctl status` shows. */
  notifyStatus(status: string): Promise<void> {
    return this.send([statusAssignment(status)]);
  }

  /** Sends STOPPING=1, with STATUS= when `status` is given. */
  notifyStopping(status?: string): Promise<void> {
    const assignments = ['STOPPING=1'];
    if (status !== undefined) assignments.push(statusAssignment(status));
    return this.send(assignments);
  }

  /**
   * Starts sending WATCHDOG=1 at half the interval that systemd set in WATCHDOG_USEC
   * (`WatchdogSec=` in the unit). The pings come from a timer on the event loop, so a loop that
   * is blocked sends none and systemd restarts the service. Returns undefined when notification
   * is off, WATCHDOG_USEC is unset, or WATCHDOG_PID names another process.
   */
  startWatchdog(): Watchdog | undefined {
    if (!this.enabled) return undefined;
    const intervalMs = this.watchdogIntervalMs();
    if (intervalMs === undefined) return undefined;

    const timer = setInterval(() => this.pingWatchdog(), intervalMs);
    // The watchdog alone must not keep the process alive once the broker has stopped.
    timer.unref();
    this.logger.info('systemd watchdog started', { interval_ms: intervalMs });
    return {
      intervalMs,
      stop: () => clearInterval(timer),
    };
  }

  /** Returns half of WATCHDOG_USEC in milliseconds, or undefined when the watchdog is not for this process. */
  private watchdogIntervalMs(): number | undefined {
    const usecText = this.env.WATCHDOG_USEC;
    if (usecText === undefined || usecText === '') return undefined;

    const pidText = this.env.WATCHDOG_PID;
    if (pidText !== undefined && pidText !== '' && pidText !== String(this.pid)) {
      this.logger.debug('WATCHDOG_PID names another process; no watchdog pings', { watchdog_pid: pidText, pid: this.pid });
      return undefined;
    }

    const usec = /^\d{1,15}$/.test(usecText) ? Number(usecText) : NaN;
    if (!(usec > 0)) {
      this.logger.warn('invalid WATCHDOG_USEC; expected a positive number of microseconds, so no watchdog pings are sent', {
        watchdog_usec: usecText,
      });
      return undefined;
    }
    return Math.max(1, Math.floor(usec / 2000));
  }

  private pingWatchdog(): void {
    // A ping still waiting behind a slow send makes another one pointless.
    if (this.watchdogPingQueued) return;
    this.watchdogPingQueued = true;
    this.send(['WATCHDOG=1']).then(
      () => {
        this.watchdogPingQueued = false;
      },
      () => {
        this.watchdogPingQueued = false;
      },
    );
  }

  /** Queues one message. The returned promise resolves after the send; it never rejects. */
  private send(assignments: string[]): Promise<void> {
    const socketPath = this.socketPath;
    if (socketPath === undefined) return Promise.resolve();
    const sent = this.tail.then(() => this.runProgram(socketPath, assignments));
    this.tail = sent;
    return sent;
  }

  private runProgram(socketPath: string, assignments: string[]): Promise<void> {
    const env: NodeJS.ProcessEnv = { NOTIFY_SOCKET: socketPath };
    if (this.env.PATH !== undefined) env.PATH = this.env.PATH;

    return new Promise((resolve) => {
      execFile(this.program, assignments, { env, timeout: SEND_TIMEOUT_MS }, (error, _stdout, stderr) => {
        if (error !== null) this.reportFailure(error, stderr, assignments);
        resolve();
      });
    });
  }

  private reportFailure(error: ExecFileException, stderr: string, assignments: string[]): void {
    const message = assignments[0] ?? '';
    const variable = message.slice(0, message.indexOf('='));
    if (error.code === 'ENOENT') {
      this.logger.limited('error', 'systemd-notify-missing', FAILURE_LOG_INTERVAL_MS, 'systemd-notify program not found; install the systemd package, or systemd will not see the service as started', {
        program: this.program,
        variable,
      });
      return;
    }
    this.logger.limited('warn', `systemd-notify-failed-${variable}`, FAILURE_LOG_INTERVAL_MS, 'failed to send a notification to systemd', {
      program: this.program,
      variable,
      socket: this.socketPath,
      error: stderr.trim() === '' ? error.message : stderr.trim(),
    });
  }
}

/** Builds a STATUS= assignment. A newline would start a new assignment, so it becomes a space. */
function statusAssignment(status: string): string {
  return `STATUS=${status.replace(/[\r\n]+/g, ' ')}`;
}
