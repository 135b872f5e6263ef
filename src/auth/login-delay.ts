/**
 * Delays the response to failed logins per source address. Each failure from an address within the
 * forget period doubles the delay, from `initialMs` up to `maxMs`. A successful login from the
 * address clears its record.
 */

/** Source addresses tracked at once; the address with the oldest failure is forgotten first. */
const MAX_TRACKED_ADDRESSES = 10_000;

/** A record is dropped when the address has not failed for this long. */
const FORGET_AFTER_MS = 10 * 60 * 1000;

interface FailureRecord {
  failures: number;
  lastFailureAt: number;
}

export class LoginDelay {
  private readonly records = new Map<string, FailureRecord>();

  constructor(
    private readonly initialMs: number,
    private readonly maxMs: number,
  ) {}

  /** Records a failed login from `address` and returns how long to wait before responding, in ms. */
  recordFailure(address: string, now = Date.now()): number {
    let record = this.records.get(address);
    if (record !== undefined && now - record.lastFailureAt > FORGET_AFTER_MS) record = undefined;
    const failures = (record?.failures ?? 0) + 1;
    // Re-inserting moves the address to the end of the Map's order, so eviction takes the stalest.
    this.records.delete(address);
    if (this.records.size >= MAX_TRACKED_ADDRESSES) {
      const oldest = this.records.keys().next().value;
      if (oldest !== undefined) this.records.delete(oldest);
    }
    this.records.set(address, { failures, lastFailureAt: now });
    if (this.initialMs === 0) return 0;
    // 2^(failures - 1) overflows nothing: the exponent is capped before Math.min applies.
    return Math.min(this.initialMs * 2 ** Math.min(failures - 1, 30), this.maxMs);
  }

  recordSuccess(address: string): void {
    this.records.delete(address);
  }

  /** Failures counted for `address` within the forget period. */
  failuresOf(address: string, now = Date.now()): number {
    const record = this.records.get(address);
    if (record === undefined || now - record.lastFailureAt > FORGET_AFTER_MS) return 0;
    return record.failures;
  }
}
