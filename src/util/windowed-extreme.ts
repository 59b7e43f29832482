/**
 * The smallest (or largest) value recorded over a trailing span of time, at
 * a constant cost per value (amortised) rather than a scan of every value
 * in the span at each look: a value recorded after another and at least as
 * small (large) outlives it, so the older one can never be the extreme
 * again and is dropped when the newer comes (a monotonic queue). Values older
 * than the span leave when a new one is recorded, so the answer is the
 * extreme of exactly the values a list pruned at each record would hold.
 */
export class WindowedExtreme {
  private readonly times: number[] = [];
  private readonly values: number[] = [];

  constructor(
    private readonly kind: 'min' | 'max',
    private readonly spanMs: number,
  ) {}

  /** Records `value` at `time` (not before the last record's), after dropping values older than spanMs before it. */
  record(time: number, value: number): void {
    while (this.times.length && this.times[0] < time - this.spanMs) {
      this.times.shift();
      this.values.shift();
    }
    const min = this.kind === 'min';
    for (let last = this.values.length - 1; last >= 0; last--) {
      const kept = this.values[last];
      if (min ? value > kept : value < kept) break;
      this.times.pop();
      this.values.pop();
    }
    this.times.push(time);
    this.values.push(value);
  }

  /** The extreme of the values in the span at the last record (null before the first). */
  get value(): number | null {
    return this.values.length ? this.values[0] : null;
  }
}
