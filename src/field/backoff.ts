/** A wait that doubles after each failure, from `minMs` up to `maxMs`, with up to 10 % jitter. */
export class Backoff {
  private current: number;

  constructor(
    private readonly minMs: number,
    private readonly maxMs: number,
  ) {
    this.current = minMs;
  }

  /** Returns the wait before the next attempt and doubles the one after it. */
  next(): number {
    const wait = this.current;
    this.current = Math.min(this.maxMs, this.current * 2);
    // Jitter keeps several ports or devices that failed together from retrying in step.
    return Math.round(wait * (1 - Math.random() * 0.1));
  }

  reset(): void {
    this.current = this.minMs;
  }
}
