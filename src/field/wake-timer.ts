/** A sleep that another part of the code can end early, e.g. when a write arrives or the bus opens. */
export class WakeTimer {
  private pending: { resolve(): void; timer: NodeJS.Timeout | null } | null = null;

  /** Resolves after `ms` milliseconds (never when `ms` is Infinity) or at the next wake(). */
  wait(ms: number): Promise<void> {
    this.wake();
    return new Promise((resolve) => {
      const timer = Number.isFinite(ms) ? setTimeout(() => this.wake(), Math.max(0, ms)) : null;
      this.pending = { resolve, timer };
    });
  }

  wake(): void {
    const pending = this.pending;
    if (pending === null) return;
    this.pending = null;
    if (pending.timer !== null) clearTimeout(pending.timer);
    pending.resolve();
  }
}
