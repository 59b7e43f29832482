/**
 * The destination's disk while it migrates: a BlockDevice over a local image
 * and a BlockMap, fetching from an Upstream what it does not hold yet.
 *
 * Block states: missing → (fetching → landing | claimed) → held. The main
 * thread owns all of them. A block in transit has a Transit record; readers
 * wait on it, so however many readers want a missing block it is fetched
 * once. A VM write that covers a whole missing block claims it: the fetched
 * copy, whenever it arrives, is discarded (latest write wins). A partial
 * write to a missing block fetches the block first. A writer never waits
 * while holding claims, so writers cannot deadlock each other.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { BlockDevice, BlockDeviceError, BlockSizeHint, Extent, ZeroOptions } from '../store/block-device';
import type { BlockMap } from '../store/block-map';
import type { FileDevice } from '../store/file-device';
import type { FetchPriority, Upstream } from '../upstream/upstream';
import { LatencyWindow, RateMeter } from './latency-window';
import { blockRuns } from '../util/block-runs';

interface Transit {
  /** A VM write, zero or trim has taken the block over; fetched data is discarded. */
  claimed: boolean;
  /** Fetched data is being written to the image. */
  landing: boolean;
  /** An urgent fetch covers it. */
  urgent: boolean;
  /** Fetches in flight for it (an urgent one may overtake a background one). */
  fetches: number;
  /** Set when the transit ended without the block becoming held for a reason readers must see. */
  error: Error | null;
  done: Promise<void>;
  finish: () => void;
}

export interface MigratingDeviceOptions {
  /** How long a VM request waits for a missing block (source down) before EIO. */
  fetchTimeoutMs: number;
}

export interface CopyCounters {
  bytesFetched: number;
  onDemandFetches: number;
  fetchErrors: number;
  discardedFetches: number;
  /** Blocks never fetched: the source said they read as zeros. */
  zeroBlocksSkipped: number;
}

export class MigratingDevice extends EventEmitter implements BlockDevice {
  readonly readOnly = false;
  readonly canTrim: boolean;
  readonly canFastZero: boolean;
  readonly blockSize: BlockSizeHint;
  readonly counters: CopyCounters = {
    bytesFetched: 0,
    onDemandFetches: 0,
    fetchErrors: 0,
    discardedFetches: 0,
    zeroBlocksSkipped: 0,
  };
  readonly onDemandLatency = new LatencyWindow();
  readonly backgroundRate = new RateMeter();
  private readonly transits = new Map<number, Transit>();
  private readonly bs: number;

  constructor(
    private readonly local: FileDevice,
    readonly map: BlockMap,
    private upstream: Upstream | null,
    private readonly options: MigratingDeviceOptions,
    private readonly log: Logger,
  ) {
    super();
    this.bs = map.blockSize;
    this.canFastZero = local.canFastZero;
    // A trim that frees nothing would leave claimed blocks with stale bytes: only trim where the file can.
    this.canTrim = local.canTrim;
    this.blockSize = { minimum: 1, preferred: this.bs, maximum: local.blockSize.maximum };
  }

  get size(): number {
    return this.map.imageSize;
  }

  get inTransit(): number {
    return this.transits.size;
  }

  /** Once every block is held the upstream is no longer needed. */
  detachUpstream(): void {
    this.upstream = null;
  }

  async read(offset: number, into: Buffer): Promise<void> {
    if (into.length === 0) return;
    const [first, last] = this.blocksOf(offset, into.length);
    if (!this.map.rangeHeld(first, last)) await this.ensureHeld(this.missingIn(first, last));
    await this.local.read(offset, into);
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    if (data.length === 0) return;
    await this.modify(offset, data.length, true, () => this.local.write(offset, data, false));
    if (fua) await this.flush();
  }

  async zero(offset: number, length: number, options: ZeroOptions): Promise<void> {
    if (length === 0) return;
    await this.modify(offset, length, true, () => this.local.zero(offset, length, { ...options, fua: false }));
    if (options.fua) await this.flush();
  }

  /** TRIM is advisory: only whole blocks are trimmed (and then held as zeros). */
  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    const start = Math.ceil(offset / this.bs) * this.bs;
    const end = offset + length === this.size ? this.size : Math.floor((offset + length) / this.bs) * this.bs;
    if (end > start) await this.modify(start, end - start, false, () => this.local.trim(start, end - start, false));
    if (fua) await this.flush();
  }

  async cache(offset: number, length: number): Promise<void> {
    if (length === 0) return;
    const [first, last] = this.blocksOf(offset, length);
    await this.ensureHeld(this.missingIn(first, last));
  }

  /** Makes every completed write durable, data first, then the block map. */
  flush(): Promise<void> {
    return this.map.persist(() => this.local.flush());
  }

  /** The image's own fdatasync, without the block map. */
  flushData(): Promise<void> {
    return this.local.flush();
  }

  async status(offset: number, length: number): Promise<Extent[]> {
    const extents: Extent[] = [];
    const end = offset + length;
    let at = offset;
    while (at < end && extents.length < 256) {
      const block = Math.floor(at / this.bs);
      const held = this.map.isHeld(block);
      let runEnd = (block + 1) * this.bs;
      while (runEnd < end && this.map.isHeld(runEnd / this.bs) === held) runEnd += this.bs;
      runEnd = Math.min(runEnd, end);
      // A missing block's allocation is the source's business: report it as data.
      if (held) {
        const local = await this.local.status(at, runEnd - at);
        extents.push(...local);
        const covered = local.reduce((n, e) => n + e.length, 0);
        if (covered < runEnd - at) break; // a short answer: stop where it ends, never misplace what follows
      } else extents.push({ length: runEnd - at, flags: 0 });
      at = runEnd;
    }
    return mergeExtents(extents);
  }

  async close(): Promise<void> {
    await this.local.close();
  }

  /**
   * Takes the next run of missing blocks nobody is fetching, at or after
   * `from` and below `limit`, for the background copy. Returns null when
   * there is none.
   */
  claimBackgroundRun(
    from: number,
    maxBlocks: number,
    limit = this.map.blockCount,
  ): { first: number; count: number } | null {
    let first = this.map.nextMissing(from);
    while (first >= 0 && first < limit && this.transits.has(first)) first = this.map.nextMissing(first + 1);
    if (first < 0 || first >= limit) return null;
    let count = 0;
    while (
      count < maxBlocks &&
      first + count < limit &&
      !this.map.isHeld(first + count) &&
      !this.transits.has(first + count)
    ) {
      const t = this.newTransit(first + count);
      t.fetches++;
      count++;
    }
    return { first, count };
  }

  /**
   * Holds the missing blocks in [first, first+count) that nobody is fetching
   * or writing as zeros without fetching them: the source reads as zeros
   * there. The local range is zeroed (a hole) first, so a block is never held
   * over stale bytes. Returns how many blocks became held; throws when the
   * local image cannot punch holes.
   */
  async holdZeroRun(first: number, count: number): Promise<number> {
    let held = 0;
    const end = Math.min(first + count, this.map.blockCount);
    // In slices, yielding between them, so a hole of a terabyte does not block the event loop.
    for (let from = first; from < end; from += ZERO_SLICE_BLOCKS) {
      const sliceEnd = Math.min(from + ZERO_SLICE_BLOCKS, end);
      let b = this.map.nextMissing(from);
      while (b >= 0 && b < sliceEnd) {
        if (this.transits.has(b)) {
          b = this.map.nextMissing(b + 1);
          continue;
        }
        let runEnd = b + 1;
        while (runEnd < sliceEnd && !this.map.isHeld(runEnd) && !this.transits.has(runEnd)) runEnd++;
        // Punched and marked with no await in between: no VM write or landing fetch can
        // start on these blocks meanwhile (each of those takes a transit first).
        const offset = b * this.bs;
        // A failure leaves the blocks missing (the copy fetches them) and is the caller's to act on.
        this.local.punchHoleNow(offset, Math.min(runEnd * this.bs, this.size) - offset);
        for (let i = b; i < runEnd; i++) this.map.markHeld(i);
        held += runEnd - b;
        this.counters.zeroBlocksSkipped += runEnd - b;
        b = this.map.nextMissing(runEnd);
      }
      if (this.map.allHeld) {
        this.emit('all-held');
        break;
      }
      await new Promise((r) => setImmediate(r));
    }
    return held;
  }

  /** Fetches a run claimed with claimBackgroundRun and lands what is still wanted. */
  fetchBackgroundRun(first: number, count: number): Promise<void> {
    return this.fetchRun(first, count, 'background');
  }

  // ---- internals ----

  /** Writes fetched bytes; all-zero blocks become holes, so the image stays as sparse as the source. */
  private async store(offset: number, bytes: Buffer): Promise<void> {
    const zero = zeroBlock(this.bs);
    let at = 0;
    while (at < bytes.length) {
      const isZero = (i: number): boolean =>
        bytes.subarray(i, i + this.bs).equals(zero.subarray(0, Math.min(this.bs, bytes.length - i)));
      const zeroRun = isZero(at);
      let end = at + this.bs;
      while (end < bytes.length && isZero(end) === zeroRun) end += this.bs;
      end = Math.min(end, bytes.length);
      if (zeroRun && this.local.canTrim)
        await this.local.zero(offset + at, end - at, { fua: false, noHole: false, fastZero: false });
      else await this.local.write(offset + at, bytes.subarray(at, end), false);
      at = end;
    }
  }

  private blocksOf(offset: number, length: number): [number, number] {
    return [Math.floor(offset / this.bs), Math.floor((offset + length - 1) / this.bs)];
  }

  private missingIn(first: number, last: number): number[] {
    const missing: number[] = [];
    for (let b = first; b <= last; b++) if (!this.map.isHeld(b)) missing.push(b);
    return missing;
  }

  private newTransit(block: number): Transit {
    let finish!: () => void;
    const done = new Promise<void>((resolve) => (finish = resolve));
    const t: Transit = { claimed: false, landing: false, urgent: false, fetches: 0, error: null, done, finish };
    this.transits.set(block, t);
    return t;
  }

  private endTransit(block: number, t: Transit, held: boolean): void {
    if (this.transits.get(block) === t) this.transits.delete(block);
    if (held) this.map.markHeld(block);
    t.finish();
    if (held && this.map.allHeld) this.emit('all-held');
  }

  /** Waits until every listed block is held, fetching urgently what nobody is fetching. */
  private async ensureHeld(blocks: number[]): Promise<void> {
    const started = performance.now();
    const deadline = Date.now() + this.options.fetchTimeoutMs;
    let fetched = 0;
    let round = 0;
    for (;;) {
      if (round++ > 0 && !blocks.every((b) => this.map.isHeld(b))) {
        // Blocks went missing again (a fetch failed): back off on a real timer,
        // so a source that fails at once cannot spin the event loop the VM's disk runs on.
        const pause = Math.min(20 * 2 ** Math.min(round, 6), 1000, Math.max(0, deadline - Date.now()));
        await new Promise((r) => setTimeout(r, pause));
      }
      const waiting: Transit[] = [];
      const toFetch: number[] = [];
      for (const b of blocks) {
        if (this.map.isHeld(b)) continue;
        let t = this.transits.get(b);
        if (!t) t = this.newTransit(b);
        if (!t.urgent && !t.claimed && !t.landing) toFetch.push(b);
        t.urgent = true;
        waiting.push(t);
      }
      if (waiting.length === 0) break;
      if (toFetch.length) {
        if (!this.upstream) throw new BlockDeviceError('EIO', 'block missing and no source is attached');
        fetched += toFetch.length;
        this.counters.onDemandFetches += toFetch.length;
        for (const [first, count] of blockRuns(toFetch)) {
          for (let b = first; b < first + count; b++) this.transits.get(b)!.fetches++;
          this.fetchRun(first, count, 'urgent').catch(() => undefined); // waiters see the block go missing again
        }
      }
      const left = deadline - Date.now();
      const timedOut = await waitAll(
        waiting.map((t) => t.done),
        left,
      );
      const failed = waiting.find((t) => t.error);
      if (failed) throw failed.error!;
      if (timedOut) {
        // Let the next request fetch afresh rather than wait on a fetch that may never settle.
        for (const t of waiting) if (!t.claimed && !t.landing) t.urgent = false;
        throw new BlockDeviceError('EIO', `source did not deliver within ${this.options.fetchTimeoutMs} ms`);
      }
    }
    if (fetched) this.onDemandLatency.add(performance.now() - started);
  }

  /**
   * Applies a VM change to [offset, offset+length). Whole missing blocks are
   * claimed; partial ones are fetched first when `partialNeedsData`.
   */
  private async modify(
    offset: number,
    length: number,
    partialNeedsData: boolean,
    op: () => Promise<void>,
  ): Promise<void> {
    const [first, last] = this.blocksOf(offset, length);
    const end = offset + length;
    let claims: Array<[number, Transit]>;
    for (;;) {
      const needData: number[] = [];
      const busy: Array<Promise<void>> = [];
      const toClaim: number[] = [];
      for (let b = first; b <= last; b++) {
        if (this.map.isHeld(b)) continue;
        const whole = b * this.bs >= offset && Math.min((b + 1) * this.bs, this.size) <= end;
        const t = this.transits.get(b);
        if (!whole) {
          if (partialNeedsData) needData.push(b);
        } else if (t && (t.claimed || t.landing)) busy.push(t.done);
        else toClaim.push(b);
      }
      if (needData.length === 0 && busy.length === 0) {
        // Claim only when nothing else is awaited, so claims are never held while waiting.
        claims = toClaim.map((b) => {
          const t = this.transits.get(b) ?? this.newTransit(b);
          t.claimed = true;
          return [b, t];
        });
        break;
      }
      await Promise.all([this.ensureHeld(needData), ...busy]);
    }
    try {
      await op();
    } catch (e) {
      for (const [b, t] of claims) this.endTransit(b, t, false);
      throw e;
    }
    if (claims.length) this.counters.discardedFetches += claims.filter(([, t]) => t.fetches > 0).length;
    for (const [b, t] of claims) this.endTransit(b, t, true);
  }

  private async fetchRun(first: number, count: number, priority: FetchPriority): Promise<void> {
    // The transits this fetch counts in: a later transit of the same block is not this fetch's to settle.
    const mine: Array<Transit | undefined> = [];
    for (let b = first; b < first + count; b++) mine.push(this.transits.get(b));
    const offset = first * this.bs;
    const length = Math.min(count * this.bs, this.size - offset);
    let data: Buffer;
    try {
      data = await this.upstream!.fetch(offset, length, priority);
      if (data.length !== length) throw new Error(`source returned ${data.length} bytes for ${length}`);
    } catch (e) {
      this.counters.fetchErrors++;
      this.log.debug({ err: (e as Error).message, first, count, priority }, 'fetch failed');
      for (let b = first; b < first + count; b++) {
        const t = this.transits.get(b);
        if (!t || t !== mine[b - first]) continue;
        t.fetches--;
        // Back to missing so waiters fetch it again, unless someone else is on it.
        if (t.fetches === 0 && !t.claimed && !t.landing) this.endTransit(b, t, false);
      }
      throw e;
    }
    this.counters.bytesFetched += length;
    if (priority === 'background') this.backgroundRate.add(length);
    await this.land(first, count, data, mine);
  }

  /** Writes fetched blocks that are still wanted, in as few writes as possible. */
  private async land(first: number, count: number, data: Buffer, mine: Array<Transit | undefined>): Promise<void> {
    const landing: Array<[number, Transit]> = [];
    for (let b = first; b < first + count; b++) {
      let t = this.transits.get(b);
      if (t && t === mine[b - first]) t.fetches--;
      if (this.map.isHeld(b) || (t && (t.claimed || t.landing))) {
        this.counters.discardedFetches++;
        continue;
      }
      t ??= this.newTransit(b);
      t.landing = true;
      landing.push([b, t]);
    }
    for (const [runFirst, runCount] of blockRuns(landing.map(([b]) => b))) {
      const start = (runFirst - first) * this.bs;
      const bytes = data.subarray(start, Math.min(start + runCount * this.bs, data.length));
      const group = landing.filter(([b]) => b >= runFirst && b < runFirst + runCount);
      try {
        await this.store(runFirst * this.bs, bytes);
      } catch (e) {
        const err = e instanceof BlockDeviceError ? e : new BlockDeviceError('EIO', (e as Error).message);
        this.log.error({ err: err.message, block: runFirst, count: runCount }, 'cannot store fetched blocks');
        for (const [b, t] of group) {
          t.error = err;
          this.endTransit(b, t, false);
        }
        this.emit('store-error', err);
        continue;
      }
      for (const [b, t] of group) this.endTransit(b, t, true);
    }
  }
}

/** Blocks holdZeroRun takes over at a time. */
const ZERO_SLICE_BLOCKS = 16384;

let zeros: Buffer = Buffer.alloc(0);
function zeroBlock(size: number): Buffer {
  if (zeros.length < size) zeros = Buffer.alloc(size);
  return zeros;
}

/** Resolves true if the time ran out before every promise settled. */
async function waitAll(promises: Array<Promise<void>>, ms: number): Promise<boolean> {
  if (ms <= 0) return true;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), ms)));
  try {
    return await Promise.race([Promise.all(promises).then(() => false), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function mergeExtents(extents: Extent[]): Extent[] {
  const out: Extent[] = [];
  for (const e of extents) {
    const prev = out[out.length - 1];
    if (prev && prev.flags === e.flags) prev.length += e.length;
    else out.push({ ...e });
  }
  return out;
}
