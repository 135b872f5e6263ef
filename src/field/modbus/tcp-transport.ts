/**
 * Modbus TCP: MBAP header (transaction id, protocol id 0, length, unit id) and PDU over one TCP
 * connection, one request at a time. A response counts only when its transaction id, unit id and
 * function code match the pending request. A late response to a request that timed out carries an
 * old transaction id, so it is dropped. A lost connection is opened again with a doubling wait.
 */

import net from 'node:net';

import type { Logger } from '../../service/logger.js';
import { Backoff } from '../backoff.js';
import { ModbusBusClosedError, ModbusResponseError, ModbusTimeoutError } from './errors.js';
import { encodeRequest, functionCodeOf, parseResponse, type ModbusRequest, type ModbusResponse } from './pdu.js';
import type { ModbusTransport, TransportEvents, TransportStats } from './transport.js';

const MBAP_BYTES = 7;
/** The largest Modbus PDU is 253 bytes, so the MBAP length field (unit id + PDU) is at most 254. */
const MAX_MBAP_LENGTH = 254;

export interface TcpSettings {
  host: string;
  port: number;
  reconnect_min_ms: number;
  reconnect_max_ms: number;
  /** Time a connection attempt may take. */
  connect_timeout_ms: number;
}

interface PendingRequest {
  transactionId: number;
  unitId: number;
  request: ModbusRequest;
  resolve(response: ModbusResponse): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
}

export class TcpTransport implements ModbusTransport {
  readonly stats: TransportStats = { requests: 0, timeouts: 0, discarded: 0 };
  private socket: net.Socket | null = null;
  private connected = false;
  private stopped = true;
  private reason = 'not connected yet';
  private reconnectTimer: NodeJS.Timeout | null = null;
  private readonly backoff: Backoff;
  private failures = 0;
  private buffer: Buffer = Buffer.alloc(0);
  private pending: PendingRequest | null = null;
  private nextTransactionId = 1;

  constructor(
    private readonly busName: string,
    private readonly settings: TcpSettings,
    private readonly events: TransportEvents,
    private readonly logger: Logger,
  ) {
    this.backoff = new Backoff(settings.reconnect_min_ms, settings.reconnect_max_ms);
  }

  get isOpen(): boolean {
    return this.connected;
  }

  get closedReason(): string {
    return this.reason;
  }

  get failedAttempts(): number {
    return this.failures;
  }

  start(): void {
    this.stopped = false;
    this.connect();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.failPending(new ModbusBusClosedError(this.busName, 'stopped'));
    const socket = this.socket;
    this.socket = null;
    this.connected = false;
    this.reason = 'stopped';
    if (socket !== null && !socket.destroyed) {
      await new Promise<void>((resolve) => {
        socket.once('close', () => resolve());
        socket.destroy();
      });
    }
  }

  transact(unitId: number, request: ModbusRequest, timeoutMs: number): Promise<ModbusResponse> {
    if (this.pending !== null) return Promise.reject(new Error(`bus ${this.busName}: a request is already pending`));
    const socket = this.socket;
    if (!this.connected || socket === null) return Promise.reject(new ModbusBusClosedError(this.busName, this.reason));
    const pdu = encodeRequest(request);
    const transactionId = this.nextTransactionId;
    this.nextTransactionId = (this.nextTransactionId % 0xffff) + 1;

    const frame = Buffer.alloc(MBAP_BYTES + pdu.length);
    frame.writeUInt16BE(transactionId, 0);
    frame.writeUInt16BE(0, 2);
    frame.writeUInt16BE(pdu.length + 1, 4);
    frame.writeUInt8(unitId, 6);
    pdu.copy(frame, MBAP_BYTES);

    this.stats.requests++;
    return new Promise<ModbusResponse>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.pending?.timer !== timer) return;
        this.pending = null;
        this.stats.timeouts++;
        reject(new ModbusTimeoutError(unitId, timeoutMs));
      }, timeoutMs);
      this.pending = { transactionId, unitId, request, resolve, reject, timer };
      socket.write(frame);
    });
  }

  private connect(): void {
    this.reconnectTimer = null;
    if (this.stopped) return;
    const socket = net.connect({ host: this.settings.host, port: this.settings.port, noDelay: true });
    this.socket = socket;
    this.buffer = Buffer.alloc(0);
    socket.setTimeout(this.settings.connect_timeout_ms, () => {
      if (!this.connected) socket.destroy(new Error(`connection timed out after ${this.settings.connect_timeout_ms} ms`));
    });
    socket.on('connect', () => {
      if (this.socket !== socket) return;
      socket.setTimeout(0);
      socket.setKeepAlive(true, 10_000);
      this.connected = true;
      this.reason = 'open';
      this.backoff.reset();
      const wasFailing = this.failures > 0;
      this.failures = 0;
      this.logger.info(wasFailing ? 'Modbus TCP connection reopened' : 'Modbus TCP connection opened', { bus: this.busName, host: this.settings.host, port: this.settings.port });
      this.events.open();
    });
    socket.on('data', (chunk: Buffer) => {
      if (this.socket === socket) this.onData(chunk);
    });
    let lastError = 'connection closed by the peer';
    socket.on('error', (error: Error) => {
      lastError = error.message;
    });
    socket.on('close', () => this.onClose(socket, lastError));
  }

  private onData(chunk: Buffer): void {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    while (this.buffer.length >= MBAP_BYTES) {
      const protocolId = this.buffer.readUInt16BE(2);
      const length = this.buffer.readUInt16BE(4);
      if (protocolId !== 0 || length < 2 || length > MAX_MBAP_LENGTH) {
        // The stream is out of step, and MBAP has no way to find the next frame start.
        this.socket?.destroy(new Error(`invalid MBAP header ${this.buffer.subarray(0, MBAP_BYTES).toString('hex')}`));
        return;
      }
      if (this.buffer.length < 6 + length) return;
      const transactionId = this.buffer.readUInt16BE(0);
      const unitId = this.buffer[6] ?? 0;
      const pdu = Buffer.from(this.buffer.subarray(MBAP_BYTES, 6 + length));
      this.buffer = this.buffer.subarray(6 + length);
      this.onFrame(transactionId, unitId, pdu);
    }
  }

  private onFrame(transactionId: number, unitId: number, pdu: Buffer): void {
    const pending = this.pending;
    const functionCode = pdu[0] ?? 0;
    if (
      pending === null ||
      pending.transactionId !== transactionId ||
      pending.unitId !== unitId ||
      (functionCode & 0x7f) !== functionCodeOf(pending.request)
    ) {
      this.stats.discarded++;
      this.logger.limited('debug', `tcp-foreign:${this.busName}`, 10_000, 'dropped a response that matches no pending request', {
        bus: this.busName,
        transaction_id: transactionId,
        unit_id: unitId,
      });
      return;
    }
    this.pending = null;
    clearTimeout(pending.timer);
    try {
      pending.resolve(parseResponse(pending.request, pdu));
    } catch (error: unknown) {
      pending.reject(error instanceof Error ? error : new ModbusResponseError(String(error)));
    }
  }

  private onClose(socket: net.Socket, reason: string): void {
    if (this.socket !== socket) return;
    this.socket = null;
    const wasConnected = this.connected;
    this.connected = false;
    this.reason = reason;
    this.failPending(new ModbusBusClosedError(this.busName, reason));
    if (this.stopped) return;
    this.failures++;
    const delayMs = this.backoff.next();
    if (wasConnected) {
      this.logger.warn('Modbus TCP connection closed; reconnecting', { bus: this.busName, host: this.settings.host, port: this.settings.port, reason, retry_in_ms: delayMs });
      this.events.close(reason);
    } else {
      this.logger.limited('warn', `tcp-connect:${this.busName}`, 60_000, 'Modbus TCP connection failed; retrying', {
        bus: this.busName,
        host: this.settings.host,
        port: this.settings.port,
        reason,
        attempts: this.failures,
        retry_in_ms: delayMs,
      });
    }
    this.reconnectTimer = setTimeout(() => this.connect(), delayMs);
  }

  private failPending(error: Error): void {
    const pending = this.pending;
    if (pending === null) return;
    this.pending = null;
    clearTimeout(pending.timer);
    pending.reject(error);
  }
}
