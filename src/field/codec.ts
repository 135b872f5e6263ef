/**
 * Conversion between Modbus registers and typed values, for every data type and byte and word
 * order the adapter supports.
 *
 * The order names follow Telegraf's and Neuron's convention for 32-bit values, where A is the
 * most significant byte: ABCD is big-endian, DCBA little-endian, BADC big-endian words with
 * swapped bytes, CDAB little-endian words with big-endian bytes. Outpost reads each name as two
 * rules so that it applies to every width: the second letter before the first (BA, DC) means the
 * two bytes of each register are swapped, and C before A means the registers come least
 * significant first. For a 64-bit value CDAB is therefore GHEFCDAB, and for a 16-bit value CDAB
 * equals ABCD and DCBA equals BADC.
 */

export const DATA_TYPES = ['bool', 'int16', 'uint16', 'int32', 'uint32', 'int64', 'uint64', 'float32', 'float64', 'string'] as const;
export type DataType = (typeof DATA_TYPES)[number];

export const WORD_ORDERS = ['ABCD', 'CDAB', 'BADC', 'DCBA'] as const;
export type WordOrder = (typeof WORD_ORDERS)[number];

/** A decoded value: 64-bit integers are bigint so no digit is lost. */
export type FieldValue = number | bigint | boolean | string;

const REGISTERS_PER_TYPE: Record<Exclude<DataType, 'string'>, number> = {
  bool: 1,
  int16: 1,
  uint16: 1,
  int32: 2,
  uint32: 2,
  float32: 2,
  int64: 4,
  uint64: 4,
  float64: 4,
};

/** Number of registers a value of `type` takes; `stringRegisters` applies to type string. */
export function registerCount(type: DataType, stringRegisters: number): number {
  return type === 'string' ? stringRegisters : REGISTERS_PER_TYPE[type];
}

function swapsBytes(order: WordOrder): boolean {
  return order === 'BADC' || order === 'DCBA';
}

function reversesRegisters(order: WordOrder): boolean {
  return order === 'CDAB' || order === 'DCBA';
}

/** Puts registers into the big-endian byte sequence of the value they hold in `order`. */
export function registersToBytes(registers: readonly number[], order: WordOrder): Buffer {
  const sequence = reversesRegisters(order) ? [...registers].reverse() : registers;
  const bytes = Buffer.alloc(2 * sequence.length);
  sequence.forEach((register, index) => {
    const high = (register >> 8) & 0xff;
    const low = register & 0xff;
    bytes[2 * index] = swapsBytes(order) ? low : high;
    bytes[2 * index + 1] = swapsBytes(order) ? high : low;
  });
  return bytes;
}

/** The inverse of registersToBytes. */
export function bytesToRegisters(bytes: Buffer, order: WordOrder): number[] {
  const registers: number[] = [];
  for (let i = 0; i + 1 < bytes.length; i += 2) {
    const first = bytes[i] ?? 0;
    const second = bytes[i + 1] ?? 0;
    registers.push(swapsBytes(order) ? (second << 8) | first : (first << 8) | second);
  }
  return reversesRegisters(order) ? registers.reverse() : registers;
}

/**
 * Decodes the registers of one value. `bit` picks one bit (0 = least significant) of a bool
 * kept in a register; without it a bool is true when the register is not 0. Strings are
 * Latin-1 with trailing NUL bytes and spaces removed, registers in address order.
 */
export function decodeRegisters(registers: readonly number[], type: DataType, order: WordOrder, bit?: number): FieldValue {
  if (type === 'bool') {
    const register = registers[0] ?? 0;
    return bit === undefined ? register !== 0 : ((register >> bit) & 1) === 1;
  }
  if (type === 'string') {
    const bytes = registersToBytes(registers, swapsBytes(order) ? 'BADC' : 'ABCD');
    return bytes.toString('latin1').replace(/[\0 ]+$/, '');
  }
  const bytes = registersToBytes(registers, order);
  switch (type) {
    case 'int16':
      return bytes.readInt16BE(0);
    case 'uint16':
      return bytes.readUInt16BE(0);
    case 'int32':
      return bytes.readInt32BE(0);
    case 'uint32':
      return bytes.readUInt32BE(0);
    case 'int64':
      return bytes.readBigInt64BE(0);
    case 'uint64':
      return bytes.readBigUInt64BE(0);
    case 'float32':
      return bytes.readFloatBE(0);
    case 'float64':
      return bytes.readDoubleBE(0);
  }
}

/** Integer limits of each integer type, used to reject a write that would not fit. */
export const INTEGER_RANGES: Partial<Record<DataType, [bigint, bigint]>> = {
  int16: [-(2n ** 15n), 2n ** 15n - 1n],
  uint16: [0n, 2n ** 16n - 1n],
  int32: [-(2n ** 31n), 2n ** 31n - 1n],
  uint32: [0n, 2n ** 32n - 1n],
  int64: [-(2n ** 63n), 2n ** 63n - 1n],
  uint64: [0n, 2n ** 64n - 1n],
};

/**
 * Encodes a raw value (after inverse scaling) into registers. Integer types take an integer
 * number or a bigint and reject values outside their range; strings longer than the registers
 * hold are rejected, shorter ones are padded with NUL bytes. Throws RangeError or TypeError
 * with a message that names the value and the limit.
 */
export function encodeValue(value: FieldValue, type: DataType, order: WordOrder, stringRegisters: number): number[] {
  if (type === 'bool') {
    if (typeof value !== 'boolean') throw new TypeError(`${String(value)} is not a boolean`);
    return [value ? 1 : 0];
  }
  if (type === 'string') {
    if (typeof value !== 'string') throw new TypeError(`${String(value)} is not a string`);
    const encoded = Buffer.from(value, 'latin1');
    if (encoded.length > 2 * stringRegisters) {
      throw new RangeError(`the string has ${encoded.length} characters but ${stringRegisters} registers hold at most ${2 * stringRegisters}`);
    }
    const padded = Buffer.alloc(2 * stringRegisters);
    encoded.copy(padded);
    return bytesToRegisters(padded, swapsBytes(order) ? 'BADC' : 'ABCD');
  }

  const bytes = Buffer.alloc(2 * REGISTERS_PER_TYPE[type]);
  if (type === 'float32' || type === 'float64') {
    if (typeof value !== 'number' || !Number.isFinite(value)) throw new TypeError(`${String(value)} is not a finite number`);
    if (type === 'float32') {
      if (Math.abs(value) > 3.4028234663852886e38) throw new RangeError(`${value} is outside the float32 range`);
      bytes.writeFloatBE(value, 0);
    } else {
      bytes.writeDoubleBE(value, 0);
    }
    return bytesToRegisters(bytes, order);
  }

  const integer = toBigInt(value);
  const range = INTEGER_RANGES[type];
  if (range !== undefined && (integer < range[0] || integer > range[1])) {
    throw new RangeError(`${integer} is outside the ${type} range ${range[0]}..${range[1]}`);
  }
  switch (type) {
    case 'int16':
      bytes.writeInt16BE(Number(integer), 0);
      break;
    case 'uint16':
      bytes.writeUInt16BE(Number(integer), 0);
      break;
    case 'int32':
      bytes.writeInt32BE(Number(integer), 0);
      break;
    case 'uint32':
      bytes.writeUInt32BE(Number(integer), 0);
      break;
    case 'int64':
      bytes.writeBigInt64BE(integer, 0);
      break;
    case 'uint64':
      bytes.writeBigUInt64BE(integer, 0);
      break;
  }
  return bytesToRegisters(bytes, order);
}

function toBigInt(value: FieldValue): bigint {
  if (typeof value === 'bigint') return value;
  if (typeof value === 'number' && Number.isInteger(value)) {
    if (!Number.isSafeInteger(value)) throw new RangeError(`${value} is too large to be exact; send it as an integer string`);
    return BigInt(value);
  }
  throw new TypeError(`${String(value)} is not an integer`);
}
