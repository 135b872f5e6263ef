/** The interface of a Modbus connection (RTU or TCP) that a bus scheduler uses. */

import type { ModbusRequest, ModbusResponse } from './pdu.js';

export interface TransportEvents {
  /** The connection opened (first time or again); requests can be sent. */
  open(): void;
  /** The connection closed; requests fail with ModbusBusClosedError until `open` again. */
  close(reason: string): void;
}

/** Counters of one transport, for tests and status output. */
export interface TransportStats {
  requests: number;
  timeouts: number;
  /** Received bytes or frames that match no pending request: late, foreign or corrupt. */
  discarded: number;
}

export interface ModbusTransport {
  readonly isOpen: boolean;
  readonly closedReason: string;
  /** Failed attempts to open the connection since it was last open. */
  readonly failedAttempts: number;
  readonly stats: TransportStats;
  start(): void;
  stop(): Promise<void>;
  /**
   * Sends one request to `unitId` and resolves with its parsed response. Only one request may be
   * pending at a time. Rejects with ModbusTimeoutError, ModbusExceptionError,
   * ModbusResponseError or ModbusBusClosedError.
   */
  transact(unitId: number, request: ModbusRequest, timeoutMs: number): Promise<ModbusResponse>;
}
