/** Register codecs, read grouping, address notation, set payloads and line splitting of the field adapter. */

import { describe, expect, it } from 'vitest';

import { parseModiconAddress } from '../src/field/address.js';
import { decodeRegisters, encodeValue, registersToBytes, WORD_ORDERS, type DataType, type FieldValue } from '../src/field/codec.js';
import { groupPoints } from '../src/field/grouping.js';
import { hasValidNmeaChecksum, LineSplitter } from '../src/field/line-parser.js';
import type { PointSpec } from '../src/field/model.js';
import { changedBeyond, encodePointValue, formatPayload, parseSetPayload } from '../src/field/values.js';

function point(overrides: Partial<PointSpec>): PointSpec {
  return {
    name: 'p',
    deviceName: 'd',
    table: 'holding_register',
    address: 0,
    type: 'uint16',
    order: 'ABCD',
    stringRegisters: 1,
    bit: undefined,
    count: 1,
    scale: 1,
    offset: 0,
    precision: undefined,
    unit: '',
    onChange: false,
    deadband: 0,
    writable: true,
    qos: 0,
    retain: false,
    topic: 't',
    ...overrides,
  };
}

describe('register codec', () => {
  it('lays out float32 12.5 in every order', () => {
    expect(encodeValue(12.5, 'float32', 'ABCD', 1)).toEqual([0x4148, 0x0000]);
    expect(encodeValue(12.5, 'float32', 'CDAB', 1)).toEqual([0x0000, 0x4148]);
    expect(encodeValue(12.5, 'float32', 'BADC', 1)).toEqual([0x4841, 0x0000]);
    expect(encodeValue(12.5, 'float32', 'DCBA', 1)).toEqual([0x0000, 0x4841]);
  });

  it('reorders 64-bit values by register and byte', () => {
    const registers = [0x0102, 0x0304, 0x0506, 0x0708];
    expect(registersToBytes(registers, 'ABCD').toString('hex')).toBe('0102030405060708');
    expect(registersToBytes(registers, 'CDAB').toString('hex')).toBe('0708050603040102');
    expect(registersToBytes(registers, 'BADC').toString('hex')).toBe('0201040306050807');
    expect(registersToBytes(registers, 'DCBA').toString('hex')).toBe('0807060504030201');
  });

  const samples: [DataType, FieldValue][] = [
    ['int16', -32768],
    ['uint16', 65535],
    ['int32', -2147483648],
    ['uint32', 4294967295],
    ['int64', -9223372036854775808n],
    ['uint64', 18446744073709551615n],
    ['float32', -0.15625],
    ['float64', Math.PI],
    ['string', 'AbCdE'],
  ];
  for (const [type, value] of samples) {
    for (const order of WORD_ORDERS) {
      it(`round-trips ${type} ${order}`, () => {
        const registers = encodeValue(value, type, order, 3);
        expect(decodeRegisters(registers, type, order)).toEqual(value);
      });
    }
  }

  it('rejects values outside the type', () => {
    expect(() => encodeValue(65536, 'uint16', 'ABCD', 1)).toThrow('65536 is outside the uint16 range 0..65535');
    expect(() => encodeValue(-1, 'uint32', 'ABCD', 1)).toThrow('outside the uint32 range');
    expect(() => encodeValue(1.5, 'int16', 'ABCD', 1)).toThrow('1.5 is not an integer');
    expect(() => encodeValue('toolong', 'string', 'ABCD', 2)).toThrow('the string has 7 characters but 2 registers hold at most 4');
    expect(() => encodeValue(1e39, 'float32', 'ABCD', 1)).toThrow('outside the float32 range');
  });

  it('applies inverse scaling on write', () => {
    expect(encodePointValue(point({ scale: 0.1, offset: -40 }), 20)).toEqual([600]);
    expect(() => encodePointValue(point({ scale: 0.1 }), -1)).toThrow('outside the uint16 range');
  });
});

describe('read grouping', () => {
  const at = (address: number, count = 1, table: PointSpec['table'] = 'holding_register'): PointSpec => point({ name: `p${address}`, address, count, table });

  it('merges contiguous points', () => {
    const blocks = groupPoints([at(2, 2), at(0), at(1), at(4)], 0, 125);
    expect(blocks.map((block) => [block.address, block.count])).toEqual([[0, 5]]);
  });

  it('merges across a gap within max_read_gap only', () => {
    expect(groupPoints([at(0), at(3)], 2, 125).map((block) => [block.address, block.count])).toEqual([[0, 4]]);
    expect(groupPoints([at(0), at(4)], 2, 125).map((block) => [block.address, block.count])).toEqual([
      [0, 1],
      [4, 1],
    ]);
  });

  it('stays within 125 registers', () => {
    const points = Array.from({ length: 300 }, (_, index) => at(index));
    expect(groupPoints(points, 0, 125).map((block) => block.count)).toEqual([125, 125, 50]);
    expect(groupPoints(points, 0, 60).map((block) => block.count)).toEqual([60, 60, 60, 60, 60]);
  });

  it('reads up to 2000 coils at once', () => {
    const coils = Array.from({ length: 2100 }, (_, index) => at(index, 1, 'coil'));
    expect(groupPoints(coils, 0, 125).map((block) => [block.functionCode, block.count])).toEqual([
      [1, 2000],
      [1, 100],
    ]);
  });

  it('keeps tables apart', () => {
    const blocks = groupPoints([at(0), at(1, 1, 'input_register'), at(2)], 5, 125);
    expect(blocks.map((block) => [block.functionCode, block.address, block.count])).toEqual([
      [3, 0, 3],
      [4, 1, 1],
    ]);
  });

  it('merges overlapping points', () => {
    expect(groupPoints([at(0, 2), at(1, 1)], 0, 125).map((block) => [block.address, block.count])).toEqual([[0, 2]]);
  });
});

describe('Modicon addresses', () => {
  it.each([
    ['40001', 'holding_register', 0],
    ['400001', 'holding_register', 0],
    ['4x0001', 'holding_register', 0],
    ['465536', 'holding_register', 65535],
    ['30010', 'input_register', 9],
    ['00001', 'coil', 0],
    ['10002', 'discrete_input', 1],
  ])('parses %s', (text, table, address) => {
    expect(parseModiconAddress(text)).toEqual({ table, address });
  });

  it('rejects other forms', () => {
    expect(parseModiconAddress('20001')).toContain('is not a Modbus address');
    expect(parseModiconAddress('4001')).toContain('is not a Modbus address');
    expect(parseModiconAddress('465537')).toContain('out of range');
  });
});

describe('set payloads', () => {
  it('parses plain and JSON numbers', () => {
    expect(parseSetPayload(point({ type: 'float32' }), Buffer.from('12.5'))).toBe(12.5);
    expect(parseSetPayload(point({ type: 'float32' }), Buffer.from('{"value": -3}'))).toBe(-3);
    expect(parseSetPayload(point({ type: 'uint64' }), Buffer.from('18446744073709551615'))).toBe(18446744073709551615n);
  });

  it('parses booleans', () => {
    expect(parseSetPayload(point({ type: 'bool' }), Buffer.from('ON'))).toBe(true);
    expect(parseSetPayload(point({ type: 'bool' }), Buffer.from('false'))).toBe(false);
    expect(parseSetPayload(point({ type: 'bool' }), Buffer.from('{"value":1}'))).toBe(true);
  });

  it('reports bad payloads', () => {
    expect(parseSetPayload(point({}), Buffer.from(''))).toEqual({ error: 'empty payload; send the value as text or as JSON {"value": ...}' });
    expect(parseSetPayload(point({}), Buffer.from('{"v":1}'))).toEqual({ error: 'the JSON object has no "value" key' });
    expect(parseSetPayload(point({}), Buffer.from('{bad'))).toEqual({ error: 'payload "{bad" is not valid JSON' });
    expect(parseSetPayload(point({ type: 'bool' }), Buffer.from('maybe'))).toEqual({ error: '"maybe" is not a boolean (allowed: true/false, on/off, 1/0)' });
    expect(parseSetPayload(point({}), Buffer.from('0x10'))).toEqual({ error: '"0x10" is not a number' });
  });

  it('formats JSON payloads with exact 64-bit values', () => {
    expect(formatPayload(18446744073709551615n, 'Wh', 'json', 5)).toBe('{"value":18446744073709551615,"unit":"Wh","timestamp":5}');
    expect(formatPayload(true, '', 'json', 5)).toBe('{"value":true,"timestamp":5}');
    expect(formatPayload(1.5, 'V', 'plain', 5)).toBe('1.5');
  });

  it('applies the deadband', () => {
    expect(changedBeyond(undefined, 1, 5)).toBe(true);
    expect(changedBeyond(10, 14, 5)).toBe(false);
    expect(changedBeyond(10, 15.5, 5)).toBe(true);
    expect(changedBeyond(10, 10, 0)).toBe(false);
    expect(changedBeyond('a', 'b', 0)).toBe(true);
  });
});

describe('line splitting', () => {
  it('joins chunks and splits a CRLF delimiter across chunks', () => {
    const splitter = new LineSplitter('\r\n', 100);
    expect(splitter.push(Buffer.from('a=1\r'))).toEqual([]);
    expect(splitter.push(Buffer.from('\nb='))).toEqual(['a=1']);
    expect(splitter.push(Buffer.from('2\r\nc=3\r\n'))).toEqual(['b=2', 'c=3']);
  });

  it('drops an overlong line up to its delimiter', () => {
    const splitter = new LineSplitter('\n', 16);
    expect(splitter.push(Buffer.from('x'.repeat(20)))).toEqual([]);
    expect(splitter.push(Buffer.from('yyy\nok\n'))).toEqual(['ok']);
    expect(splitter.overlongLines).toBe(1);
  });

  it('checks NMEA checksums', () => {
    expect(hasValidNmeaChecksum('$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47')).toBe(true);
    expect(hasValidNmeaChecksum('$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*48')).toBe(false);
    expect(hasValidNmeaChecksum('$GPGGA,123519')).toBe(false);
  });
});
