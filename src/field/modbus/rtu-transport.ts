/**
 * Modbus RTU over a serial port: frames of unit id, PDU and CRC-16, one request at a time.
 *
 * A response is accepted only when its unit id and function code match the pending request, its
 * byte count fits and its CRC is right. Bytes that fail any check are dropped one at a time until
 * a valid frame starts. Everything that arrives while no request is pending (a late response
 * after a timeout, another master's traffic) is dropped too, so no response is credited to the
 * wrong device. The input buffer is cleared before each request.
 */

import type { Logger } from '../../service/logger.js';
import { ReopeningSerialPort, type SerialSettings } from '../serial-port.js';
import { crc16 } from './crc.js';
import { ModbusBusClosedError, ModbusTimeoutError } from './errors.js';
import { encodeRequest, functionCodeOf, parseResponse, responseLength, type ModbusRequest, type ModbusResponse } from './pdu.js';
import type { ModbusTransport, TransportEvents, TransportStats } from './transport.js';

/** The longest RTU frame is 256 bytes; more buffered bytes cannot belong to one response. */
const MAX_FRAME_BYTES = 256;
const EXCEPTION_FRAME_BYTES = 5;

interface PendingRequest {
  unitId: number;
  request: ModbusRequest;
  functionCode: number;
  /** Length of the normal response frame, unit id and CRC included. */
  frameLength: number;
  resolve(response: ModbusResponse): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
}

export class RtuTransport implements ModbusTransport {
  readonly stats: TransportStats = { requests: 0, timeouts: 0, discarded: 0 };
  private readonly port: ReopeningSerialPort;
  private buffer: Buffer = Buffer.alloc(0);
  private pending: PendingRequest | null = null;
  /** Time of the last byte sent or received, for the silent interval between frames. */
  private lastActivityAt = 0;
  private readonly silentIntervalMs: number;
  /** Time one character takes on the wire. */
  private readonly characterMs: number;

  constructor(
    private readonly busName: string,
    settings: SerialSettings,
    private readonly events: TransportEvents,
    private readonly logger: Logger,
  ) {
    this.port = new ReopeningSerialPort(settings, { data: (chunk) => this.onData(chunk), open: () => events.open(), close: (reason) => this.onClose(reason) }, logger);
    // Modbus over Serial Line v1.02 section 2.5.1.1: 3.5 character times between frames, and a
    // fixed 1.75 ms above 19200 bit/s. A character is 11 bits (start, 8 data, parity or second stop, stop).
    this.characterMs = (11 * 1000) / settings.baud_rate;
    this.silentIntervalMs = settings.baud_rate > 19_200 ? 1.75 : 3.5 * this.characterMs;
  }

  get isOpen(): boolean {
    return this.port.isOpen;
  }

  get closedReason(): string {
    return this.port.closedReason;
  }

  get failedAttempts(): number {
    return this.port.failedAttempts;
  }

  start(): void {
    this.port.start();
  }

  async stop(): Promise<void> {
    this.failPending(new ModbusBusClosedError(this.busName, 'stopped'));
    await this.port.stop();
  }

  async transact(unitId: number, request: ModbusRequest, timeoutMs: number): Promise<ModbusResponse> {
    if (this.pending !== null) throw new Error(`bus ${this.busName}: a request is already pending`);
    if (!this.port.isOpen) throw new ModbusBusClosedError(this.busName, this.port.closedReason);
    const pdu = encodeRequest(request);

    const silence = this.lastActivityAt + this.silentIntervalMs - performance.now();
    if (silence > 0) await new Promise((resolve) => setTimeout(resolve, Math.ceil(silence)));
    if (!this.port.isOpen) throw new ModbusBusClosedError(this.busName, this.port.closedReason);

    if (this.buffer.length > 0) {
      this.stats.discarded += this.buffer.length;
      this.logger.limited('debug', `rtu-stale:${this.busName}`, 10_000, 'dropped bytes received between requests', { bus: this.busName, bytes: this.buffer.length });
      this.buffer = Buffer.alloc(0);
    }

    const frame = Buffer.alloc(pdu.length + 3);
    frame[0] = unitId;
    pdu.copy(frame, 1);
    frame.writeUInt16LE(crc16(frame, 0, pdu.length + 1), pdu.length + 1);

    this.stats.requests++;
    const frameLength = responseLength(request) + 3;
    // The timeout is the device's time to respond. The time both frames take on the wire is added
    // to it, because a 125-register response alone takes about 290 ms at 9600 bit/s.
    const waitMs = timeoutMs + Math.ceil((frame.length + frameLength) * this.characterMs);
    return new Promise<ModbusResponse>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.pending?.timer !== timer) return;
        this.pending = null;
        this.stats.timeouts++;
        reject(new ModbusTimeoutError(unitId, waitMs));
      }, waitMs);
      this.pending = { unitId, request, functionCode: functionCodeOf(request), frameLength, resolve, reject, timer };
      this.lastActivityAt = performance.now();
      if (!this.port.write(frame)) this.failPending(new ModbusBusClosedError(this.busName, this.port.closedReason));
    });
  }

  private onData(chunk: Buffer): void {
    this.lastActivityAt = performance.now();
    if (this.pending === null) {
      // A late response or foreign traffic: nothing waits for it.
      this.stats.discarded += chunk.length;
      return;
    }
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    if (this.buffer.length > MAX_FRAME_BYTES) {
      this.stats.discarded += this.buffer.length - MAX_FRAME_BYTES;
      this.buffer = this.buffer.subarray(this.buffer.length - MAX_FRAME_BYTES);
    }
    this.scanForResponse(this.pending);
  }

  /** Looks for a valid response to `pending` in the buffer, dropping bytes that cannot start one. */
  private scanForResponse(pending: PendingRequest): void {
    while (this.buffer.length >= EXCEPTION_FRAME_BYTES) {
      const length = this.candidateLength(pending);
      if (length === undefined) {
        this.dropBytes(1);
        continue;
      }
      if (this.buffer.length < length) return;
      if (crc16(this.buffer, 0, length - 2) !== this.buffer.readUInt16LE(length - 2)) {
        this.logger.limited('debug', `rtu-crc:${this.busName}`, 10_000, 'dropped a frame with a wrong CRC', { bus: this.busName, unit_id: pending.unitId });
        this.dropBytes(1);
        continue;
      }
      const pdu = Buffer.from(this.buffer.subarray(1, length - 2));
      this.dropBytes(length);
      this.stats.discarded -= length;
      clearTimeout(pending.timer);
      this.pending = null;
      try {
        pending.resolve(parseResponse(pending.request, pdu));
      } catch (error: unknown) {
        pending.reject(error instanceof Error ? error : new Error(String(error)));
      }
      return;
    }
  }

  /** Returns the frame length if the buffer starts like a response to `pending`, else undefined. */
  private candidateLength(pending: PendingRequest): number | undefined {
    const unitId = this.buffer[0];
    const functionCode = this.buffer[1];
    if (unitId !== pending.unitId) return undefined;
    if (functionCode === (pending.functionCode | 0x80)) return EXCEPTION_FRAME_BYTES;
    if (functionCode !== pending.functionCode) return undefined;
    if (pending.request.kind === 'read' && this.buffer[2] !== pending.frameLength - 5) return undefined;
    return pending.frameLength;
  }

  private dropBytes(count: number): void {
    this.stats.discarded += count;
    this.buffer = this.buffer.subarray(count);
  }

  private onClose(reason: string): void {
    this.buffer = Buffer.alloc(0);
    this.failPending(new ModbusBusClosedError(this.busName, reason));
    this.events.close(reason);
  }

  private failPending(error: Error): void {
    const pending = this.pending;
    if (pending === null) return;
    this.pending = null;
    clearTimeout(pending.timer);
    pending.reject(error);
  }
}
