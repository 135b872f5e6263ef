/** Turning a value for a writable point into the Modbus write it needs (function code 5, 6, 15 or 16). */

import type { FieldValue } from './codec.js';
import type { ModbusRequest } from './modbus/pdu.js';
import type { PointSpec } from './model.js';
import { encodePointValue } from './values.js';

/** A checked write: the request to send, or a single bit to change in a holding register. */
export type PreparedWrite = { kind: 'request'; request: ModbusRequest } | { kind: 'register-bit'; address: number; bit: number; value: boolean };

/**
 * Checks `value` against the point and encodes it. Throws an Error whose message states why the
 * value cannot be written (read-only point, wrong type, out of range).
 */
export function prepareWrite(point: PointSpec, value: FieldValue): PreparedWrite {
  if (!point.writable) throw new Error(`point ${point.name} is read-only; set writable: true in the configuration to allow writes`);
  if (point.table === 'coil') {
    if (typeof value !== 'boolean') throw new TypeError(`${String(value)} is not a boolean`);
    return { kind: 'request', request: { kind: 'write-coil', address: point.address, value } };
  }
  if (point.table !== 'holding_register') throw new Error(`table ${point.table} is read-only in Modbus`);
  if (point.type === 'bool' && point.bit !== undefined) {
    if (typeof value !== 'boolean') throw new TypeError(`${String(value)} is not a boolean`);
    return { kind: 'register-bit', address: point.address, bit: point.bit, value };
  }
  const registers = encodePointValue(point, value);
  if (registers.length === 1) {
    return { kind: 'request', request: { kind: 'write-register', address: point.address, value: registers[0] ?? 0 } };
  }
  return { kind: 'request', request: { kind: 'write-registers', address: point.address, values: registers } };
}
