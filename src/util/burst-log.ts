/**
 * Logs a repeated event once per burst: the first occurrence at once, then a
 * count of the ones that followed, once per window while they keep coming. A
 * flood of refused connections must not become a flood of log lines.
 */
export class BurstLog {
  private suppressed = 0;
  private timer: NodeJS.Timeout | null = null;

  /** summary: logs how many more came within one window (called only when some did). */
  constructor(
    private readonly summary: (count: number, windowMs: number) => void,
    private readonly windowMs = 10_000,
  ) {}

  /** One occurrence; `logFirst` runs when it opens a burst. */
  note(logFirst: () => void): void {
    if (this.timer) {
      this.suppressed++;
      return;
    }
    logFirst();
    this.openWindow();
  }

  /** Reports what is still counted and stops the timer. */
  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.flush();
  }

  private openWindow(): void {
    this.timer = setTimeout(() => {
      this.timer = null;
      // Still coming: report them and keep the burst open; else the next one opens a new burst.
      if (this.flush()) this.openWindow();
    }, this.windowMs);
    this.timer.unref();
  }

  private flush(): boolean {
    const count = this.suppressed;
    this.suppressed = 0;
    if (count > 0) this.summary(count, this.windowMs);
    return count > 0;
  }
}
