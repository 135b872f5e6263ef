/**
 * A small schema kit for configuration files. Each schema validates a YAML node and reports every
 * problem with its key path and source offset. It also fills in defaults, describes its allowed
 * values for error messages and the reference docs, and carries its TypeScript type for `Infer`.
 */

import { isAlias, isMap, isScalar, isSeq, Scalar, type Document, type Node as YamlNode } from 'yaml';

/** A problem found while validating, located by character offset in the source text. */
export interface Problem {
  /** Offset of the offending node in the source, or undefined when the node has no position. */
  offset: number | undefined;
  /** Key path such as `listeners[0].port`; empty for the document root. */
  path: string;
  message: string;
}

/** Position of a value: its key path and the source offset used in error messages. */
export interface Location {
  path: string;
  offset: number | undefined;
}

/** Input of a derived default: the validated sibling values and the position in a list. */
export interface DefaultContext {
  siblings: Readonly<Record<string, unknown>>;
  /** Index of the enclosing object in its list, or undefined when it is not a list item. */
  index: number | undefined;
}

/** A default computed from other values. `describe` explains the rule in the docs. */
export interface DerivedDefault<T> {
  describe: string;
  compute(context: DefaultContext): T;
}

export class ValidationContext {
  readonly problems: Problem[] = [];

  /**
   * `knownPaths` lists every key path of the root schema (see `keyPaths`), so an unknown key can
   * be pointed to the section where it belongs.
   */
  constructor(
    private readonly document: Document | undefined,
    private readonly knownPaths: readonly string[] = [],
  ) {}

  /** Returns the known paths whose last key is `key`, e.g. `limits.max_packet_size`. */
  pathsEndingWith(key: string): string[] {
    return this.knownPaths.filter((path) => path === key || path.endsWith(`.${key}`));
  }

  report(location: Location, message: string): void {
    this.problems.push({ offset: location.offset, path: location.path, message });
  }

  /** Returns the node that an alias (`*name`) refers to, or the node itself when it is no alias. */
  resolve(node: YamlNode): YamlNode | undefined {
    if (!isAlias(node)) return node;
    if (this.document === undefined) return undefined;
    return node.resolve(this.document);
  }
}

/** The marker for a value that failed validation; the problem is already in the context. */
export const INVALID: unique symbol = Symbol('invalid');
export type Result<T> = T | typeof INVALID;

export abstract class Schema<T> {
  /** Carries the output type for `Infer`; never set at run time. */
  declare readonly output: T;

  constructor(
    readonly description: string,
    readonly staticDefault: { value: T } | undefined,
    readonly derivedDefault: DerivedDefault<T> | undefined,
  ) {}

  /** Allowed values in words, e.g. `integer 20..268435455 bytes`, used by errors and docs. */
  abstract describeAllowed(): string;

  /** Validates a present node; a null scalar means the key was written without a value. */
  abstract validate(node: YamlNode, location: Location, context: ValidationContext): Result<T>;

  /** Validates an absent key; only objects without a default can still build a value. */
  validateAbsent(location: Location, context: ValidationContext): Result<T> {
    context.report(location, `missing required key (allowed: ${this.describeAllowed()})`);
    return INVALID;
  }
}

export type Infer<S> = S extends Schema<infer T> ? T : never;

interface CommonOptions<T> {
  description: string;
  default?: T;
  derivedDefault?: DerivedDefault<T>;
}

function defaultsOf<T>(options: CommonOptions<T>): [{ value: T } | undefined, DerivedDefault<T> | undefined] {
  const staticDefault = 'default' in options && options.default !== undefined ? { value: options.default } : undefined;
  return [staticDefault, options.derivedDefault];
}

/** Describes a YAML value for a message: strings quoted, collections by kind. */
export function describeValue(node: YamlNode | undefined): string {
  if (node === undefined) return 'nothing';
  if (isMap(node)) return 'a mapping';
  if (isSeq(node)) return 'a list';
  if (isScalar(node)) {
    const value = node.value;
    if (value === null) return 'null';
    if (typeof value === 'string') return quote(value);
    return String(value);
  }
  return 'an alias';
}

const MAX_QUOTED_LENGTH = 60;

/** Quotes a string for a message, shortened so a long value cannot flood the output. */
function quote(value: string): string {
  if (value.length <= MAX_QUOTED_LENGTH) return JSON.stringify(value);
  return `${JSON.stringify(value.slice(0, MAX_QUOTED_LENGTH))}... (${value.length} characters)`;
}

function isNullScalar(node: YamlNode): boolean {
  return isScalar(node) && node.value === null;
}

function reportNoValue<T>(schema: Schema<T>, location: Location, context: ValidationContext): typeof INVALID {
  const hint = schema.staticDefault !== undefined ? `; remove the key to use the default ${formatDefault(schema.staticDefault.value)}` : '';
  context.report(location, `no value given (allowed: ${schema.describeAllowed()})${hint}`);
  return INVALID;
}

/** Formats a default for messages and docs: scalars plainly, collections as YAML flow. */
export function formatDefault(value: unknown): string {
  if (typeof value === 'string') return value === '' ? '""' : value;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  return formatFlow(value);
}

function formatFlow(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(formatFlow).join(', ')}]`;
  if (typeof value === 'object' && value !== null) {
    const entries = Object.entries(value).map(([key, item]) => `${key}: ${formatFlow(item)}`);
    return `{${entries.join(', ')}}`;
  }
  return formatDefault(value);
}

// ---------------------------------------------------------------------------------------------
// Scalars

export interface NumberOptions extends CommonOptions<number> {
  integer?: boolean;
  min?: number;
  max?: number;
  /** Unit shown after the range, e.g. `bytes` or `seconds`. */
  unit?: string;
}

export class NumberSchema extends Schema<number> {
  readonly integer: boolean;
  readonly min: number | undefined;
  readonly max: number | undefined;
  readonly unit: string | undefined;

  constructor(options: NumberOptions) {
    super(options.description, ...defaultsOf(options));
    this.integer = options.integer ?? false;
    this.min = options.min;
    this.max = options.max;
    this.unit = options.unit;
  }

  describeAllowed(): string {
    const kind = this.integer ? 'integer' : 'number';
    let range = '';
    if (this.min !== undefined && this.max !== undefined) range = ` ${this.min}..${this.max}`;
    else if (this.min !== undefined) range = ` >= ${this.min}`;
    else if (this.max !== undefined) range = ` <= ${this.max}`;
    const unit = this.unit === undefined ? '' : ` ${this.unit}`;
    return `${kind}${range}${unit}`;
  }

  validate(node: YamlNode, location: Location, context: ValidationContext): Result<number> {
    if (isNullScalar(node)) return reportNoValue(this, location, context);
    const allowed = `(allowed: ${this.describeAllowed()})`;
    const kind = this.integer ? 'an integer' : 'a number';
    const value = isScalar(node) ? node.value : undefined;

    if (typeof value === 'string' && value.trim() !== '' && Number.isFinite(Number(value))) {
      context.report(location, `the string ${quote(value)} is not ${kind}; remove the quotes ${allowed}`);
      return INVALID;
    }
    if (typeof value !== 'number') {
      context.report(location, `${describeValue(node)} is not ${kind} ${allowed}`);
      return INVALID;
    }
    if (!Number.isFinite(value)) {
      context.report(location, `${value} is not a finite number ${allowed}`);
      return INVALID;
    }
    if (this.integer && !Number.isSafeInteger(value)) {
      const reason = Number.isInteger(value) ? 'is too large to be exact' : 'is not an integer';
      context.report(location, `${value} ${reason} ${allowed}`);
      return INVALID;
    }
    if (this.min !== undefined && value < this.min) {
      context.report(location, `${value} is below the minimum ${this.min} ${allowed}`);
      return INVALID;
    }
    if (this.max !== undefined && value > this.max) {
      context.report(location, `${value} is above the maximum ${this.max} ${allowed}`);
      return INVALID;
    }
    return value;
  }
}

export interface StringOptions extends CommonOptions<string> {
  minLength?: number;
  /** An extra check with its description for messages and docs, e.g. "IP address or host name". */
  format?: { describe: string; test(value: string): boolean };
}

export class StringSchema extends Schema<string> {
  readonly minLength: number;
  readonly format: StringOptions['format'];

  constructor(options: StringOptions) {
    super(options.description, ...defaultsOf(options));
    this.minLength = options.minLength ?? 0;
    this.format = options.format;
  }

  describeAllowed(): string {
    if (this.format !== undefined) return this.format.describe;
    if (this.minLength === 0) return 'string';
    return this.minLength === 1 ? 'non-empty string' : `string of at least ${this.minLength} characters`;
  }

  validate(node: YamlNode, location: Location, context: ValidationContext): Result<string> {
    if (isNullScalar(node)) return reportNoValue(this, location, context);
    const allowed = `(allowed: ${this.describeAllowed()})`;
    const value = isScalar(node) ? node.value : undefined;

    if (typeof value === 'number' || typeof value === 'boolean') {
      context.report(location, `${describeValue(node)} is not a string; put it in quotes ${allowed}`);
      return INVALID;
    }
    if (typeof value !== 'string') {
      context.report(location, `${describeValue(node)} is not a string ${allowed}`);
      return INVALID;
    }
    if (value.length < this.minLength) {
      const problem = value.length === 0 ? 'the value is empty' : `${quote(value)} is shorter than ${this.minLength} characters`;
      context.report(location, `${problem} ${allowed}`);
      return INVALID;
    }
    if (this.format !== undefined && !this.format.test(value)) {
      context.report(location, `${quote(value)} is not a valid ${this.format.describe}`);
      return INVALID;
    }
    return value;
  }
}

export class BooleanSchema extends Schema<boolean> {
  constructor(options: CommonOptions<boolean>) {
    super(options.description, ...defaultsOf(options));
  }

  describeAllowed(): string {
    return 'true or false';
  }

  validate(node: YamlNode, location: Location, context: ValidationContext): Result<boolean> {
    if (isNullScalar(node)) return reportNoValue(this, location, context);
    const value = isScalar(node) ? node.value : undefined;
    if (typeof value === 'boolean') return value;

    // YAML 1.2 reads yes/no/on/off as strings, unlike YAML 1.1 and many older tools.
    const hint = typeof value === 'string' ? `; YAML 1.2 booleans are written true or false` : '';
    context.report(location, `${describeValue(node)} is not a boolean${hint} (allowed: ${this.describeAllowed()})`);
    return INVALID;
  }
}

export class EnumSchema<V extends string> extends Schema<V> {
  constructor(
    readonly values: readonly V[],
    options: CommonOptions<V>,
  ) {
    super(options.description, ...defaultsOf(options));
  }

  describeAllowed(): string {
    return this.values.length === 1 ? `only ${this.values[0]}` : `one of ${this.values.join(', ')}`;
  }

  validate(node: YamlNode, location: Location, context: ValidationContext): Result<V> {
    if (isNullScalar(node)) return reportNoValue(this, location, context);
    const value = isScalar(node) ? node.value : undefined;
    const match = this.values.find((allowed) => allowed === value);
    if (match !== undefined) return match;

    const suggestion = typeof value === 'string' ? closestName(value, this.values) : undefined;
    const hint = suggestion === undefined ? '' : `; did you mean ${suggestion}?`;
    context.report(location, `${describeValue(node)} is not allowed${hint} (allowed: ${this.describeAllowed()})`);
    return INVALID;
  }
}

// ---------------------------------------------------------------------------------------------
// Collections

export interface ArrayOptions<T> extends CommonOptions<T[]> {
  minItems?: number;
  /** Name of one item in messages and docs, e.g. "listener". */
  itemName: string;
  /** Items must differ in this key; `describe` names it, e.g. "name". */
  unique?: { describe: string; key(item: T): string | undefined };
}

export class ArraySchema<T> extends Schema<T[]> {
  readonly minItems: number;
  readonly itemName: string;
  readonly unique: ArrayOptions<T>['unique'];

  constructor(
    readonly item: Schema<T>,
    options: ArrayOptions<T>,
  ) {
    super(options.description, ...defaultsOf(options));
    this.minItems = options.minItems ?? 0;
    this.itemName = options.itemName;
    this.unique = options.unique;
  }

  describeAllowed(): string {
    const plural = this.minItems === 1 ? this.itemName : `${this.itemName}s`;
    return this.minItems > 0 ? `list of at least ${this.minItems} ${plural}` : `list of ${this.itemName}s`;
  }

  validate(node: YamlNode, location: Location, context: ValidationContext): Result<T[]> {
    if (isNullScalar(node)) return reportNoValue(this, location, context);
    if (!isSeq(node)) {
      context.report(location, `${describeValue(node)} is not a list (allowed: ${this.describeAllowed()})`);
      return INVALID;
    }
    if (node.items.length < this.minItems) {
      context.report(location, `the list has ${node.items.length} items (allowed: ${this.describeAllowed()})`);
      return INVALID;
    }

    const values: T[] = [];
    const offsets: (number | undefined)[] = [];
    let valid = true;
    node.items.forEach((rawItem, index) => {
      const itemLocation = { path: `${location.path}[${index}]`, offset: offsetOf(rawItem) ?? location.offset };
      const item = isYamlNode(rawItem) ? context.resolve(rawItem) : undefined;
      const value = item === undefined ? INVALID : validateItem(this.item, item, itemLocation, context, index);
      if (item === undefined) context.report(itemLocation, 'the item could not be read');
      if (value === INVALID) valid = false;
      else {
        values.push(value);
        offsets.push(itemLocation.offset);
      }
    });
    if (!valid) return INVALID;
    return this.checkUnique(values, offsets, location, context) ? values : INVALID;
  }

  private checkUnique(values: T[], offsets: (number | undefined)[], location: Location, context: ValidationContext): boolean {
    if (this.unique === undefined) return true;
    const seen = new Map<string, number>();
    let valid = true;
    values.forEach((value, index) => {
      const key = this.unique?.key(value);
      if (key === undefined) return;
      const first = seen.get(key);
      if (first === undefined) {
        seen.set(key, index);
        return;
      }
      const itemLocation = { path: `${location.path}[${index}]`, offset: offsets[index] };
      context.report(itemLocation, `${this.unique?.describe} ${JSON.stringify(key)} is already used by ${location.path}[${first}]; each ${this.itemName} needs its own`);
      valid = false;
    });
    return valid;
  }
}

/** Validates a value; `index` is its position when it is a list item, for derived defaults. */
function validateItem<T>(schema: Schema<T>, node: YamlNode, location: Location, context: ValidationContext, index: number | undefined): Result<T> {
  if (schema instanceof ObjectSchema) return (schema as ObjectSchema<Fields>).validateObject(node, location, context, index) as Result<T>;
  return schema.validate(node, location, context);
}

// Any schema fits here: T appears only in output positions of Schema<T>, so Schema<number> is a
// Schema<unknown>.
export type Fields = Record<string, Schema<unknown>>;
type Simplify<T> = { [K in keyof T]: T[K] } & {};
export type ObjectOutput<F extends Fields> = Simplify<{ [K in keyof F]: Infer<F[K]> }>;

export interface ObjectOptions {
  description: string;
  /** Name of the object in messages and docs, e.g. "listener". */
  name?: string;
}

export class ObjectSchema<F extends Fields> extends Schema<ObjectOutput<F>> {
  readonly name: string | undefined;

  constructor(
    readonly fields: F,
    options: ObjectOptions,
  ) {
    super(options.description, undefined, undefined);
    this.name = options.name;
  }

  describeAllowed(): string {
    return this.name === undefined ? 'mapping' : `mapping (${this.name})`;
  }

  validate(node: YamlNode, location: Location, context: ValidationContext): Result<ObjectOutput<F>> {
    return this.validateObject(node, location, context, undefined);
  }

  /** Builds an absent object from its field defaults, and reports each field that has none. */
  override validateAbsent(location: Location, context: ValidationContext): Result<ObjectOutput<F>> {
    return this.buildObject(new Map(), location, context, undefined);
  }

  /** Validates a mapping node; a null node (the key written with no value) counts as `{}`. */
  validateObject(node: YamlNode, location: Location, context: ValidationContext, index: number | undefined): Result<ObjectOutput<F>> {
    if (isNullScalar(node)) return this.buildObject(new Map(), location, context, index);
    if (!isMap(node)) {
      context.report(location, `${describeValue(node)} is not a mapping of keys (allowed: ${this.describeAllowed()})`);
      return INVALID;
    }

    const present = new Map<string, { node: YamlNode; location: Location }>();
    let valid = true;
    for (const pair of node.items) {
      const keyNode = isYamlNode(pair.key) ? pair.key : undefined;
      if (keyNode === undefined || !isScalar(keyNode)) {
        const where = { path: location.path, offset: offsetOf(keyNode) ?? location.offset };
        context.report(where, `${describeValue(keyNode)} is not a valid key; keys are plain names such as ${Object.keys(this.fields)[0] ?? 'name'}`);
        valid = false;
        continue;
      }
      const key = String(keyNode.value);
      const keyLocation = { path: joinPath(location.path, key), offset: offsetOf(keyNode) ?? location.offset };

      if (!Object.hasOwn(this.fields, key)) {
        context.report(keyLocation, this.unknownKeyMessage(key, context));
        valid = false;
        continue;
      }
      // A pair written as `key:` with nothing after it may carry no value node at all.
      const valueNode = isYamlNode(pair.value) ? context.resolve(pair.value) : new Scalar(null);
      if (valueNode === undefined) {
        context.report(keyLocation, 'the value could not be read');
        valid = false;
        continue;
      }
      present.set(key, { node: valueNode, location: { path: keyLocation.path, offset: offsetOf(valueNode) ?? keyLocation.offset } });
    }

    const value = this.buildObject(present, location, context, index);
    return valid ? value : INVALID;
  }

  private unknownKeyMessage(key: string, context: ValidationContext): string {
    const known = Object.keys(this.fields);
    const suggestion = closestName(key, known);
    if (suggestion !== undefined) return `unknown key; did you mean ${suggestion}?`;

    const elsewhere = context.pathsEndingWith(key);
    if (elsewhere.length > 0) return `unknown key here; it belongs at ${elsewhere.join(' or ')}, so check the indentation`;
    return `unknown key (allowed keys here: ${known.join(', ')})`;
  }

  private buildObject(
    present: Map<string, { node: YamlNode; location: Location }>,
    location: Location,
    context: ValidationContext,
    index: number | undefined,
  ): Result<ObjectOutput<F>> {
    const result: Record<string, unknown> = {};
    let valid = true;

    // Derived defaults read their siblings, so every other field is settled first.
    const derived: string[] = [];
    for (const [key, schema] of Object.entries(this.fields)) {
      const entry = present.get(key);
      let value: Result<unknown>;
      if (entry !== undefined) value = validateItem(schema, entry.node, entry.location, context, undefined);
      else if (schema.staticDefault !== undefined) value = structuredClone(schema.staticDefault.value);
      else if (schema.derivedDefault !== undefined) {
        derived.push(key);
        continue;
      } else value = schema.validateAbsent({ path: joinPath(location.path, key), offset: location.offset }, context);

      if (value === INVALID) valid = false;
      else result[key] = value;
    }
    if (!valid) return INVALID;

    for (const key of derived) {
      result[key] = this.fields[key]?.derivedDefault?.compute({ siblings: result, index });
    }
    // Rebuild in schema order, so derived fields do not end up last.
    const ordered: Record<string, unknown> = {};
    for (const key of Object.keys(this.fields)) ordered[key] = result[key];
    return ordered as ObjectOutput<F>;
  }
}

// ---------------------------------------------------------------------------------------------
// Builders

export function number(options: NumberOptions): NumberSchema {
  return new NumberSchema(options);
}

export function integer(options: Omit<NumberOptions, 'integer'>): NumberSchema {
  return new NumberSchema({ ...options, integer: true });
}

export function string(options: StringOptions): StringSchema {
  return new StringSchema(options);
}

export function boolean(options: CommonOptions<boolean>): BooleanSchema {
  return new BooleanSchema(options);
}

export function enumOf<const V extends string>(values: readonly V[], options: CommonOptions<NoInfer<V>>): EnumSchema<V> {
  return new EnumSchema(values, options);
}

export function array<T>(item: Schema<T>, options: ArrayOptions<NoInfer<T>>): ArraySchema<T> {
  return new ArraySchema(item, options);
}

export function object<F extends Fields>(fields: F, options: ObjectOptions): ObjectSchema<F> {
  return new ObjectSchema(fields, options);
}

// ---------------------------------------------------------------------------------------------
// Helpers

function isYamlNode(value: unknown): value is YamlNode {
  return isScalar(value) || isMap(value) || isSeq(value) || isAlias(value);
}

function offsetOf(node: unknown): number | undefined {
  if (!isYamlNode(node)) return undefined;
  return node.range?.[0];
}

export function joinPath(parent: string, key: string): string {
  return parent === '' ? key : `${parent}.${key}`;
}

/** Finds the candidate closest to `input` by edit distance, if it is close enough to be a typo. */
export function closestName(input: string, candidates: readonly string[]): string | undefined {
  const lowered = input.toLowerCase();
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of candidates) {
    const distance = editDistance(lowered, candidate.toLowerCase());
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  // Up to a third of the letters may differ, and always at least two, so short keys still match.
  const limit = Math.max(2, Math.floor(input.length / 3));
  return bestDistance <= limit ? best : undefined;
}

/** Levenshtein distance: the number of single-character insertions, deletions and substitutions. */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = (previous[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min((previous[j] ?? 0) + 1, (current[j - 1] ?? 0) + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length] ?? 0;
}

/** Lists every key path of a schema, e.g. `limits.max_packet_size` and `listeners[].port`. */
export function keyPaths(schema: Schema<unknown>, prefix = ''): string[] {
  if (schema instanceof ArraySchema) return keyPaths(schema.item as Schema<unknown>, `${prefix}[]`);
  if (!(schema instanceof ObjectSchema)) return [];
  const paths: string[] = [];
  for (const [key, field] of Object.entries((schema as ObjectSchema<Fields>).fields)) {
    const path = joinPath(prefix, key);
    paths.push(path, ...keyPaths(field, path));
  }
  return paths;
}
