/**
 * Asks the source, ahead of the background copy, where its image reads as
 * zeros (its holes), and holds those blocks without fetching them: a VM disk
 * is often mostly unallocated, and nbdcopy skips holes the same way. The copy
 * claims runs only below `scannedBlocks`, so it never fetches a hole the scan
 * is about to report. A source that cannot tell, or keeps failing to, ends
 * the scan: everything is then copied.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { Backoff, pause } from '../util/backoff';
import type { MigratingDevice, ZeroQueryWatch } from './migrating-device';
import type { Upstream } from '../upstream/upstream';

export interface ZeroScanOptions {
  /** Bytes asked about per query. */
  spanBytes: number;
  /** Queries in flight at once. */
  parallel: number;
  /** Failed queries in a row before the scan gives up. */
  maxFailures: number;
  /** First wait after a failed query; it doubles on each failure in a row. */
  retryMs: number;
}

export const DEFAULT_ZERO_SCAN_OPTIONS: ZeroScanOptions = {
  spanBytes: 256 << 20,
  parallel: 4,
  maxFailures: 5,
  retryMs: 500,
};

export class ZeroScan extends EventEmitter {
  /** Every block below this has been scanned (or the scan has ended). */
  scannedBlocks = 0;
  private stopped = false;
  /** Ends the waits between failed queries when the scan stops. */
  private readonly stopping = new AbortController();
  private readonly backoff: Backoff;
  /** Why the scan stopped early (then every block is copied). */
  private gaveUp: string | null = null;
  private loop: Promise<void> | null = null;

  constructor(
    private readonly device: MigratingDevice,
    private readonly upstream: Upstream,
    private readonly log: Logger,
    private readonly options: ZeroScanOptions = DEFAULT_ZERO_SCAN_OPTIONS,
  ) {
    super();
    this.backoff = new Backoff({ minMs: options.retryMs, maxMs: options.retryMs * 8 });
  }

  get done(): boolean {
    return this.scannedBlocks >= this.device.map.blockCount;
  }

  start(): void {
    this.loop ??= this.run();
  }

  /** Stops asking. Queries in flight end when the upstream answers or closes: then settle(). */
  stop(): void {
    this.stopped = true;
    this.stopping.abort();
  }

  async settle(): Promise<void> {
    await this.loop;
  }

  private async run(): Promise<void> {
    const { map } = this.device;
    const bs = map.blockSize;
    const size = map.imageSize;
    const started = performance.now();
    // Spans are block-aligned; each is scanned to its end (a short answer is asked again from where it ended).
    const span = Math.max(bs, Math.floor(this.options.spanBytes / bs) * bs);
    const spans = Math.ceil(size / span);
    const finished = new Uint8Array(spans);
    let next = 0;
    let firstUnfinished = 0;
    const worker = async (): Promise<void> => {
      while (!this.stopped && !this.gaveUp && next < spans) {
        const index = next++;
        await this.scanSpan(index * span, Math.min(span, size - index * span));
        finished[index] = 1;
        while (firstUnfinished < spans && finished[firstUnfinished]) firstUnfinished++;
        this.advance(Math.min(map.blockCount, Math.ceil((firstUnfinished * span) / bs)));
      }
    };
    if (!this.upstream.zeroRanges) return this.end('the source cannot report zero ranges');
    await Promise.all(Array.from({ length: Math.min(this.options.parallel, spans) }, worker));
    if (this.stopped) return;
    if (this.gaveUp) return this.end(this.gaveUp);
    this.log.info(
      {
        blocksSkipped: this.device.counters.zeroBlocksSkipped,
        ms: Math.round(performance.now() - started),
      },
      'source zero ranges scanned; those blocks are not fetched',
    );
    this.advance(map.blockCount);
  }

  private async scanSpan(offset: number, length: number): Promise<void> {
    let at = offset;
    const end = offset + length;
    while (at < end && !this.stopped && !this.gaveUp) {
      let answer;
      // Source writes that arrive while the query is out may postdate its answer: those blocks are not held.
      const watch = this.device.watchZeroQuery();
      try {
        answer = await this.upstream.zeroRanges!(at, end - at);
      } catch (e) {
        this.device.endZeroQuery(watch);
        const wait = this.backoff.next();
        if (this.backoff.attempts >= this.options.maxFailures) {
          this.gaveUp = `zero-range queries failed ${this.backoff.attempts} times in a row (${(e as Error).message})`;
          return;
        }
        await pause(wait, this.stopping.signal);
        continue;
      }
      if (answer === null) {
        this.device.endZeroQuery(watch);
        this.gaveUp = 'the source cannot report zero ranges';
        return;
      }
      this.backoff.reset();
      try {
        await this.holdRanges(answer.ranges, watch);
      } finally {
        this.device.endZeroQuery(watch);
      }
      if (this.stopped || this.gaveUp) return;
      at += answer.covered;
    }
  }

  private async holdRanges(ranges: Array<{ offset: number; length: number }>, watch: ZeroQueryWatch): Promise<void> {
    const bs = this.device.map.blockSize;
    for (const r of ranges) {
      if (this.stopped) return;
      // Only whole blocks; the image's last block may be partial and ends at the image's end.
      const first = Math.ceil(r.offset / bs);
      const rangeEnd = r.offset + r.length;
      const last = rangeEnd >= this.device.map.imageSize ? this.device.map.blockCount : Math.floor(rangeEnd / bs);
      if (last <= first) continue;
      try {
        await this.device.holdZeroRun(first, last - first, watch);
      } catch (e) {
        this.gaveUp = `cannot punch holes in the local image (${(e as Error).message})`;
        return;
      }
    }
  }

  private advance(blocks: number): void {
    if (blocks <= this.scannedBlocks) return;
    this.scannedBlocks = blocks;
    this.emit('progress', blocks);
  }

  private end(reason: string): void {
    if (!this.stopped) this.log.info({ reason }, 'not skipping source holes; copying every block');
    this.advance(this.device.map.blockCount);
  }
}
