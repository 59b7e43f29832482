/**
 * One session's record of the source's writes, at the session's block size:
 * blocks written and not yet reported, and the reports sent but not yet
 * acknowledged (at most `maxUnacked` of them). Its memory is bounded by the
 * image's block count, however many writes it sees. Pure: no sockets, no timers.
 */
import { BlockBitmap } from '../util/block-bitmap';
import { MAX_DIRTY_RANGES } from './protocol';
import type { ByteRange, Dirty } from './messages';

export interface DirtyTrackerOptions {
  /** Reports in flight at most; more wait in the bitmap until some are acknowledged. */
  maxUnacked?: number;
  /** Ranges per report at most. */
  maxRanges?: number;
  /** The first sequence number to use. */
  firstSeq?: number;
}

export class DirtyTracker {
  private readonly pending: BlockBitmap;
  private readonly unacked = new Map<number, ByteRange[]>();
  private seq: number;
  private readonly maxUnacked: number;
  private readonly maxRanges: number;

  constructor(
    readonly imageSize: number,
    readonly blockSize: number,
    options: DirtyTrackerOptions = {},
  ) {
    this.pending = new BlockBitmap(Math.ceil(imageSize / blockSize));
    this.seq = options.firstSeq ?? 1;
    this.maxUnacked = options.maxUnacked ?? 32;
    this.maxRanges = options.maxRanges ?? MAX_DIRTY_RANGES;
  }

  /** Records a write, trim or zero of [offset, offset + length). */
  mark(offset: number, length: number): void {
    if (length <= 0) return;
    const first = Math.floor(offset / this.blockSize);
    const end = Math.ceil((offset + length) / this.blockSize);
    this.pending.set(first, end - first);
  }

  /** Marks whole byte ranges (already aligned to the block size) as not yet reported. */
  markRanges(ranges: readonly ByteRange[]): void {
    for (const r of ranges) this.mark(r.offset, r.length);
  }

  /** Blocks written and not yet reported. */
  get pendingBlocks(): number {
    return this.pending.count;
  }

  get unackedReports(): number {
    return this.unacked.size;
  }

  /** Ranges held in unacknowledged reports (at most maxUnacked × maxRanges). */
  get unackedRanges(): number {
    let n = 0;
    for (const ranges of this.unacked.values()) n += ranges.length;
    return n;
  }

  /** Whether takeReport would give a report now. */
  get hasReport(): boolean {
    return this.pending.count > 0 && this.unacked.size < this.maxUnacked;
  }

  /** The next report to send (its blocks move from pending to unacked), or null. */
  takeReport(): Dirty | null {
    if (!this.hasReport) return null;
    const ranges = this.rangesOf(this.pending.runs(this.maxRanges));
    for (const r of ranges) this.pending.clear(r.offset / this.blockSize, Math.ceil(r.length / this.blockSize));
    const seq = this.takeSeq();
    this.unacked.set(seq, ranges);
    return { seq, ranges };
  }

  /** The destination made report `seq` durable; false when no such report is outstanding. */
  ack(seq: number): boolean {
    return this.unacked.delete(seq);
  }

  /** The link the reports went out on is gone: every unacknowledged report is sent again, under a new number. */
  requeueUnacked(): void {
    for (const ranges of this.unacked.values()) this.markRanges(ranges);
    this.unacked.clear();
  }

  /** A sequence number no report of this session used before. */
  takeSeq(): number {
    return this.seq++;
  }

  /** Every write not acknowledged (pending or unacked), ascending and merged; changes nothing. */
  finalSet(): ByteRange[] {
    const all = this.pending.clone();
    for (const ranges of this.unacked.values())
      for (const r of ranges) all.set(r.offset / this.blockSize, Math.ceil(r.length / this.blockSize));
    return this.rangesOf(all.runs());
  }

  private rangesOf(runs: Array<[number, number]>): ByteRange[] {
    const bs = this.blockSize;
    return runs.map(([first, n]) => {
      const offset = first * bs;
      return { offset, length: Math.min((first + n) * bs, this.imageSize) - offset };
    });
  }
}
