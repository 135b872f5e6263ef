/** Scaling of point values, parsing of `/set` payloads and formatting of published payloads. */

import { decodeRegisters, encodeValue, INTEGER_RANGES, type FieldValue } from './codec.js';
import type { PointSpec } from './model.js';

/** Applies precision rounding; values that are not finite numbers pass unchanged. */
export function roundTo(value: number, precision: number | undefined): number {
  if (precision === undefined || !Number.isFinite(value)) return value;
  const factor = 10 ** precision;
  return Math.round(value * factor) / factor;
}

function isIdentityScaling(point: Pick<PointSpec, 'scale' | 'offset'>): boolean {
  return point.scale === 1 && point.offset === 0;
}

/** Decodes a point from its registers and applies scale, offset and precision. */
export function decodePointRegisters(point: PointSpec, registers: readonly number[]): FieldValue {
  return scaleValue(point, decodeRegisters(registers, point.type, point.order, point.bit));
}

/** Applies scale, offset and precision. 64-bit integers stay exact when the scaling is the identity. */
export function scaleValue(point: Pick<PointSpec, 'scale' | 'offset' | 'precision'>, raw: FieldValue): FieldValue {
  if (typeof raw === 'boolean' || typeof raw === 'string') return raw;
  if (typeof raw === 'bigint') {
    if (isIdentityScaling(point)) return raw;
    return roundTo(Number(raw) * point.scale + point.offset, point.precision);
  }
  if (isIdentityScaling(point)) return roundTo(raw, point.precision);
  return roundTo(raw * point.scale + point.offset, point.precision);
}

/**
 * Turns a value given in engineering units into the registers to write, applying the inverse of
 * scale and offset. Integer types round to the nearest integer. Throws RangeError or TypeError
 * naming the value and the limit.
 */
export function encodePointValue(point: PointSpec, value: FieldValue): number[] {
  if (point.type === 'bool' || point.type === 'string') return encodeValue(value, point.type, point.order, point.stringRegisters);
  let raw: FieldValue = value;
  if (!isIdentityScaling(point)) {
    if (typeof value !== 'number') throw new TypeError(`${String(value)} is not a number`);
    raw = (value - point.offset) / point.scale;
  }
  if (typeof raw === 'number' && INTEGER_RANGES[point.type] !== undefined) {
    const rounded = Math.round(raw);
    if (Math.abs(rounded - raw) > 1e-9 && isIdentityScaling(point)) {
      throw new RangeError(`${raw} is not an integer, and type ${point.type} takes integers only`);
    }
    raw = rounded;
  }
  return encodeValue(raw, point.type, point.order, point.stringRegisters);
}

const TRUE_WORDS = new Set(['true', 'on', '1', 'yes']);
const FALSE_WORDS = new Set(['false', 'off', '0', 'no']);

/**
 * Parses the payload of a `/set` message for `point`: plain text (`12.5`, `true`, `ON`, a string)
 * or JSON (`12.5`, `true`, `"text"`, `{"value": ...}`). Returns the value or an error message.
 */
export function parseSetPayload(point: PointSpec, payload: Buffer): FieldValue | { error: string } {
  const text = payload.toString('utf8').trim();
  if (text === '') return { error: 'empty payload; send the value as text or as JSON {"value": ...}' };
  let candidate: unknown = text;
  if (/^[[{"]/.test(text)) {
    try {
      candidate = JSON.parse(text);
    } catch {
      return { error: `payload ${quote(text)} is not valid JSON` };
    }
    if (typeof candidate === 'object' && candidate !== null && !Array.isArray(candidate)) {
      if (!('value' in candidate)) return { error: 'the JSON object has no "value" key' };
      candidate = candidate.value;
    }
  }

  if (point.type === 'string') {
    if (typeof candidate !== 'string') return { error: `a string point takes text, not ${quote(JSON.stringify(candidate))}` };
    return candidate;
  }
  if (point.type === 'bool') {
    if (typeof candidate === 'boolean') return candidate;
    if (typeof candidate === 'number' && (candidate === 0 || candidate === 1)) return candidate === 1;
    const word = String(candidate).toLowerCase();
    if (TRUE_WORDS.has(word)) return true;
    if (FALSE_WORDS.has(word)) return false;
    return { error: `${quote(String(candidate))} is not a boolean (allowed: true/false, on/off, 1/0)` };
  }

  if (typeof candidate === 'number') return candidate;
  if (typeof candidate !== 'string') return { error: `${quote(JSON.stringify(candidate))} is not a number` };
  // 64-bit integers without scaling are parsed exactly, beyond the 2^53 of a JavaScript number.
  if ((point.type === 'int64' || point.type === 'uint64') && isIdentityScaling(point) && /^[-+]?\d+$/.test(candidate)) {
    return BigInt(candidate);
  }
  const parsed = Number(candidate);
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(candidate) || !Number.isFinite(parsed)) {
    return { error: `${quote(candidate)} is not a number` };
  }
  return parsed;
}

function quote(text: string): string {
  return JSON.stringify(text.length > 60 ? `${text.slice(0, 60)}...` : text);
}

/** Formats a value as a JSON literal; bigint values are written exactly as JSON numbers. */
export function jsonLiteral(value: FieldValue): string {
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'number' && !Number.isFinite(value)) return JSON.stringify(String(value));
  return JSON.stringify(value);
}

/** Builds a published payload: the value as text, or JSON with value, unit and timestamp. */
export function formatPayload(value: FieldValue, unit: string, format: 'plain' | 'json', timestamp: number): string {
  if (format === 'plain') return String(value);
  const unitPart = unit === '' ? '' : `,"unit":${JSON.stringify(unit)}`;
  return `{"value":${jsonLiteral(value)}${unitPart},"timestamp":${timestamp}}`;
}

/** Tells whether `next` differs from `previous` by more than `deadband` (numbers) or at all (others). */
export function changedBeyond(previous: FieldValue | undefined, next: FieldValue, deadband: number): boolean {
  if (previous === undefined) return true;
  if (typeof previous === 'number' && typeof next === 'number') {
    if (Number.isNaN(previous) !== Number.isNaN(next)) return true;
    return deadband === 0 ? previous !== next : Math.abs(next - previous) > deadband;
  }
  if (typeof previous === 'bigint' && typeof next === 'bigint') {
    const difference = next > previous ? next - previous : previous - next;
    return deadband === 0 ? difference !== 0n : Number(difference) > deadband;
  }
  return previous !== next;
}
