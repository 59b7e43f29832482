/**
 * Seeding: takes blocks from a seed image at the destination (a template, or
 * an older copy of the disk) instead of fetching them. For each span of
 * missing blocks it asks the source for their SHA-256 (HASH_QUERY over the
 * ferry wire) while it reads and hashes the same blocks of the seed; blocks
 * whose digests are equal are copied from the seed and held through the
 * block states, exactly as fetched ones are (durable at the next persist,
 * discarded if the source writes them meanwhile, overwritten by a VM write).
 * The rest is left to the background copy, which claims runs only below
 * `scannedBlocks`, so it never fetches a block the scan is about to seed.
 * Blocks are compared at the same offset: the seed is the same disk, older.
 * A source that keeps failing to answer ends the scan: the rest is copied.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { BlockDevice } from '../store/block-device';
import type { MigratingDevice } from './migrating-device';
import type { Upstream } from '../upstream/upstream';
import { BLOCK_HASH_BYTES, hashBlocks } from '../util/block-hash';

export interface SeedScanOptions {
  /** Blocks asked about per query (at most the wire's MAX_HASH_BLOCKS). */
  spanBlocks: number;
  /** Queries in flight at once. */
  parallel: number;
  /** Failed queries in a row before the scan gives up. */
  maxFailures: number;
  retryMs: number;
}

export const DEFAULT_SEED_SCAN_OPTIONS: SeedScanOptions = {
  spanBlocks: 1024,
  parallel: 4,
  maxFailures: 5,
  retryMs: 500,
};

export class SeedScan extends EventEmitter {
  /** Every block below this has been compared (or the scan has ended). */
  scannedBlocks = 0;
  private stopped = false;
  private failures = 0;
  private gaveUp: string | null = null;
  private loop: Promise<void> | null = null;

  constructor(
    private readonly device: MigratingDevice,
    private readonly upstream: Upstream,
    private readonly seed: BlockDevice,
    private readonly log: Logger,
    private readonly options: SeedScanOptions = DEFAULT_SEED_SCAN_OPTIONS,
  ) {
    super();
  }

  start(): void {
    this.loop ??= this.run();
  }

  stop(): void {
    this.stopped = true;
  }

  /** Waits for the scan to end, then closes the seed image. */
  async settle(): Promise<void> {
    await this.loop;
    await this.seed.close();
  }

  private async run(): Promise<void> {
    const { map } = this.device;
    const started = performance.now();
    const span = this.options.spanBlocks;
    const spans = Math.ceil(map.blockCount / span);
    const finished = new Uint8Array(spans);
    let next = 0;
    let firstUnfinished = 0;
    const worker = async (): Promise<void> => {
      while (!this.stopped && !this.gaveUp && next < spans) {
        const index = next++;
        await this.scanSpan(index * span, Math.min(map.blockCount, (index + 1) * span));
        finished[index] = 1;
        while (firstUnfinished < spans && finished[firstUnfinished]) firstUnfinished++;
        this.advance(Math.min(map.blockCount, firstUnfinished * span));
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.options.parallel, spans) }, worker));
    if (this.stopped) return;
    if (this.gaveUp) this.log.warn({ reason: this.gaveUp }, 'seeding stopped; the remaining blocks are copied');
    else
      this.log.info(
        { blocksSeeded: this.device.counters.seededBlocks, ms: Math.round(performance.now() - started) },
        'seed compared; the blocks it holds are not fetched',
      );
    this.advance(map.blockCount);
  }

  private async scanSpan(from: number, to: number): Promise<void> {
    const { map, states } = this.device;
    const bs = map.blockSize;
    while (!this.stopped && !this.gaveUp) {
      const first = states.nextIdle(from, to);
      if (first < 0) return; // nothing missing here any more
      const offset = first * bs;
      const data = Buffer.allocUnsafe(Math.min(to * bs, map.imageSize) - offset);
      const count = Math.ceil(data.length / bs);
      // Source writes reported while the query is out may postdate its hashes: those blocks are not seeded.
      const watch = this.device.watchZeroQuery();
      try {
        const [theirs] = await Promise.all([this.upstream.blockHashes!(offset, count), this.seed.read(offset, data)]);
        const ours = hashBlocks(data, bs);
        const matches: number[] = [];
        for (let i = 0; i < count; i++) {
          const at = i * BLOCK_HASH_BYTES;
          if (ours.compare(theirs, at, at + BLOCK_HASH_BYTES, at, at + BLOCK_HASH_BYTES) === 0) matches.push(first + i);
        }
        await this.device.holdSeedBlocks(first, data, matches, watch);
        this.failures = 0;
        return;
      } catch (e) {
        if (this.stopped) return;
        if (++this.failures >= this.options.maxFailures) {
          this.gaveUp = `seeding failed ${this.failures} times in a row (${(e as Error).message})`;
          return;
        }
        await new Promise((r) => setTimeout(r, this.options.retryMs));
      } finally {
        this.device.endZeroQuery(watch);
      }
    }
  }

  private advance(blocks: number): void {
    if (blocks <= this.scannedBlocks) return;
    this.scannedBlocks = blocks;
    this.emit('progress', blocks);
  }
}
