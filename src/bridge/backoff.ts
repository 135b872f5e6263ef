/**
 * Reconnect delays that double after each failure from `baseMs` up to `maxMs`. Each wait is drawn
 * at random between half and all of the current value ("equal jitter"), so that a fleet of
 * gateways that lost the same cloud broker does not reconnect in step.
 */
export class ReconnectBackoff {
  private readonly baseMs: number;
  private readonly maxMs: number;
  private current: number;

  constructor(baseMs: number, maxMs: number) {
    this.baseMs = baseMs;
    this.maxMs = Math.max(baseMs, maxMs);
    this.current = baseMs;
  }

  /** Returns the wait before the next attempt and doubles the value for the one after it. */
  next(): number {
    const value = this.current;
    this.current = Math.min(this.maxMs, this.current * 2);
    return Math.round(value / 2 + Math.random() * (value / 2));
  }

  reset(): void {
    this.current = this.baseMs;
  }
}
