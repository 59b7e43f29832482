/**
 * Streams every block the destination does not hold yet, in runs, keeping
 * about one bandwidth-delay product on the link: enough to fill it, and
 * little enough that an on-demand fetch does not wait behind a deep queue of
 * background bytes at the bottleneck (see WindowEstimator). The window counts
 * wire bytes (WireRatio predicts a run's) from a run's send until its bytes
 * arrive, and sends are spaced at the measured delivery rate (Pacer); image
 * bytes in flight are bounded too, since each costs a buffer at the
 * destination until it lands. Runs are short on a slow link (a few
 * milliseconds of it each): the queue a window leaves is counted in runs,
 * and an urgent reply waits behind at most what is queued.
 */
import type { Logger } from 'pino';
import type { MigratingDevice } from './migrating-device';
import { TokenBucket } from './token-bucket';
import { WindowEstimator } from './window-estimator';
import { WireRatio, type LinkCounters } from './wire-ratio';
import { Pacer } from './pacer';
import { DeliveryClock } from './delivery-sample';
import { Backoff } from '../util/backoff';
import type { HostWindowMember } from './host-window';

export interface BackgroundCopyOptions {
  /** Blocks per fetch request. */
  batchBlocks: number;
  /** Image bytes of background fetches in flight at most, and the ceiling of the adaptive wire window. */
  windowBytes: number;
  /** Pause after the local image refused a write (full disk). */
  storeErrorBackoffMs: number;
  /**
   * Runs kept in flight above the measured bandwidth-delay product (default 1): more fills the
   * link sooner; each queues on-demand fetches behind one more run.
   */
  queueBatches?: number;
  /**
   * This copy's place in a window shared with other copies over the same
   * bottleneck (`ferry daemon`); without one, the copy's own window alone
   * bounds it.
   */
  hostWindow?: HostWindowMember;
  /** The clock the copy times its runs by, in ms (performance.now() unless a test runs its own). */
  now?: () => number;
}

export class BackgroundCopy {
  private cursor = 0;
  /** Image bytes of the runs in flight (sent, not landed yet). */
  private inFlightBytes = 0;
  /** Predicted wire bytes of the runs on the link (sent, bytes not arrived yet): what the window bounds. */
  private onLinkBytes = 0;
  private paused = false;
  private stopped = false;
  private blockedUntil = 0;
  private wakeUp: (() => void) | null = null;
  private readonly bucket: TokenBucket;
  private loop: Promise<void> | null = null;
  private readonly failures = new Backoff(FAILED_FETCH_BACKOFF);
  private readonly running = new Set<Promise<void>>();
  private readonly window: WindowEstimator;
  private readonly ratio = new WireRatio();
  private readonly now: () => number;
  private readonly pacer: Pacer;
  private readonly delivery = new DeliveryClock();
  /** The pace last asked of the source, bytes per second (0: none yet). */
  private paced = 0;
  /** Runs are claimed only below this block (a zero scan raises it as it goes). */
  private limit: number;

  constructor(
    private readonly device: MigratingDevice,
    private readonly options: BackgroundCopyOptions,
    rateLimit: number | null,
    private readonly log: Logger,
    /** The upstream's cumulative byte counters (null while none is attached). */
    private readonly link: () => LinkCounters | null = () => null,
    /** Bytes the upstream's sockets read so far (null: none attached, or it cannot tell). */
    private readonly bytesRead: () => number | null = () => null,
    /** Asks the source to send background data at this rate, bytes per second (see reportPace). */
    private readonly pace: (bytesPerSecond: number) => void = () => {},
  ) {
    this.limit = device.map.blockCount;
    this.bucket = new TokenBucket(rateLimit);
    this.now = options.now ?? (() => performance.now());
    this.pacer = new Pacer(this.now);
    const batchBytes = options.batchBlocks * device.map.blockSize;
    this.window = new WindowEstimator(
      Math.min(2 * batchBytes, options.windowBytes),
      options.windowBytes,
      Math.min(MIN_WINDOW, batchBytes),
      (options.queueBatches ?? 1) * batchBytes, // no rate yet: runs are full batches
      this.now,
    );
    device.on('store-error', () => {
      this.blockedUntil = Date.now() + options.storeErrorBackoffMs;
    });
    // Before cutover the source's writes make copied blocks missing again: there is work again.
    device.on('missing', () => this.wake());
    device.on('urgent-arrived', () => this.wake());
    const host = options.hostWindow;
    if (host) {
      host.onWake(() => this.wake());
    }
  }

  get isPaused(): boolean {
    return this.paused;
  }

  get rateLimit(): number | null {
    return this.bucket.bytesPerSecond;
  }

  /** Image bytes in flight. */
  get bytesInFlight(): number {
    return this.inFlightBytes;
  }

  /** Predicted wire bytes on the link (what the window bounds). */
  get wireBytesInFlight(): number {
    return this.onLinkBytes;
  }

  /** The current in-flight target in wire bytes. */
  get windowBytes(): number {
    return this.window.bytes;
  }

  /**
   * Whether there is room for the next run: its wire bytes fit under the window on top of what is
   * on the link, the copy's runs and the on-demand fetches (one run may always go; a shared
   * window decides for itself), and its image bytes under their ceiling.
   */
  hasRoom(runBlocks = this.runBlocks()): boolean {
    const nextImage = runBlocks * this.device.map.blockSize;
    if (this.inFlightBytes > 0 && this.inFlightBytes + nextImage > this.options.windowBytes) return false;
    // A shared window bounds the wire bytes of every copy on the link, this one's included: a
    // window of its own, learned from its share of the rate, would only hold it below its share.
    if (this.onLinkBytes === 0 || this.options.hostWindow) return true;
    // On-demand fetches on their way share the link: counted here, the copy makes room for them
    // instead of piling a VM's 1 MiB reads on top of a full window, past a shallow router's
    // drop point (every drop costs the stream a retransmission timeout).
    const urgent = this.ratio.wireBytes(this.device.urgentBytesInFlight ?? 0);
    const base = this.window.baseLatencyMs ?? 0;
    // The window opens by the pacer's gain (less in start-up: see STARTUP_WINDOW_GAIN); in a probing
    // round by the same gain as the pacing, or the probe could not find more rate.
    const extra = (this.pacer.windowGain(base) - 1) * this.window.rate * base;
    return this.onLinkBytes + urgent + this.ratio.wireBytes(nextImage) <= this.window.bytes + Math.max(0, extra);
  }

  /**
   * Blocks in the next run: about RUN_LINK_MS of the link at its measured rate (in wire bytes, so
   * runs that compress well hold more blocks), at most batchBlocks, at least MIN_RUN_BLOCKS.
   */
  runBlocks(): number {
    const max = this.options.batchBlocks;
    // A shared window's rate is the link's; this copy's own is its share of it.
    const rate = this.options.hostWindow?.linkRate || this.window.rate;
    if (rate <= 0) return max;
    const imageBytes = (rate * RUN_LINK_MS) / this.ratio.ratio;
    const blocks = Math.floor(imageBytes / this.device.map.blockSize);
    return Math.max(Math.min(MIN_RUN_BLOCKS, max), Math.min(max, blocks));
  }

  /**
   * Headroom above the bandwidth-delay product (whose latency holds one run's own time on the
   * wire): queueBatches runs, in wire bytes. A run goes only if it fits, so about half a run
   * less than this waits in the bottleneck's queue on average.
   */
  private headroom(): number {
    const run = this.ratio.wireBytes(this.runBlocks() * this.device.map.blockSize);
    return Math.round((this.options.queueBatches ?? 1) * run);
  }

  start(): void {
    this.loop ??= this.run();
  }

  /** The pace asked of the source, bytes per second (0: none). */
  get pacedBytesPerSecond(): number {
    return this.paced;
  }

  /**
   * Asks the source to send background data at the pacer's rate: the delivery
   * rate times the round's gain. The window counts wire bytes it predicts from
   * what recent runs cost; after a stretch of zero blocks or references the
   * prediction is a hundredth of raw, and runs the window let through as
   * cheap may come back raw, megabytes at once. Paced at the source, by what
   * each batch really costs, they leave at the link's rate. Not in start-up:
   * the first rates are a cold connection's, a tenth of the link or less,
   * and batches held back at the source come back late, which ends start-up
   * as a queue would (measured: start-up ended at a tenth of the link). Asked
   * again when the rate moves by more than PACE_CHANGE. A shared window paces
   * its copies by their completions (see run()), so a copy in one asks nothing.
   */
  private reportPace(): void {
    if (this.options.hostWindow || !this.pacer.filled) return;
    const rate = this.window.rate;
    if (rate <= 0) return;
    const paced = Math.round(rate * this.pacer.gain(this.window.baseLatencyMs ?? 0) * 1000);
    if (Math.abs(paced - this.paced) <= PACE_CHANGE * this.paced) return;
    this.paced = paced;
    this.pace(paced);
  }

  pause(): void {
    this.paused = true;
    this.options.hostWindow?.idle();
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
    this.options.hostWindow?.leave();
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
    while (!this.stopped) {
      if (this.device.map.allHeld) {
        this.options.hostWindow?.idle();
        if (this.device.phase === 'post-copy') {
          this.options.hostWindow?.leave();
          return;
        }
        await this.sleep(null); // warm: wait for a source write to make a block missing again
        continue;
      }
      // One size for the whole turn: the checks below and the claim agree on it.
      const runBlocks = this.runBlocks();
      if (this.paused || !this.hasRoom(runBlocks)) {
        await this.sleep(this.paused ? null : 1000); // a completion wakes it
        continue;
      }
      const nextWire = this.ratio.wireBytes(runBlocks * bs);
      if (this.options.hostWindow && !this.options.hostWindow.mayCopy(nextWire)) {
        await this.sleep(1000); // the shared window wakes it when room appears
        continue;
      }
      const blockedFor = this.blockedUntil - Date.now();
      if (blockedFor > 0) {
        await this.sleep(blockedFor);
        continue;
      }
      // A shared window paces the copies by their completions: each copy's own pacer would hold
      // it to the rate its share let it reach, and the shared window could never find more.
      const paced = this.options.hostWindow ? 0 : this.pacer.delay();
      if (paced >= 1) {
        await this.sleep(paced);
        continue;
      }
      const wait = this.bucket.take(runBlocks * bs);
      if (wait > 0) {
        await this.sleep(wait);
        continue;
      }
      let run = this.device.claimBackgroundRun(this.cursor, runBlocks, this.limit);
      if (!run && this.cursor > 0) {
        this.cursor = 0; // wrap: blocks that went missing again after a failed fetch lie behind
        run = this.device.claimBackgroundRun(0, runBlocks, this.limit);
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
      const sentAt = this.now();
      const base = this.window.baseLatencyMs ?? 0;
      const wire = this.ratio.wireBytes(bytes);
      const readAtSend = this.bytesRead();
      const stamp = readAtSend === null ? null : this.delivery.sent(sentAt, readAtSend, this.onLinkBytes === 0);
      this.onLinkBytes += wire;
      // Less than a bandwidth-delay product on the link, this run included: the copy is not
      // offering the link all it can carry (cheap runs of zeros or references under the image
      // ceiling, a drain round), so this run's rate cannot say the link got slower (see
      // WindowEstimator.sample).
      const appLimited = this.onLinkBytes < this.window.rate * base;
      const receivedAtSend = this.link()?.bytesOnWire ?? null;
      const host = this.options.hostWindow;
      const hostInFlightAtSend = host?.sent(wire) ?? 0;
      const hostAppLimited = host?.appLimited(hostInFlightAtSend) ?? false;
      this.pacer.sent(wire, this.window.rate, base);
      // Both windows count the run until its bytes arrive: they bound what is on the link, and
      // the time it took is the path's (landing it in the image is the destination's own work).
      let onLink = true;
      const offLink = (): void => {
        onLink = false;
        this.onLinkBytes -= wire;
      };
      const arrived = (): void => {
        if (!onLink) return;
        offLink();
        const now = this.now();
        const latency = now - sentAt;
        const counters = this.link();
        if (counters) this.ratio.observe(counters);
        this.window.setHeadroom(this.headroom());
        // What the sockets read while this run was on its way, over a span that cannot run ahead
        // of the link (see delivery-sample.ts); else what the counters say arrived meanwhile, over
        // the latency; else its own predicted bytes (no counters, or a new upstream's that started over).
        const read = stamp ? this.bytesRead() : null;
        const delivery = stamp && read !== null ? this.delivery.arrived(stamp, now, read) : null;
        if (delivery) this.window.sample(delivery.bytes, latency, delivery.intervalMs, appLimited);
        else {
          const received = counters && receivedAtSend !== null ? counters.bytesOnWire - receivedAtSend : -1;
          this.window.sample(received >= 0 ? received : wire, latency, latency, appLimited);
        }
        this.pacer.observe(this.window.rate, this.window.baseLatencyMs ?? 0, latency);
        this.reportPace();
        host?.delivered(wire, hostInFlightAtSend, latency, hostAppLimited);
      };
      const fetch = this.device
        .fetchBackgroundRun(run, arrived)
        .then(
          () => {
            this.failures.reset();
            arrived(); // a device that does not report arrivals: the run is off the link by now
          },
          (e: Error) => {
            if (onLink) {
              offLink();
              host?.failed(wire);
            }
            // Wait on a real timer before the next run, so a source that fails at once cannot spin the loop.
            this.blockedUntil = Math.max(this.blockedUntil, Date.now() + this.failures.next());
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

/** The relative change of the pacing rate that is worth a PACE to the source. */
const PACE_CHANGE = 0.05;
/** Waits after a failed background fetch: 40 ms, doubling to 1 s, reset by a success. */
const FAILED_FETCH_BACKOFF = { minMs: 40, maxMs: 1000 };
/** The window's floor in wire bytes (one run is always allowed in flight). */
const MIN_WINDOW = 64 * 1024;
/** A run holds about this long of the link at its measured rate. */
const RUN_LINK_MS = 5;
/** Runs hold at least this many blocks (a request per few blocks would cost more than it saves). */
const MIN_RUN_BLOCKS = 8;
