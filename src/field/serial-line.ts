/** A serial-line sensor: reads text lines from a serial port and publishes the values its rules find. */

import type { Logger } from '../service/logger.js';
import { LineSplitter, parseLine, type LineValue } from './line-parser.js';
import type { LineSpec } from './model.js';
import type { FieldPublisher } from './publisher.js';
import { ReopeningSerialPort } from './serial-port.js';

/** Counters of one serial line, for tests and status output. */
export interface LineStats {
  lines: number;
  unmatched: number;
  invalid: number;
}

/** Distinct value names remembered for `onNewValue`; key_value lines could otherwise grow the set without bound. */
const MAX_KNOWN_VALUES = 1000;

export class SerialLineReader {
  readonly stats: LineStats = { lines: 0, unmatched: 0, invalid: 0 };
  /** Called the first time a value topic is seen, e.g. to send its Home Assistant discovery message. */
  onNewValue: ((value: LineValue) => void) | null = null;
  private readonly knownTopics = new Set<string>();
  private readonly port: ReopeningSerialPort;
  private readonly splitter: LineSplitter;
  private readonly logger: Logger;

  constructor(
    private readonly spec: LineSpec,
    private readonly topicPrefix: string,
    private readonly publisher: FieldPublisher,
    logger: Logger,
  ) {
    this.logger = logger.child({ serial_line: spec.name });
    this.splitter = new LineSplitter(spec.config.delimiter, spec.config.max_line_length);
    this.port = new ReopeningSerialPort(
      spec.config,
      {
        data: (chunk) => this.onData(chunk),
        open: () => this.publisher.publishAvailability(spec.availabilityTopic, true),
        close: () => {
          this.splitter.reset();
          this.publisher.publishAvailability(spec.availabilityTopic, false);
        },
      },
      this.logger,
    );
  }

  get name(): string {
    return this.spec.name;
  }

  get isOpen(): boolean {
    return this.port.isOpen;
  }

  get closedReason(): string {
    return this.port.closedReason;
  }

  start(): void {
    this.publisher.publishAvailability(this.spec.availabilityTopic, false);
    this.port.start();
  }

  async stop(): Promise<void> {
    await this.port.stop();
  }

  private onData(chunk: Buffer): void {
    const overlongBefore = this.splitter.overlongLines;
    const lines = this.splitter.push(chunk);
    if (this.splitter.overlongLines > overlongBefore) {
      this.logger.limited('warn', `line-too-long:${this.spec.name}`, 60_000, 'dropped a line longer than max_line_length', {
        max_line_length: this.spec.config.max_line_length,
        dropped_lines: this.splitter.overlongLines,
      });
    }
    for (const line of lines) this.handleLine(line);
  }

  private handleLine(line: string): void {
    if (line.trim() === '') return;
    this.stats.lines++;
    const result = parseLine(this.spec, this.topicPrefix, line);
    if (result === null) {
      this.stats.unmatched++;
      this.logger.limited('debug', `line-unmatched:${this.spec.name}`, 60_000, 'line matches no rule', { line: line.slice(0, 80) });
      return;
    }
    if ('error' in result) {
      this.stats.invalid++;
      this.logger.limited('warn', `line-invalid:${this.spec.name}`, 60_000, 'line skipped', { error: result.error, line: line.slice(0, 80) });
      return;
    }
    const timestamp = Date.now();
    for (const value of result.values) {
      if (this.onNewValue !== null && !this.knownTopics.has(value.topic) && this.knownTopics.size < MAX_KNOWN_VALUES) {
        this.knownTopics.add(value.topic);
        this.onNewValue(value);
      }
      this.publisher.publishValue(
        { topic: value.topic, unit: value.unit, qos: this.spec.qos, retain: this.spec.retain, onChange: false, deadband: 0 },
        value.value,
        timestamp,
      );
    }
  }
}
