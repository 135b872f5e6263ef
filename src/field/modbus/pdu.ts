/**
 * Modbus protocol data units (function code and data, without the RTU or TCP framing) for the
 * functions Outpost uses: reads with codes 1 to 4, writes with codes 5, 6, 15 and 16.
 */

import { ModbusExceptionError, ModbusResponseError } from './errors.js';

/** Request size limits of the Modbus Application Protocol v1.1b3 (sections 6.1 to 6.12). */
export const MAX_READ_BITS = 2000;
export const MAX_READ_REGISTERS = 125;
export const MAX_WRITE_BITS = 1968;
export const MAX_WRITE_REGISTERS = 123;

export type ReadFunctionCode = 1 | 2 | 3 | 4;

export type ModbusRequest =
  | { kind: 'read'; functionCode: ReadFunctionCode; address: number; count: number }
  | { kind: 'write-coil'; address: number; value: boolean }
  | { kind: 'write-register'; address: number; value: number }
  | { kind: 'write-coils'; address: number; values: boolean[] }
  | { kind: 'write-registers'; address: number; values: number[] };

/** A parsed normal response: the bits of a coil or discrete input read, or the registers of a register read. */
export interface ModbusResponse {
  bits: boolean[];
  registers: number[];
}

export function functionCodeOf(request: ModbusRequest): number {
  switch (request.kind) {
    case 'read':
      return request.functionCode;
    case 'write-coil':
      return 5;
    case 'write-register':
      return 6;
    case 'write-coils':
      return 15;
    case 'write-registers':
      return 16;
  }
}

/** Encodes the request PDU. Throws RangeError for a count or value outside what the protocol allows. */
export function encodeRequest(request: ModbusRequest): Buffer {
  checkAddress(request.address);
  switch (request.kind) {
    case 'read': {
      const limit = request.functionCode <= 2 ? MAX_READ_BITS : MAX_READ_REGISTERS;
      checkCount(request.count, limit, request.address);
      const pdu = Buffer.alloc(5);
      pdu.writeUInt8(request.functionCode, 0);
      pdu.writeUInt16BE(request.address, 1);
      pdu.writeUInt16BE(request.count, 3);
      return pdu;
    }
    case 'write-coil': {
      const pdu = Buffer.alloc(5);
      pdu.writeUInt8(5, 0);
      pdu.writeUInt16BE(request.address, 1);
      pdu.writeUInt16BE(request.value ? 0xff00 : 0x0000, 3);
      return pdu;
    }
    case 'write-register': {
      checkRegister(request.value);
      const pdu = Buffer.alloc(5);
      pdu.writeUInt8(6, 0);
      pdu.writeUInt16BE(request.address, 1);
      pdu.writeUInt16BE(request.value, 3);
      return pdu;
    }
    case 'write-coils': {
      checkCount(request.values.length, MAX_WRITE_BITS, request.address);
      const byteCount = Math.ceil(request.values.length / 8);
      const pdu = Buffer.alloc(6 + byteCount);
      pdu.writeUInt8(15, 0);
      pdu.writeUInt16BE(request.address, 1);
      pdu.writeUInt16BE(request.values.length, 3);
      pdu.writeUInt8(byteCount, 5);
      request.values.forEach((value, index) => {
        if (value) pdu[6 + (index >> 3)] = (pdu[6 + (index >> 3)] ?? 0) | (1 << (index & 7));
      });
      return pdu;
    }
    case 'write-registers': {
      checkCount(request.values.length, MAX_WRITE_REGISTERS, request.address);
      const pdu = Buffer.alloc(6 + 2 * request.values.length);
      pdu.writeUInt8(16, 0);
      pdu.writeUInt16BE(request.address, 1);
      pdu.writeUInt16BE(request.values.length, 3);
      pdu.writeUInt8(2 * request.values.length, 5);
      request.values.forEach((value, index) => {
        checkRegister(value);
        pdu.writeUInt16BE(value, 6 + 2 * index);
      });
      return pdu;
    }
  }
}

/** Length in bytes of the normal response PDU to `request`, function code included. */
export function responseLength(request: ModbusRequest): number {
  if (request.kind !== 'read') return 5;
  if (request.functionCode <= 2) return 2 + Math.ceil(request.count / 8);
  return 2 + 2 * request.count;
}

/**
 * Parses a response PDU whose function code is the request's or the request's with bit 7 set.
 * Throws ModbusExceptionError for an exception response and ModbusResponseError when the
 * content does not match the request.
 */
export function parseResponse(request: ModbusRequest, pdu: Buffer): ModbusResponse {
  const functionCode = functionCodeOf(request);
  const received = pdu[0];
  if (received === (functionCode | 0x80)) {
    throw new ModbusExceptionError(pdu[1] ?? 0, functionCode);
  }
  if (received !== functionCode) {
    throw new ModbusResponseError(`response has function code ${String(received)}, expected ${functionCode}`);
  }
  const expectedLength = responseLength(request);
  if (pdu.length !== expectedLength) {
    throw new ModbusResponseError(`response to function code ${functionCode} has ${pdu.length} bytes, expected ${expectedLength}`);
  }

  if (request.kind === 'read') {
    const byteCount = pdu[1] ?? 0;
    if (byteCount !== expectedLength - 2) {
      throw new ModbusResponseError(`response byte count is ${byteCount}, expected ${expectedLength - 2}`);
    }
    if (request.functionCode <= 2) {
      const bits: boolean[] = [];
      for (let i = 0; i < request.count; i++) bits.push((((pdu[2 + (i >> 3)] ?? 0) >> (i & 7)) & 1) === 1);
      return { bits, registers: [] };
    }
    const registers: number[] = [];
    for (let i = 0; i < request.count; i++) registers.push(pdu.readUInt16BE(2 + 2 * i));
    return { bits: [], registers };
  }

  // Write responses echo the address, and the value (codes 5, 6) or the count (codes 15, 16).
  const echoed = encodeRequest(request).subarray(0, 5);
  if (!pdu.equals(echoed)) {
    throw new ModbusResponseError(`write response ${pdu.toString('hex')} does not echo the request ${echoed.toString('hex')}`);
  }
  return { bits: [], registers: [] };
}

function checkAddress(address: number): void {
  if (!Number.isInteger(address) || address < 0 || address > 0xffff) {
    throw new RangeError(`Modbus address ${address} is outside 0..65535`);
  }
}

function checkCount(count: number, limit: number, address: number): void {
  if (!Number.isInteger(count) || count < 1 || count > limit) {
    throw new RangeError(`count ${count} is outside 1..${limit}`);
  }
  if (address + count > 0x10000) {
    throw new RangeError(`address ${address} plus count ${count} passes the last address 65535`);
  }
}

function checkRegister(value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff) {
    throw new RangeError(`register value ${value} is outside 0..65535`);
  }
}
