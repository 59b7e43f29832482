/** Percentiles over the most recent samples: bounded memory whatever the run length. */
export class LatencyWindow {
  private readonly samples: Float64Array;
  private next = 0;
  private filled = 0;

  constructor(capacity = 2048) {
    this.samples = new Float64Array(capacity);
  }

  add(ms: number): void {
    this.samples[this.next] = ms;
    this.next = (this.next + 1) % this.samples.length;
    if (this.filled < this.samples.length) this.filled++;
  }

  get count(): number {
    return this.filled;
  }

  percentile(p: number): number {
    if (this.filled === 0) return 0;
    const sorted = Float64Array.from(this.samples.subarray(0, this.filled)).sort();
    return sorted[Math.min(this.filled - 1, Math.floor((p / 100) * this.filled))];
  }
}

/** Bytes per second over a sliding window of one-second buckets. */
export class RateMeter {
  private readonly buckets: Float64Array;
  private bucketSecond = 0;

  constructor(
    private readonly windowSeconds = 5,
    private readonly now: () => number = Date.now,
  ) {
    this.buckets = new Float64Array(windowSeconds);
    this.bucketSecond = Math.floor(now() / 1000);
  }

  add(bytes: number): void {
    this.roll();
    this.buckets[this.bucketSecond % this.windowSeconds] += bytes;
  }

  /** Rate over the completed seconds of the window plus the current one, pro rata. */
  perSecond(): number {
    this.roll();
    let total = 0;
    for (const b of this.buckets) total += b;
    const elapsedInCurrent = (this.now() % 1000) / 1000;
    return total / (this.windowSeconds - 1 + Math.max(elapsedInCurrent, 0.001));
  }

  private roll(): void {
    const second = Math.floor(this.now() / 1000);
    const steps = Math.min(second - this.bucketSecond, this.windowSeconds);
    for (let i = 1; i <= steps; i++) this.buckets[(this.bucketSecond + i) % this.windowSeconds] = 0;
    this.bucketSecond = second;
  }
}
