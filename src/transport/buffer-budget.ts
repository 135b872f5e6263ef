/**
 * A cap on the bytes buffered for all network clients together (`limits.max_client_buffer_bytes`).
 * Once per second it adds up each client's buffers. When the sum is above the cap, the clients
 * with the largest buffers are evicted until the sum is below 90 % of the cap.
 *
 * NOTE: between two checks the sum can exceed the cap. Each client alone is bounded by the packet
 * size limit (input) and the congestion threshold of Connection (output), so the overshoot is at
 * most about one second of traffic.
 */

/** A client whose buffers count against the cap. */
export interface BufferedClient {
  /** Bytes received but not yet handled plus bytes written but not yet sent. */
  readonly bufferedBytes: number;
  isClosed(): boolean;
}

const CHECK_INTERVAL_MS = 1000;

/** Eviction goes on until the sum falls below this share of the cap, so one check frees enough. */
const TARGET_SHARE = 0.9;

export class BufferBudget<T extends BufferedClient> {
  private readonly clients = new Set<T>();
  private timer: NodeJS.Timeout | null = null;
  private lastTotal = 0;

  constructor(
    readonly capBytes: number,
    private readonly evict: (client: T, total: number) => void,
  ) {}

  /** The sum at the last check, minus the buffers of clients evicted then. */
  get totalBytes(): number {
    return this.lastTotal;
  }

  add(client: T): void {
    this.clients.add(client);
    if (this.timer === null) {
      this.timer = setInterval(() => this.check(), CHECK_INTERVAL_MS);
      this.timer.unref();
    }
  }

  /** Adds up the buffers, drops closed clients and evicts the largest while over the cap. */
  check(): void {
    let total = 0;
    for (const client of this.clients) {
      if (client.isClosed()) {
        this.clients.delete(client);
        continue;
      }
      total += client.bufferedBytes;
    }
    this.lastTotal = total;
    if (this.clients.size === 0 && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
    if (total <= this.capBytes) return;

    const largestFirst = [...this.clients].sort((a, b) => b.bufferedBytes - a.bufferedBytes);
    const target = this.capBytes * TARGET_SHARE;
    for (const client of largestFirst) {
      if (total <= target) break;
      const bytes = client.bufferedBytes;
      this.evict(client, total);
      this.clients.delete(client);
      total -= bytes;
    }
    this.lastTotal = total;
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.clients.clear();
    this.lastTotal = 0;
  }
}
