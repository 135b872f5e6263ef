/**
 * Text lines from serial sensors: splitting a byte stream into lines, NMEA 0183 checksums, and
 * turning a line into topic/value pairs by the first rule that matches.
 */

import type { FieldValue } from './codec.js';
import type { LineSpec } from './model.js';
import { expandTemplate } from './topic-template.js';
import { roundTo } from './values.js';

/**
 * Splits a byte stream into lines at `delimiter`, keeping at most `maxLineLength` bytes of an
 * unfinished line. A line that grows past the limit is dropped up to its delimiter and counted.
 */
export class LineSplitter {
  private pending: Buffer = Buffer.alloc(0);
  /** True while the rest of an overlong line is being skipped. */
  private discarding = false;
  /** Lines dropped for being longer than the limit. */
  overlongLines = 0;
  private readonly delimiter: Buffer;

  constructor(
    delimiter: string,
    private readonly maxLineLength: number,
  ) {
    this.delimiter = Buffer.from(delimiter, 'utf8');
  }

  /** Adds received bytes and returns the lines they complete, without delimiters. */
  push(chunk: Buffer): string[] {
    const lines: string[] = [];
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    for (;;) {
      const end = this.pending.indexOf(this.delimiter);
      if (end < 0) break;
      const line = this.pending.subarray(0, end);
      this.pending = this.pending.subarray(end + this.delimiter.length);
      if (this.discarding) {
        this.discarding = false;
        continue;
      }
      if (line.length > this.maxLineLength) {
        this.overlongLines++;
        continue;
      }
      lines.push(this.decode(line));
    }
    if (this.pending.length > this.maxLineLength) {
      if (!this.discarding) this.overlongLines++;
      this.discarding = true;
      // The kept tail may hold the first bytes of a delimiter split across chunks.
      this.pending = Buffer.from(this.pending.subarray(this.pending.length - (this.delimiter.length - 1)));
    }
    return lines;
  }

  /** Forgets an unfinished line, e.g. after the port closed. */
  reset(): void {
    this.pending = Buffer.alloc(0);
    this.discarding = false;
  }

  private decode(line: Buffer): string {
    const text = line.toString('utf8');
    return this.delimiter.length === 1 && this.delimiter[0] === 0x0a ? text.replace(/\r$/, '') : text;
  }
}

/** Checks the NMEA 0183 checksum: XOR of the characters between `$` or `!` and `*`, as two hex digits. */
export function hasValidNmeaChecksum(line: string): boolean {
  const match = /^[$!]([^*]*)\*([0-9A-Fa-f]{2})\s*$/.exec(line);
  if (match === null) return false;
  let checksum = 0;
  for (const character of match[1] ?? '') checksum ^= character.charCodeAt(0) & 0xff;
  return checksum === parseInt(match[2] ?? '', 16);
}

export interface LineValue {
  topic: string;
  name: string;
  value: FieldValue;
  unit: string;
}

export type LineResult = { values: LineValue[] } | { error: string } | null;

const NUMBER = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;

/** Reads text as a number when it looks like one, else keeps it as text. */
function autoValue(text: string): FieldValue {
  return NUMBER.test(text.trim()) ? Number(text) : text;
}

/** Applies the rules of `line` to one line of text. Returns null when no rule matches. */
export function parseLine(spec: LineSpec, prefix: string, text: string): LineResult {
  for (const rule of spec.rules) {
    const match = rule.pattern?.exec(text) ?? (rule.pattern === undefined ? undefined : null);
    if (match === null) continue;
    if (rule.config.nmea_checksum && !hasValidNmeaChecksum(text)) return { error: 'NMEA checksum missing or wrong' };

    const groups: Record<string, string> = {};
    for (const [name, value] of Object.entries(match?.groups ?? {})) if (value !== undefined) groups[name] = value;
    const topicFor = (name: string): string => expandTemplate(rule.config.topic, { ...groups, prefix, line: spec.name, name });

    if (rule.config.format === 'key_value') {
      const values: LineValue[] = [];
      for (const pair of text.matchAll(/([A-Za-z_][\w.-]*)\s*[=:]\s*([^\s,;]+)/g)) {
        const name = pair[1] ?? '';
        values.push({ topic: topicFor(name), name, value: autoValue(pair[2] ?? ''), unit: '' });
      }
      return { values };
    }

    if (rule.config.values.length === 0) {
      return { values: Object.entries(groups).map(([name, value]) => ({ topic: topicFor(name), name, value: autoValue(value), unit: '' })) };
    }
    const values: LineValue[] = [];
    for (const valueConfig of rule.config.values) {
      const raw = groups[valueConfig.group];
      if (raw === undefined) continue;
      const converted = convertText(raw, valueConfig);
      if (typeof converted === 'object') return converted;
      const name = valueConfig.name ?? valueConfig.group;
      values.push({ topic: topicFor(name), name, value: converted, unit: valueConfig.unit });
    }
    return { values };
  }
  return null;
}

type ValueConfig = LineSpec['rules'][number]['config']['values'][number];

function convertText(raw: string, config: ValueConfig): FieldValue | { error: string } {
  const text = raw.trim();
  switch (config.type) {
    case 'string':
      return raw;
    case 'boolean': {
      const word = text.toLowerCase();
      if (['1', 'true', 'on', 'yes'].includes(word)) return true;
      if (['0', 'false', 'off', 'no'].includes(word)) return false;
      return { error: `group ${config.group}: ${JSON.stringify(raw)} is not a boolean` };
    }
    case 'number':
    case 'integer': {
      if (!NUMBER.test(text)) return { error: `group ${config.group}: ${JSON.stringify(raw)} is not a number` };
      const scaled = Number(text) * config.scale + config.offset;
      return config.type === 'integer' ? Math.round(scaled) : roundTo(scaled, config.precision);
    }
  }
}
