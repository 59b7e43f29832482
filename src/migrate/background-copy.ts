/**
 * Streams every block the destination does not hold yet, in runs, keeping
 * about one bandwidth-delay product in flight: enough to fill the link, and
 * little enough that an on-demand fetch does not wait behind a deep queue of
 * background bytes at the bottleneck (see WindowEstimator).
 */
import type { Logger } from 'pino';
import type { MigratingDevice } from './migrating-device';
import { TokenBucket } from './token-bucket';

export interface BackgroundCopyOptions {
  /** Blocks per fetch request. */
  batchBlocks: number;
  /** Bytes of background fetches in flight at most (the adaptive window's ceiling). */
  windowBytes: number;
  /** Pause after the local image refused a write (full disk). */
  storeErrorBackoffMs: number;
  /**
   * Batches kept in flight above the measured bandwidth-delay product (default 1):
   * more fills the link sooner; each queues on-demand fetches behind one more batch.
   */
  queueBatches?: number;
}

export class BackgroundCopy {
  private cursor = 0;
  private inFlightBytes = 0;
  private paused = false;
  private stopped = false;
  private blockedUntil = 0;
  private wakeUp: (() => void) | null = null;
  private readonly bucket: TokenBucket;
  private loop: Promise<void> | null = null;
  private failures = 0;
  private readonly running = new Set<Promise<void>>();
  private readonly window: WindowEstimator;
  /** Runs are claimed only below this block (a zero scan raises it as it goes). */
  private limit: number;

  constructor(
    private readonly device: MigratingDevice,
    private readonly options: BackgroundCopyOptions,
    rateLimit: number | null,
    private readonly log: Logger,
  ) {
    this.limit = device.map.blockCount;
    this.bucket = new TokenBucket(rateLimit);
    const batchBytes = options.batchBlocks * device.map.blockSize;
    this.window = new WindowEstimator(
      Math.min(2 * batchBytes, options.windowBytes),
      options.windowBytes,
      batchBytes,
      Math.round((options.queueBatches ?? 1) * batchBytes),
    );
    device.on('store-error', () => {
      this.blockedUntil = Date.now() + options.storeErrorBackoffMs;
    });
    // Before cutover the source's writes make copied blocks missing again: there is work again.
    device.on('missing', () => this.wake());
  }

  get isPaused(): boolean {
    return this.paused;
  }

  get rateLimit(): number | null {
    return this.bucket.bytesPerSecond;
  }

  get bytesInFlight(): number {
    return this.inFlightBytes;
  }

  /** The current in-flight target in bytes. */
  get windowBytes(): number {
    return this.window.bytes;
  }

  start(): void {
    this.loop ??= this.run();
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    this.wake();
  }

  setRateLimit(bytesPerSecond: number | null): void {
    this.bucket.setRate(bytesPerSecond);
    this.wake();
  }

  /** Copies only blocks below `blocks` until raised (blocks above may still be found to be holes). */
  setLimit(blocks: number): void {
    this.limit = Math.min(blocks, this.device.map.blockCount);
    this.wake();
  }

  /** Stops taking runs. Runs in flight go on: close the upstream, then settle(). */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wake();
    await this.loop;
  }

  /** Waits for the runs in flight to finish (land or fail). */
  async settle(): Promise<void> {
    await Promise.all(this.running);
  }

  private wake(): void {
    const w = this.wakeUp;
    this.wakeUp = null;
    w?.();
  }

  private sleep(ms: number | null): Promise<void> {
    return new Promise((resolve) => {
      const timer = ms === null ? null : setTimeout(() => this.wake(), ms);
      this.wakeUp = () => {
        if (timer) clearTimeout(timer);
        resolve();
      };
    });
  }

  private async run(): Promise<void> {
    const bs = this.device.map.blockSize;
    const batchBytes = this.options.batchBlocks * bs;
    while (!this.stopped) {
      if (this.device.map.allHeld) {
        if (this.device.phase === 'post-copy') return;
        await this.sleep(null); // warm: wait for a source write to make a block missing again
        continue;
      }
      if (this.paused || this.inFlightBytes >= this.window.bytes) {
        await this.sleep(this.paused ? null : 1000);
        continue;
      }
      const blockedFor = this.blockedUntil - Date.now();
      if (blockedFor > 0) {
        await this.sleep(blockedFor);
        continue;
      }
      const wait = this.bucket.take(batchBytes);
      if (wait > 0) {
        await this.sleep(wait);
        continue;
      }
      let run = this.device.claimBackgroundRun(this.cursor, this.options.batchBlocks, this.limit);
      if (!run && this.cursor > 0) {
        this.cursor = 0; // wrap: blocks that went missing again after a failed fetch lie behind
        run = this.device.claimBackgroundRun(0, this.options.batchBlocks, this.limit);
      }
      if (!run) {
        // Everything missing below the limit is in flight already (on demand or here), or the
        // zero scan has not got further yet: wait for either to move.
        await this.sleep(200);
        continue;
      }
      this.cursor = run[0].block + run.length;
      const bytes = run.length * bs;
      this.inFlightBytes += bytes;
      const sentAt = performance.now();
      const inFlightAtSend = this.inFlightBytes;
      const fetch = this.device
        .fetchBackgroundRun(run)
        .then(
          () => {
            this.failures = 0;
            this.window.sample(inFlightAtSend, performance.now() - sentAt, bytes);
          },
          (e: Error) => {
            // Wait on a real timer before the next run, so a source that fails at once cannot spin the loop.
            this.failures++;
            this.blockedUntil = Math.max(
              this.blockedUntil,
              Date.now() + Math.min(20 * 2 ** Math.min(this.failures, 6), 1000),
            );
            this.log.debug({ err: e.message }, 'background fetch failed; will retry');
          },
        )
        .finally(() => {
          this.inFlightBytes -= bytes;
          this.running.delete(fetch);
          this.wake();
        });
      this.running.add(fetch);
    }
  }
}

/**
 * In-flight target from delivery samples, as BBR estimates a path: each
 * completed batch gives the latency it saw and a delivery rate: the larger
 * of its bytes in flight over its latency and the bytes completed over the
 * last base latency (the second sees the bottleneck's rate as soon as a burst
 * keeps it busy, where the first needs a deep queue to). The largest recent
 * rate times the smallest recent latency is the bandwidth-delay product; the
 * window is that plus a headroom (a batch by default), and the copy may send
 * while it has less than the window in flight, so the window can grow. A
 * window above the product only builds a queue, and a standing queue hides
 * the true latency, so every few seconds the window drops to its floor for a
 * moment (a latency probe) to let the queue drain and measure the path again.
 */
export class WindowEstimator {
  private readonly rates: Array<[number, number]> = []; // [time, bytes/ms]
  private readonly latencies: Array<[number, number]> = []; // [time, ms]
  private readonly completions: Array<[number, number]> = []; // [time, bytes]
  private probeUntil = 0;
  private nextProbe: number;
  private estimate: number;

  constructor(
    initial: number,
    private readonly ceiling: number,
    private readonly floor: number,
    /** Bytes kept in flight above the bandwidth-delay product. */
    private readonly headroom: number = floor,
    private readonly now: () => number = () => performance.now(),
    private readonly filterMs = 10_000,
    private readonly probeEveryMs = 8_000,
  ) {
    this.estimate = initial;
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
    return t < this.probeUntil ? this.floor : this.estimate;
  }

  /** A batch of `bytes` completed `latencyMs` after it was sent with `inFlightBytes` in flight (itself included). */
  sample(inFlightBytes: number, latencyMs: number, bytes = 0): void {
    if (latencyMs <= 0) return;
    const t = this.now();
    keepRecent(this.latencies, t, this.filterMs).push([t, latencyMs]);
    const base = this.minLatency() ?? latencyMs;
    let rate = inFlightBytes / latencyMs;
    if (bytes > 0) {
      keepRecent(this.completions, t, base).push([t, bytes]);
      let completed = 0;
      for (const [, b] of this.completions) completed += b;
      // Only once the span holds more than this batch: one completion alone says nothing of the rate.
      if (this.completions.length > 1 && t - this.completions[0][0] > 0) rate = Math.max(rate, completed / base);
    }
    keepRecent(this.rates, t, this.filterMs / 4).push([t, rate]);
    let best = 0;
    for (const [, r] of this.rates) best = Math.max(best, r);
    this.estimate = Math.max(this.floor, Math.min(this.ceiling, Math.round(best * base + this.headroom)));
  }

  private minLatency(): number | null {
    let min: number | null = null;
    for (const [, l] of this.latencies) min = min === null ? l : Math.min(min, l);
    return min;
  }
}

function keepRecent<T>(list: Array<[number, T]>, now: number, ms: number): Array<[number, T]> {
  while (list.length && list[0][0] < now - ms) list.shift();
  return list;
}
