/**
 * Limits new connections per source address with a token bucket: an address may open `perSecond`
 * connections in a burst, and the bucket refills at `perSecond` tokens per second.
 */

/** Addresses tracked at once; when full, buckets that have refilled completely are dropped first. */
const MAX_TRACKED_ADDRESSES = 10_000;

interface Bucket {
  tokens: number;
  updatedAt: number;
}

export class ConnectionRateLimiter {
  private readonly buckets = new Map<string, Bucket>();

  /** `perSecond` of 0 turns the limit off. */
  constructor(private readonly perSecond: number) {}

  get enabled(): boolean {
    return this.perSecond > 0;
  }

  /** Takes one token for `address`; returns false when the address is over its rate. */
  tryAcquire(address: string, now = Date.now()): boolean {
    if (this.perSecond === 0) return true;
    let bucket = this.buckets.get(address);
    if (bucket === undefined) {
      if (this.buckets.size >= MAX_TRACKED_ADDRESSES) this.prune(now);
      bucket = { tokens: this.perSecond, updatedAt: now };
      this.buckets.set(address, bucket);
    } else {
      const refill = ((now - bucket.updatedAt) / 1000) * this.perSecond;
      bucket.tokens = Math.min(this.perSecond, bucket.tokens + refill);
      bucket.updatedAt = now;
    }
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
  }

  /** Drops full buckets; if none is full, drops the oldest half so the map stays bounded. */
  private prune(now: number): void {
    const fullAfterMs = 1000;
    for (const [address, bucket] of this.buckets) {
      if (now - bucket.updatedAt >= fullAfterMs) this.buckets.delete(address);
    }
    if (this.buckets.size < MAX_TRACKED_ADDRESSES) return;
    let toDrop = this.buckets.size / 2;
    for (const address of this.buckets.keys()) {
      if (toDrop-- <= 0) break;
      this.buckets.delete(address);
    }
  }
}
