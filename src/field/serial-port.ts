/**
 * A serial port that reopens itself. The port may fail to open (path missing, permission denied)
 * or close while in use (USB adapter unplugged, EIO from the tty). Either way it is opened again
 * after a wait that doubles from `reconnect_min_ms` to `reconnect_max_ms`, so polling resumes by
 * itself when the device comes back.
 */

import { createRequire } from 'node:module';

import type { SerialPort } from 'serialport';

import type { Logger } from '../service/logger.js';
import { Backoff } from './backoff.js';

const require = createRequire(import.meta.url);

/** Loads serialport when the first port opens, so that a gateway without serial devices does not spend its memory. */
function loadSerialPort(): typeof SerialPort {
  return (require('serialport') as typeof import('serialport')).SerialPort;
}

export interface SerialSettings {
  path: string;
  baud_rate: number;
  parity: 'none' | 'even' | 'odd';
  data_bits: number;
  stop_bits: number;
  reconnect_min_ms: number;
  reconnect_max_ms: number;
}

export interface SerialPortEvents {
  data(chunk: Buffer): void;
  open(): void;
  close(reason: string): void;
}

export class ReopeningSerialPort {
  private port: SerialPort | null = null;
  private open = false;
  private stopped = true;
  private reopenTimer: NodeJS.Timeout | null = null;
  private readonly backoff: Backoff;
  /** Reason the port is closed, for logs and for requests that cannot be sent. */
  private reason = 'not opened yet';
  private failures = 0;

  constructor(
    private readonly settings: SerialSettings,
    private readonly events: SerialPortEvents,
    private readonly logger: Logger,
  ) {
    this.backoff = new Backoff(settings.reconnect_min_ms, settings.reconnect_max_ms);
  }

  get isOpen(): boolean {
    return this.open;
  }

  get closedReason(): string {
    return this.reason;
  }

  /** Failed attempts to open the port (or losses of the open port) since it was last open. */
  get failedAttempts(): number {
    return this.failures;
  }

  start(): void {
    this.stopped = false;
    this.attemptOpen();
  }

  /** Closes the port and stops reopening it. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.reopenTimer !== null) clearTimeout(this.reopenTimer);
    this.reopenTimer = null;
    const port = this.port;
    this.port = null;
    this.open = false;
    this.reason = 'stopped';
    if (port === null || !port.isOpen) return;
    await new Promise<void>((resolve) => port.close(() => resolve()));
  }

  /** Writes bytes; returns false when the port is not open. */
  write(data: Buffer): boolean {
    const port = this.port;
    if (!this.open || port === null) return false;
    port.write(data, (error) => {
      if (error) this.handleFailure(port, `write failed: ${error.message}`);
    });
    return true;
  }

  private attemptOpen(): void {
    this.reopenTimer = null;
    if (this.stopped) return;
    const SerialPortClass = loadSerialPort();
    const port = new SerialPortClass({
      path: this.settings.path,
      baudRate: this.settings.baud_rate,
      parity: this.settings.parity,
      dataBits: this.settings.data_bits as 5 | 6 | 7 | 8,
      stopBits: this.settings.stop_bits as 1 | 2,
      autoOpen: false,
    });
    this.port = port;
    port.on('data', (chunk: Buffer) => {
      if (this.port === port) this.events.data(chunk);
    });
    port.on('error', (error: Error) => this.handleFailure(port, `port error: ${error.message}`));
    port.on('close', (error: Error | null) => this.handleFailure(port, error === null ? 'port closed' : `port closed: ${error.message}`));
    port.open((error) => {
      if (this.port !== port) return;
      if (error) {
        this.handleFailure(port, `open failed: ${error.message}`);
        return;
      }
      if (this.stopped) {
        port.close();
        return;
      }
      this.open = true;
      this.backoff.reset();
      const wasFailing = this.failures > 0;
      this.failures = 0;
      this.reason = 'open';
      this.logger.info(wasFailing ? 'serial port reopened' : 'serial port opened', { path: this.settings.path, baud_rate: this.settings.baud_rate });
      this.events.open();
    });
  }

  /** Handles every way a port can fail, once per port object: logs, reports and schedules a reopen. */
  private handleFailure(port: SerialPort | null, reason: string): void {
    if (port === null || this.port !== port || this.stopped) return;
    this.port = null;
    const wasOpen = this.open;
    this.open = false;
    this.reason = reason;
    this.failures++;
    port.removeAllListeners('data');
    // Keeps an 'error' listener so a late error of the discarded port cannot crash the process.
    port.removeAllListeners('error');
    port.on('error', () => undefined);
    if (port.isOpen) port.close();

    const delayMs = this.backoff.next();
    if (wasOpen) {
      this.logger.warn('serial port closed; reopening', { path: this.settings.path, reason, retry_in_ms: delayMs });
      this.events.close(reason);
    } else {
      this.logger.limited('warn', `serial-open:${this.settings.path}`, 60_000, 'serial port could not be opened; retrying', {
        path: this.settings.path,
        reason,
        attempts: this.failures,
        retry_in_ms: delayMs,
      });
    }
    this.reopenTimer = setTimeout(() => this.attemptOpen(), delayMs);
  }
}
