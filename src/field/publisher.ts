/**
 * Publishing of readings, per-point errors and availability through the broker's in-process
 * client. Readings of `on_change` points are published only when they move beyond the deadband.
 */

import type { Logger } from '../service/logger.js';
import type { FieldValue } from './codec.js';
import type { QoS } from './model.js';
import { changedBeyond, formatPayload } from './values.js';

/** The part of the broker's InternalClient the field adapter publishes with. */
export interface PublishClient {
  publish(topic: string, payload: Buffer | string, options: { qos?: QoS; retain?: boolean }): Promise<void>;
}

/** Destination of a value: its topic, unit, QoS, RETAIN flag and change filter. */
export interface ValueTarget {
  topic: string;
  unit: string;
  qos: QoS;
  retain: boolean;
  onChange: boolean;
  deadband: number;
}

/** Published error state of one point: the error text, or undefined while reads succeed. */
interface ErrorState {
  error: string | undefined;
}

export class FieldPublisher {
  private readonly lastValues = new Map<string, FieldValue>();
  private readonly errors = new Map<string, ErrorState>();

  constructor(
    private readonly client: PublishClient,
    readonly payloadFormat: 'plain' | 'json',
    private readonly logger: Logger,
  ) {}

  /** Publishes a reading unless it is an `on_change` value that did not move beyond its deadband. */
  publishValue(target: ValueTarget, value: FieldValue, timestamp = Date.now()): void {
    this.clearError(target.topic);
    if (target.onChange) {
      // Only on_change values are remembered, so topics made from serial-line text cannot grow the map.
      if (!changedBeyond(this.lastValues.get(target.topic), value, target.deadband)) return;
      this.lastValues.set(target.topic, value);
    }
    this.send(target.topic, formatPayload(value, target.unit, this.payloadFormat, timestamp), target.qos, target.retain);
  }

  /**
   * Publishes a read error of a point on `<topic>/error` as JSON, once per change of the error,
   * so a point that keeps failing the same way does not flood its subscribers.
   */
  publishError(topic: string, error: string, details: Record<string, string | number> = {}): void {
    const state = this.errors.get(topic);
    if (state?.error === error) return;
    this.errors.set(topic, { error });
    this.send(`${topic}/error`, JSON.stringify({ error, ...details, timestamp: Date.now() }), 0, false);
  }

  /** Forgets the last value of `topic`, so the next reading is published even when unchanged. */
  forgetValue(topic: string): void {
    this.lastValues.delete(topic);
  }

  publishAvailability(topic: string, online: boolean): void {
    this.send(topic, online ? 'online' : 'offline', 1, true);
  }

  /** Publishes any payload, logging (rate-limited) instead of throwing when the broker rejects it. */
  send(topic: string, payload: string, qos: QoS, retain: boolean): void {
    this.client.publish(topic, payload, { qos, retain }).catch((error: unknown) => {
      this.logger.limited('warn', `field-publish:${topic}`, 60_000, 'publish failed', {
        topic,
        error: error instanceof Error ? error.message : String(error),
      });
    });
  }

  private clearError(topic: string): void {
    const state = this.errors.get(topic);
    if (state !== undefined) state.error = undefined;
  }
}
