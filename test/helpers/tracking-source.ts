/**
 * An in-memory source whose VM writes while a destination copies from it, with
 * the write tracking of the upstream contract ('stream'): each write is
 * reported after it completes, reports travel with random delays (so they
 * overtake or trail fetched data, as on separate connections), unacknowledged
 * reports are kept, and cutover fences the source and hands over every report
 * not yet acknowledged. Fetches and zero queries read the content when they
 * arrive and answer after a random delay.
 */
import { EventEmitter } from 'node:events';
import {
  emptyLinkStats,
  type ByteRange,
  type DirtyReport,
  type FetchPriority,
  type LinkStats,
  type Upstream,
  type WriteTracking,
  type ZeroRangeAnswer,
} from '../../src/upstream/upstream';

export class TrackingSource extends EventEmitter implements Upstream {
  readonly identity = 'tracking:1';
  readonly description = 'tracking://source';
  readonly connected = true;
  readonly reconnects = 0;
  readonly tracking: WriteTracking;
  trackingEpoch = 'epoch-1';
  fenced = false;
  private reportsInFlight = 0;
  /** Fetches answered, for tests to count. */
  fetches = 0;
  private nextSeq = 1;
  private readonly unacked = new Map<number, ByteRange[]>();
  private finalSet: { seq: number; ranges: ByteRange[] } | null = null;
  /** Answers on their way, and how each fails if the link closes first. */
  private readonly inFlight = new Map<NodeJS.Timeout, () => void>();

  constructor(
    readonly content: Buffer,
    private readonly delay: () => number,
    tracking: WriteTracking = 'stream',
    /** Delay of a write report (default: as any answer); a slow one arrives after the cutover that carried it. */
    private readonly reportDelay: () => number = delay,
  ) {
    super();
    this.tracking = tracking;
  }

  get size(): number {
    return this.content.length;
  }

  /** The source VM writes; rejected once fenced (as the real source answers EPERM). */
  vmWrite(offset: number, data: Buffer): void {
    if (this.fenced) throw new Error('EPERM: the source is fenced');
    data.copy(this.content, offset);
    const seq = this.nextSeq++;
    const ranges = [{ offset, length: data.length }];
    // A dirty bitmap records every write and is read whole at cutover; a stream reports each one.
    this.unacked.set(seq, ranges);
    if (this.tracking !== 'stream') return;
    // A report may still arrive after the cutover that carried it in the final set.
    this.reportsInFlight++;
    this.later(
      () => {
        this.reportsInFlight--;
        this.emit('dirty', { ranges, ack: () => this.unacked.delete(seq) } satisfies DirtyReport);
        if (this.reportsInFlight === 0) this.emit('reports-delivered');
      },
      () => {
        // The link closed first: the report is lost with it (the source keeps it unacknowledged).
        this.reportsInFlight--;
        if (this.reportsInFlight === 0) this.emit('reports-delivered');
      },
      this.reportDelay(),
    );
  }

  fetch(offset: number, length: number, _priority: FetchPriority): Promise<Buffer> {
    // The contract: whole blocks (the ferry wire cannot send less).
    if (offset % 4096 !== 0 || (length % 4096 !== 0 && offset + length !== this.content.length))
      return Promise.reject(new Error(`fetch of ${offset}+${length} is not whole blocks`));
    const data = Buffer.from(this.content.subarray(offset, offset + length)); // read now, arrive later
    this.fetches++;
    return new Promise((resolve, reject) => this.later(() => resolve(data), reject));
  }

  zeroRanges(offset: number, length: number): Promise<ZeroRangeAnswer | null> {
    const bs = 4096;
    const ranges: ByteRange[] = [];
    for (let at = offset; at < offset + length; at += bs) {
      const n = Math.min(bs, offset + length - at);
      if (this.content.subarray(at, at + n).every((b) => b === 0)) {
        const last = ranges[ranges.length - 1];
        if (last && last.offset + last.length === at) last.length += n;
        else ranges.push({ offset: at, length: n });
      }
    }
    return new Promise((resolve, reject) => this.later(() => resolve({ covered: length, ranges }), reject));
  }

  cutover(): Promise<DirtyReport> {
    const ranges = this.fence();
    return new Promise((resolve, reject) =>
      this.later(() => resolve({ ranges, ack: () => this.unacked.clear() }), reject),
    );
  }

  /** The operator cuts over at the source: it fences and pushes its final set. */
  cutoverHere(): void {
    const ranges = this.fence();
    this.later(() => this.emit('cutover', { ranges, ack: () => this.unacked.clear() } satisfies DirtyReport));
  }

  private fence(): ByteRange[] {
    this.fenced = true;
    if (this.tracking === 'none') return [];
    this.finalSet ??= { seq: this.nextSeq++, ranges: [...this.unacked.values()].flat() };
    return this.finalSet.ranges;
  }

  reconnect(): Promise<void> {
    return Promise.resolve();
  }

  /** Fails everything still on its way, as a closed connection does. */
  async close(): Promise<void> {
    const failing = [...this.inFlight];
    this.inFlight.clear();
    for (const [timer, fail] of failing) {
      clearTimeout(timer);
      fail();
    }
  }

  linkStats(): LinkStats {
    return emptyLinkStats();
  }

  /** Resolves once every write report sent so far has arrived. */
  reportsDelivered(): Promise<void> {
    if (this.reportsInFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.once('reports-delivered', resolve));
  }

  /** Reports sent and not acknowledged yet. */
  get pendingReports(): number {
    return this.unacked.size;
  }

  private later(fn: () => void, onClose?: (e: Error) => void, ms = this.delay()): void {
    const timer = setTimeout(() => {
      this.inFlight.delete(timer);
      fn();
    }, ms);
    this.inFlight.set(timer, () => onClose?.(new Error('the source connection closed')));
  }
}
