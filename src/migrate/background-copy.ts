/**
 * Streams every block the destination does not hold yet, in runs, keeping a
 * bounded window of bytes in flight (about one bandwidth-delay product) so
 * the link stays full without queueing far ahead of on-demand fetches.
 */
import type { Logger } from 'pino';
import type { MigratingDevice } from './migrating-device';
import { TokenBucket } from './token-bucket';

export interface BackgroundCopyOptions {
  /** Blocks per fetch request. */
  batchBlocks: number;
  /** Bytes of background fetches in flight at most. */
  windowBytes: number;
  /** Pause after the local image refused a write (full disk). */
  storeErrorBackoffMs: number;
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

  constructor(
    private readonly device: MigratingDevice,
    private readonly options: BackgroundCopyOptions,
    rateLimit: number | null,
    private readonly log: Logger,
  ) {
    this.bucket = new TokenBucket(rateLimit);
    device.on('store-error', () => {
      this.blockedUntil = Date.now() + options.storeErrorBackoffMs;
    });
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

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake();
    await this.loop;
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
      if (this.device.map.allHeld) return;
      if (this.paused || this.inFlightBytes + batchBytes > this.options.windowBytes) {
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
      let run = this.device.claimBackgroundRun(this.cursor, this.options.batchBlocks);
      if (!run && this.cursor > 0) {
        this.cursor = 0; // wrap: blocks that went missing again after a failed fetch lie behind
        run = this.device.claimBackgroundRun(0, this.options.batchBlocks);
      }
      if (!run) {
        // Everything missing is in flight already (on demand or here); wait for it to settle.
        await this.sleep(200);
        continue;
      }
      this.cursor = run.first + run.count;
      const bytes = run.count * bs;
      this.inFlightBytes += bytes;
      this.device
        .fetchBackgroundRun(run.first, run.count)
        .catch((e: Error) => this.log.debug({ err: e.message }, 'background fetch failed; will retry'))
        .finally(() => {
          this.inFlightBytes -= bytes;
          this.wake();
        });
    }
  }
}
