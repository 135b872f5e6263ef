/**
 * Schema kinds the field section needs beyond src/config/schema-kit.ts: a key that may be left
 * out to inherit a value from the enclosing bus or device, a Modbus address written as a number
 * or in Modicon notation, and objects with checks that span several keys.
 */

import { isMap, isScalar, type Node as YamlNode } from 'yaml';

import {
  INVALID,
  joinPath,
  ObjectSchema,
  Schema,
  type Fields,
  type Location,
  type ObjectOutput,
  type ObjectOptions,
  type Result,
  type ValidationContext,
} from '../config/schema-kit.js';
import { parseModiconAddress, type ModbusTable } from './address.js';

/** A key that may be omitted; its value is then undefined and the code takes it from the enclosing level. */
export class InheritedSchema<T> extends Schema<T | undefined> {
  constructor(
    readonly inner: Schema<T>,
    inheritedFrom: string,
  ) {
    super(inner.description, undefined, { describe: inheritedFrom, compute: () => undefined });
  }

  describeAllowed(): string {
    return this.inner.describeAllowed();
  }

  validate(node: YamlNode, location: Location, context: ValidationContext): Result<T | undefined> {
    return this.inner.validate(node, location, context);
  }
}

export function inherited<T>(inner: Schema<T>, inheritedFrom: string): InheritedSchema<T> {
  return new InheritedSchema(inner, inheritedFrom);
}

/** A point address: a 0-based protocol address, or a Modicon reference string that also names the table. */
export type AddressValue = { address: number; table: ModbusTable | undefined };

export class AddressSchema extends Schema<AddressValue> {
  constructor(description: string) {
    super(description, undefined, undefined);
  }

  describeAllowed(): string {
    return 'integer 0..65535 (0-based), or a Modicon reference string such as "40001" or "4x0001"';
  }

  validate(node: YamlNode, location: Location, context: ValidationContext): Result<AddressValue> {
    const value = isScalar(node) ? node.value : undefined;
    if (typeof value === 'number') {
      if (!Number.isInteger(value) || value < 0 || value > 0xffff) {
        context.report(location, `${value} is not a Modbus address (allowed: ${this.describeAllowed()})`);
        return INVALID;
      }
      return { address: value, table: undefined };
    }
    if (typeof value === 'string') {
      const parsed = parseModiconAddress(value);
      if (typeof parsed === 'string') {
        context.report(location, parsed);
        return INVALID;
      }
      return parsed;
    }
    context.report(location, `missing or invalid address (allowed: ${this.describeAllowed()})`);
    return INVALID;
  }
}

/** Reports a problem at one key of a checked object, or at the object itself when `key` is undefined. */
export type ReportProblem = (key: string | undefined, message: string) => void;

/** An object schema with a check over its validated value, for rules that span several keys. */
export class CheckedObjectSchema<F extends Fields> extends ObjectSchema<F> {
  constructor(
    fields: F,
    options: ObjectOptions,
    private readonly check: (value: ObjectOutput<F>, report: ReportProblem, presentKeys: ReadonlySet<string>) => void,
  ) {
    super(fields, options);
  }

  override validateObject(node: YamlNode, location: Location, context: ValidationContext, index: number | undefined): Result<ObjectOutput<F>> {
    const value = super.validateObject(node, location, context, index);
    if (value === INVALID) return INVALID;

    const keyOffsets = new Map<string, number | undefined>();
    if (isMap(node)) {
      for (const pair of node.items) {
        if (isScalar(pair.key)) keyOffsets.set(String(pair.key.value), pair.key.range?.[0]);
      }
    }
    let valid = true;
    const report: ReportProblem = (key, message) => {
      valid = false;
      const path = key === undefined ? location.path : joinPath(location.path, key);
      const offset = key === undefined ? location.offset : (keyOffsets.get(key) ?? location.offset);
      context.report({ path, offset }, message);
    };
    this.check(value, report, new Set(keyOffsets.keys()));
    return valid ? value : INVALID;
  }
}

export function checkedObject<F extends Fields>(
  fields: F,
  options: ObjectOptions,
  check: (value: ObjectOutput<F>, report: ReportProblem, presentKeys: ReadonlySet<string>) => void,
): CheckedObjectSchema<F> {
  return new CheckedObjectSchema(fields, options, check);
}
