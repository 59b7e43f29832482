import { WindowedExtreme } from '../util/windowed-extreme';

/**
 * In-flight target from delivery samples, as BBR estimates a path: each run
 * that arrives gives the latency it saw and a delivery rate, the bytes that
 * arrived from the source while it was on its way over that latency (counted
 * where they arrive, so the rate cannot exceed the link's whatever was
 * predicted or queued). The largest recent rate times the smallest recent
 * latency is the bandwidth-delay product (the latency holds a run's own time
 * on the wire, so the product keeps one run being serialised); the window is
 * that plus a headroom. A window above the product only builds a queue, and
 * a standing queue hides the true latency, so every few seconds the window
 * drops to half the product for two round trips (a latency probe, as BBR's
 * second version does it): half a product in flight cannot keep a queue, so
 * the queue drains and the path's latency shows again, while the link still
 * carries half its rate (dropping to the floor would idle it). The copy feeds it wire bytes (what crosses the
 * bottleneck), not image bytes: a run sent as references or zero blocks
 * costs almost nothing on the link.
 */
export class WindowEstimator {
  private readonly rates: WindowedExtreme;
  private readonly latencies: WindowedExtreme;
  private probeUntil = 0;
  private nextProbe: number;
  private estimate: number;
  private bestRate = 0;

  constructor(
    initial: number,
    private readonly ceiling: number,
    private readonly floor: number,
    /** Bytes kept in flight above the bandwidth-delay product (see setHeadroom). */
    private headroom: number = floor,
    private readonly now: () => number = () => performance.now(),
    filterMs = 10_000,
    private readonly probeEveryMs = 8_000,
  ) {
    this.estimate = initial;
    this.rates = new WindowedExtreme('max', filterMs / 4);
    this.latencies = new WindowedExtreme('min', filterMs);
    this.nextProbe = now() + 1000; // early: the start-up ramp overshoots
  }

  /** The in-flight target now. */
  get bytes(): number {
    const t = this.now();
    if (t >= this.nextProbe) {
      const base = this.minLatency() ?? 100;
      this.probeUntil = t + Math.max(2 * base, 50);
      this.nextProbe = t + this.probeEveryMs;
    }
    return t < this.probeUntil ? this.probeWindow() : this.estimate;
  }

  /** The largest recent delivery rate, bytes per ms (0 before the first sample). */
  get rate(): number {
    return this.bestRate;
  }

  /** The smallest recent latency, ms (null before the first sample). */
  get baseLatencyMs(): number | null {
    return this.minLatency();
  }

  /** Changes the headroom (the copy sizes it to one batch as the batch's wire size changes). */
  setHeadroom(bytes: number): void {
    this.headroom = bytes;
    const base = this.minLatency();
    if (base !== null) this.update(base);
  }

  /**
   * A run arrived `latencyMs` after it was sent; `deliveredBytes` arrived from the source
   * meanwhile (its own included), over `intervalMs` (the latency, unless the counts were dated).
   * `appLimited`: the run went while something other than this window held the copy back (cheap
   * runs of zeros or references under the image-bytes ceiling), so its rate says what the copy
   * offered, not what the link can carry: as BBR does, it may raise the rate, never lower it.
   * Otherwise a stretch of cheap runs longer than the rate filter's span leaves a rate of a tenth
   * of the link, and the copy climbs back by probing rounds when data comes again.
   */
  sample(deliveredBytes: number, latencyMs: number, intervalMs = latencyMs, appLimited = false): void {
    if (latencyMs <= 0) return;
    const t = this.now();
    this.latencies.record(t, latencyMs);
    const base = this.minLatency() ?? latencyMs;
    const rate = intervalMs > 0 ? deliveredBytes / intervalMs : 0;
    if (intervalMs > 0 && (!appLimited || rate >= this.bestRate)) this.rates.record(t, rate);
    this.bestRate = Math.max(0, this.rates.value ?? 0);
    this.update(base);
  }

  /** Half the bandwidth-delay product (whose latency may hold a queue; the next probe drains the rest). */
  private probeWindow(): number {
    const base = this.minLatency();
    if (base === null) return this.floor;
    return Math.max(this.floor, Math.min(this.estimate, Math.round((this.bestRate * base) / 2)));
  }

  private update(base: number): void {
    this.estimate = Math.max(this.floor, Math.min(this.ceiling, Math.round(this.bestRate * base + this.headroom)));
  }

  private minLatency(): number | null {
    return this.latencies.value;
  }
}
