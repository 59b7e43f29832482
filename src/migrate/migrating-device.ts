/**
 * The destination's disk while it migrates: a BlockDevice over a local image
 * (any BlockDevice) and the block states, fetching from an Upstream what it
 * does not hold yet.
 *
 * Two phases, one authority at a time:
 * - warming: the source is the authority (its VM may still write). Every read
 *   is answered from the source and nothing it returns is kept. The
 *   background copy may fill the image only when the source reports its
 *   writes; each report makes its blocks missing again. The first write,
 *   zero or trim from this side's VM means the VM runs here now: it starts
 *   the cutover and waits for it.
 * - cutover → post-copy: the source is fenced and hands over its final write
 *   set; those blocks become missing, the map is made durable with the new
 *   phase, and from then on the destination is the authority: reads of held
 *   blocks are local, missing ones are fetched on demand, writes stay local.
 *
 * Block states live in BlockStates; every change goes through it. A VM write
 * covering a whole missing block claims it (whatever is fetched later is
 * discarded: latest write wins). A partial write to a missing block fetches
 * it first. A writer never waits while holding claims, so writers cannot
 * deadlock each other.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { BlockDevice, BlockDeviceError, BlockSizeHint, Extent, ZeroOptions } from '../store/block-device';
import type { BlockMap } from '../store/block-map';
import type { ByteRange, DirtyReport, FetchPriority, Upstream } from '../upstream/upstream';
import { LatencyWindow, RateMeter } from './latency-window';
import { blockRuns } from '../util/block-runs';
import { BlockStates, type Transit } from './block-states';
import { Backoff, pause } from '../util/backoff';
import type { LandedChecksums } from '../store/landed-checksums';

/** The device's phase; 'cutover' is the moment between, while the final write set is applied. */
export type DevicePhase = 'warming' | 'cutover' | 'post-copy';

export interface MigratingDeviceOptions {
  /** How long a VM request waits for a missing block (source down) or for the cutover before EIO. */
  fetchTimeoutMs: number;
  /** Where fetched blocks' checksums are recorded as they land; `local` must be the ChecksumGuardDevice keeping it. */
  landed?: LandedChecksums;
}

export interface CopyCounters {
  bytesFetched: number;
  onDemandFetches: number;
  fetchErrors: number;
  /** Fetched blocks thrown away on arrival: claimed, landed by another fetch, or written at the source since. */
  discardedFetches: number;
  /** Blocks never fetched: the source said they read as zeros. */
  zeroBlocksSkipped: number;
  /** Reads before cutover, answered from the source and not kept. */
  passThroughReads: number;
  /** Held blocks made missing again because the source wrote them before cutover. */
  blocksInvalidated: number;
  /** Write reports received from the source. */
  dirtyReports: number;
  /** Blocks copied from the seed image: the source's hash matched the seed's. */
  seededBlocks: number;
}

/** Source writes noted while a zero-range query was out: its answer may predate them. */
export interface ZeroQueryWatch {
  ranges: ByteRange[];
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
    passThroughReads: 0,
    blocksInvalidated: 0,
    dirtyReports: 0,
    seededBlocks: 0,
  };
  readonly onDemandLatency = new LatencyWindow();
  /** On-demand fetches of one block: the small reads a VM waits on most. */
  readonly onDemandBlockLatency = new LatencyWindow();
  readonly backgroundRate = new RateMeter();
  readonly states: BlockStates;
  private readonly bs: number;
  private phaseNow: DevicePhase;
  private cutoverRun: Promise<void> | null = null;
  /** Resolves a cutover waiting on the source when the source cuts over on its own. */
  private sourceCutover: ((report: DirtyReport) => void) | null = null;
  private readonly zeroWatches = new Set<ZeroQueryWatch>();
  private closed = false;
  /** Bytes asked of the source on demand that have not arrived yet (reads through included). */
  private urgentInFlight = 0;
  /** What the cutover waits for before it applies the final write set (see waitBeforeFinalSet). */
  private finalSetGate: (() => Promise<void>) | null = null;

  constructor(
    private readonly local: BlockDevice,
    readonly map: BlockMap,
    private upstream: Upstream | null,
    private readonly options: MigratingDeviceOptions,
    private readonly log: Logger,
  ) {
    super();
    this.bs = map.blockSize;
    this.states = new BlockStates(map);
    this.states.on('all-held', () => this.emit('all-held'));
    this.states.on('missing', () => this.emit('missing'));
    this.phaseNow = map.phase === 'post-copy' ? 'post-copy' : 'warming';
    this.canFastZero = local.canFastZero;
    // A trim that frees nothing would leave claimed blocks with stale bytes: only trim where the file can.
    this.canTrim = local.canTrim;
    this.blockSize = { minimum: 1, preferred: this.bs, maximum: local.blockSize.maximum };
    if (upstream) this.watchUpstream(upstream);
  }

  get size(): number {
    return this.map.imageSize;
  }

  get phase(): DevicePhase {
    return this.phaseNow;
  }

  get inTransit(): number {
    return this.states.inTransit;
  }

  /** Once every block is held after cutover the upstream is no longer needed. */
  detachUpstream(): void {
    this.upstream = null;
  }

  async read(offset: number, into: Buffer): Promise<void> {
    if (into.length === 0) return;
    if (this.phaseNow !== 'post-copy') return this.readThrough(offset, into);
    const [first, last] = this.blocksOf(offset, into.length);
    if (this.map.rangeHeld(first, last)) return this.local.read(offset, into);
    // A block fetched for this read that the image could not take (a full disk) is answered from
    // the fetched bytes and stays missing: a read never fails because a write would.
    const unlanded = new Map<number, Buffer>();
    await this.ensureHeld(this.missingIn(first, last), unlanded);
    await this.local.read(offset, into);
    for (const [block, bytes] of unlanded) {
      const from = Math.max(offset, block * this.bs);
      const to = Math.min(offset + into.length, block * this.bs + bytes.length);
      bytes.copy(into, from - offset, from - block * this.bs, to - block * this.bs);
    }
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    if (data.length === 0) return;
    await this.afterCutover();
    await this.modify(offset, data.length, true, () => this.local.write(offset, data, false));
    if (fua) await this.flush();
  }

  async zero(offset: number, length: number, options: ZeroOptions): Promise<void> {
    if (length === 0) return;
    await this.afterCutover();
    await this.inSlices(offset, length, (at, n) =>
      this.zeroAtOnce(at, n, options.noHole)
        ? Promise.resolve()
        : this.modify(at, n, true, () => this.local.zero(at, n, { ...options, fua: false })),
    );
    if (options.fua) await this.flush();
  }

  /**
   * TRIM is advisory: only whole blocks are trimmed, and they then read as
   * zeros (held): the local range is zeroed, never left with whatever bytes a
   * file system that cannot punch would keep.
   */
  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    await this.afterCutover();
    const start = Math.ceil(offset / this.bs) * this.bs;
    const end = offset + length === this.size ? this.size : Math.floor((offset + length) / this.bs) * this.bs;
    if (end > start)
      await this.inSlices(start, end - start, (at, n) =>
        this.zeroAtOnce(at, n, false)
          ? Promise.resolve()
          : this.modify(at, n, false, () => this.local.zero(at, n, { fua: false, noHole: false, fastZero: false })),
      );
    if (fua) await this.flush();
  }

  /**
   * Runs a range operation slice by slice, yielding between slices: a zero or
   * trim of terabytes claims a bounded number of blocks at a time and never
   * holds the event loop (every VM request and the control socket) for long.
   */
  private async inSlices(offset: number, length: number, op: (at: number, n: number) => Promise<void>): Promise<void> {
    const slice = VM_SLICE_BLOCKS * this.bs;
    const end = offset + length;
    for (let at = offset; at < end;) {
      // Slice edges on block boundaries, so no block is split between two slices.
      const next = Math.min(end, (Math.floor(at / slice) + 1) * slice);
      await op(at, next - at);
      at = next;
      if (at < end) await new Promise((r) => setImmediate(r));
    }
  }

  /**
   * Zeroes [at, at+n) and holds its missing blocks with no await in between,
   * when the image can punch a hole on this thread, the range has missing
   * blocks, every one covered whole and nobody working on any of them:
   * nothing can interleave, so no claim is needed, and gigabytes of zeros
   * make no per-block record. Returns false (having changed nothing) otherwise.
   */
  private zeroAtOnce(at: number, n: number, noHole: boolean): boolean {
    if (!this.local.zeroNow || noHole || this.phaseNow !== 'post-copy') return false;
    const [first, last] = this.blocksOf(at, n);
    const end = at + n;
    let missing = false;
    for (let b = first; b <= last; b++) {
      if (this.map.isHeld(b)) continue;
      const whole = b * this.bs >= at && Math.min((b + 1) * this.bs, this.size) <= end;
      if (!whole || this.states.transit(b)) return false;
      missing = true;
    }
    // Every block held: nothing to guard, so the image is zeroed off the event loop (modify()
    // claims nothing then), where a file system's journal may keep fallocate waiting.
    if (!missing) return false;
    try {
      this.local.zeroNow(at, n);
    } catch (e) {
      if (e instanceof BlockDeviceError && e.errno === 'ENOTSUP') return false;
      throw e;
    }
    for (let b = first; b <= last; b++) if (!this.map.isHeld(b)) this.states.holdAsZero(b);
    return true;
  }

  async cache(offset: number, length: number): Promise<void> {
    if (length === 0 || this.phaseNow !== 'post-copy') return; // before cutover nothing fetched is kept
    const [first, last] = this.blocksOf(offset, length);
    await this.ensureHeld(this.missingIn(first, last));
  }

  /**
   * Makes every completed write durable, data first, then the block map. A
   * full disk is ENOSPC (on which hypervisors pause the VM), never EIO.
   */
  async flush(): Promise<void> {
    try {
      await this.map.persist(() => this.local.flush());
    } catch (e) {
      if (e instanceof BlockDeviceError) throw e;
      const err = e as NodeJS.ErrnoException;
      throw new BlockDeviceError(
        err.code === 'ENOSPC' ? 'ENOSPC' : 'EIO',
        `cannot persist the block map: ${err.message}`,
      );
    }
  }

  /** The image's own fdatasync, without the block map. */
  flushData(): Promise<void> {
    return this.local.flush();
  }

  async status(offset: number, length: number): Promise<Extent[]> {
    if (this.phaseNow !== 'post-copy') return [{ length, flags: 0 }]; // the source's allocation: data
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
    this.closed = true;
    await this.local.close();
  }

  // ---- cutover ----

  /**
   * Makes the destination the authority: fences the source, applies its final
   * write set, records the phase durably, then acknowledges the set. Runs once;
   * concurrent callers share it. A failure (the source went away for good, the
   * disk refused) leaves the phase before cutover, and the next call tries again.
   */
  cutover(): Promise<void> {
    return this.startCutover(null);
  }

  /** `given`: the final write set the source sent on its own (ferry ctl cutover at the source). */
  private startCutover(given: DirtyReport | null): Promise<void> {
    if (this.phaseNow === 'post-copy') {
      given?.ack(); // applied already; the source sends it again until acknowledged
      return Promise.resolve();
    }
    if (given && this.sourceCutover) this.sourceCutover(given);
    this.cutoverRun ??= this.runCutover(given).catch((e: Error) => {
      this.cutoverRun = null;
      if (this.phaseNow === 'cutover') this.setPhase('warming');
      throw e;
    });
    return this.cutoverRun;
  }

  private async runCutover(given: DirtyReport | null): Promise<void> {
    const upstream = this.upstream;
    if (!upstream) throw new BlockDeviceError('EIO', 'cannot cut over: no source is attached');
    this.setPhase('cutover');
    this.log.info(
      { tracking: upstream.tracking, by: given ? 'source' : 'destination' },
      'cutover: the source is fenced and hands over its final write set',
    );
    const report =
      given ??
      (await new Promise<DirtyReport>((resolve, reject) => {
        // The source may send its final set on its own while this side asks for it: either answer will do.
        this.sourceCutover = resolve;
        upstream.cutover().then(resolve, reject);
      }).finally(() => (this.sourceCutover = null)));
    await this.finalSetGate?.();
    const invalidated = this.invalidateRanges(report.ranges);
    await this.flush();
    await this.map.setPhase('post-copy');
    this.setPhase('post-copy');
    report.ack();
    this.log.info(
      { ranges: report.ranges.length, blocksInvalidated: invalidated },
      'cutover complete: the destination is the authority',
    );
  }

  /**
   * Work the cutover waits for once the source is fenced, before it applies
   * the final write set: checks of the source's write tracking still queued.
   * A source that restarted under new tracking may not report writes the old
   * one took; those checks make every copied block missing, and once this
   * side is the authority they no longer can.
   */
  waitBeforeFinalSet(gate: () => Promise<void>): void {
    this.finalSetGate = gate;
  }

  private setPhase(phase: DevicePhase): void {
    if (phase === this.phaseNow) return;
    this.phaseNow = phase;
    this.emit('phase', phase);
  }

  /** Waits until this side is the authority, starting the cutover if needed (a VM write here means the VM runs here). */
  private async afterCutover(): Promise<void> {
    if (this.phaseNow === 'post-copy') return;
    if (this.closed) throw new BlockDeviceError('ESHUTDOWN', 'the device is closed');
    const timedOut = await waitAll([this.cutover()], this.options.fetchTimeoutMs);
    if (timedOut)
      throw new BlockDeviceError('EIO', `cutover did not complete within ${this.options.fetchTimeoutMs} ms`);
  }

  private watchUpstream(upstream: Upstream): void {
    upstream.on('dirty', (report: DirtyReport) => void this.applyDirty(report));
    upstream.on('cutover', (report: DirtyReport) => {
      this.startCutover(report).catch((e: Error) =>
        this.log.error({ err: e.message }, 'cannot apply the final write set the source sent; it sends it again'),
      );
    });
  }

  /**
   * The source wrote these ranges: copies held here are stale. Before cutover
   * the blocks become missing again; the map is persisted before the source
   * is told, so a crash cannot lose the report. After cutover the final write
   * set covered every report still in flight, and this side's VM may have
   * written the blocks since: the report is only acknowledged.
   */
  private async applyDirty(report: DirtyReport): Promise<void> {
    this.counters.dirtyReports++;
    if (this.phaseNow === 'post-copy') return report.ack();
    this.invalidateRanges(report.ranges);
    try {
      await this.flush();
      report.ack();
    } catch (e) {
      // Not acknowledged: the source sends it again (and in the final set at cutover).
      this.log.error({ err: (e as Error).message }, 'cannot persist a write report from the source');
    }
  }

  /** The source's tracking restarted: everything copied before cutover may be stale. */
  async invalidateAll(): Promise<number> {
    if (this.phaseNow === 'post-copy') return 0;
    const whole = { offset: 0, length: this.size };
    if (this.map.heldCount === 0 && this.states.inTransit === 0) {
      // Nothing copied yet; but a zero-range or hash query out now may have been answered before
      // writes the old tracking lost, and must not hold blocks on that answer.
      for (const w of this.zeroWatches) w.ranges.push(whole);
      return 0;
    }
    const n = this.invalidateRanges([whole]);
    await this.flush();
    return n;
  }

  /** Makes every block touched by `ranges` missing (or stale in flight); returns how many held blocks were. */
  private invalidateRanges(ranges: ByteRange[]): number {
    let invalidated = 0;
    for (const r of ranges) {
      if (r.length <= 0) continue;
      for (const w of this.zeroWatches) w.ranges.push(r);
      const first = Math.floor(r.offset / this.bs);
      const last = Math.min(this.map.blockCount - 1, Math.floor((r.offset + r.length - 1) / this.bs));
      for (let b = first; b <= last; b++) if (this.states.invalidate(b)) invalidated++;
    }
    this.counters.blocksInvalidated += invalidated;
    return invalidated;
  }

  // ---- background copy and zero scan ----

  /**
   * Takes the next run of missing blocks nobody is working on, at or after
   * `from` and below `limit`, for the background copy. Returns the run's
   * tickets, or null when there is none.
   */
  claimBackgroundRun(from: number, maxBlocks: number, limit = this.map.blockCount): Transit[] | null {
    const first = this.states.nextIdle(from, limit);
    if (first < 0) return null;
    const run: Transit[] = [];
    for (let b = first; run.length < maxBlocks && b < limit && this.states.state(b) === 'missing'; b++)
      run.push(this.states.startFetch(b, false));
    return run;
  }

  /**
   * Fetches a run claimed with claimBackgroundRun and lands what is still wanted.
   * `arrived` is told when the source's bytes are here, before they land (the link is done with them).
   */
  fetchBackgroundRun(run: Transit[], arrived?: () => void): Promise<void> {
    return this.fetchRun(run, 'background', arrived);
  }

  /** Starts noting source writes for a zero-range query about to be sent. */
  watchZeroQuery(): ZeroQueryWatch {
    const watch: ZeroQueryWatch = { ranges: [] };
    this.zeroWatches.add(watch);
    return watch;
  }

  endZeroQuery(watch: ZeroQueryWatch): void {
    this.zeroWatches.delete(watch);
  }

  /**
   * Holds the missing blocks in [first, first+count) that nobody is working on
   * as zeros without fetching them: the source reads as zeros there. Blocks the
   * source wrote since the query went out (`watch`) are left missing. The
   * local range is zeroed (a hole) before a block is held, so a block is never
   * held over stale bytes. Returns how many blocks became held; throws when
   * the local image cannot zero fast (punch holes).
   */
  async holdZeroRun(first: number, count: number, watch?: ZeroQueryWatch): Promise<number> {
    let held = 0;
    const end = Math.min(first + count, this.map.blockCount);
    // In slices, so a hole of a terabyte neither blocks the event loop nor claims a terabyte at once.
    for (let from = first; from < end; from += ZERO_SLICE_BLOCKS) {
      const sliceEnd = Math.min(from + ZERO_SLICE_BLOCKS, end);
      let written = watch ? this.blocksIn(watch.ranges, from, sliceEnd) : null;
      let b = this.states.nextIdle(from, sliceEnd);
      while (b >= 0) {
        if (written?.has(b)) {
          b = this.states.nextIdle(b + 1, sliceEnd);
          continue;
        }
        if (this.local.zeroNow) {
          // Zeroed and held with no await in between: no VM write, landing fetch or source
          // report can come between (and no per-block record is made for a terabyte of holes).
          let runEnd = b;
          while (runEnd < sliceEnd && this.states.state(runEnd) === 'missing' && !written?.has(runEnd)) runEnd++;
          const offset = b * this.bs;
          this.local.zeroNow(offset, Math.min(runEnd * this.bs, this.size) - offset);
          for (let i = b; i < runEnd; i++) this.states.holdAsZero(i);
          held += runEnd - b;
          this.counters.zeroBlocksSkipped += runEnd - b;
          b = this.states.nextIdle(runEnd, sliceEnd);
          continue;
        }
        const run: Transit[] = [];
        for (let i = b; i < sliceEnd && this.states.state(i) === 'missing' && !written?.has(i); i++)
          run.push(this.states.claim(i, 'hole'));
        const offset = b * this.bs;
        const length = Math.min((b + run.length) * this.bs, this.size) - offset;
        try {
          await this.local.zero(offset, length, { fua: false, noHole: false, fastZero: true });
        } catch (e) {
          for (const t of run) this.states.claimFailed(t);
          throw e;
        }
        // Source writes reported meanwhile to blocks not claimed yet: the next runs must skip them.
        if (watch) written = this.blocksIn(watch.ranges, from, sliceEnd);
        for (const t of run) {
          const stale = t.stale;
          this.states.claimApplied(t);
          if (!stale) {
            held++;
            this.counters.zeroBlocksSkipped++;
          }
        }
        b = this.states.nextIdle(b + run.length, sliceEnd);
      }
      if (this.map.allHeld) break;
      await new Promise((r) => setImmediate(r));
    }
    return held;
  }

  /**
   * Holds blocks from the seed: `data` is the seed's bytes from block `first`
   * on, `matches` the blocks whose hash there equals the source's. Each still
   * missing and not written at the source since the hash query went out
   * (`watch`) is claimed, written to the image, then held; a source write
   * reported meanwhile leaves it missing, and a VM write waits for the claim
   * and then lands over it. Returns how many blocks became held.
   */
  async holdSeedBlocks(first: number, data: Buffer, matches: number[], watch: ZeroQueryWatch): Promise<number> {
    const written = this.blocksIn(watch.ranges, first, first + Math.ceil(data.length / this.bs));
    const claims: Transit[] = [];
    for (const b of matches)
      if (!written.has(b) && this.states.state(b) === 'missing') claims.push(this.states.claim(b, 'seed'));
    let held = 0;
    for (const run of transitRuns(claims)) {
      const start = (run[0].block - first) * this.bs;
      const bytes = data.subarray(start, Math.min(start + run.length * this.bs, data.length));
      try {
        await this.local.write(run[0].block * this.bs, bytes, false);
      } catch (e) {
        for (const t of run) this.states.claimFailed(t);
        throw e;
      }
      for (const t of run) {
        const stale = t.stale;
        this.states.claimApplied(t);
        if (!stale) held++;
      }
    }
    this.counters.seededBlocks += held;
    return held;
  }

  /**
   * Bytes asked of the source on demand that have not arrived yet: they share the link with the
   * background copy, which counts them in its window.
   */
  get urgentBytesInFlight(): number {
    return this.urgentInFlight;
  }

  // ---- internals ----

  private urgentStarted(bytes: number): void {
    this.urgentInFlight += bytes;
  }

  /** The copy may have been held back by these bytes: 'urgent-arrived' lets it look again. */
  private urgentEnded(bytes: number): void {
    if (bytes === 0) return;
    this.urgentInFlight -= bytes;
    this.emit('urgent-arrived');
  }

  /** Before cutover: the source answers, and nothing it returns is kept. */
  private async readThrough(offset: number, into: Buffer): Promise<void> {
    const upstream = this.upstream;
    if (!upstream) throw new BlockDeviceError('EIO', 'no source is attached');
    this.counters.passThroughReads++;
    const started = performance.now();
    const deadline = Date.now() + this.options.fetchTimeoutMs;
    const backoff = new Backoff(FAILED_FETCH_BACKOFF);
    for (let attempt = 0; ; attempt++) {
      const left = deadline - Date.now();
      if (left <= 0)
        throw new BlockDeviceError('EIO', `source did not deliver within ${this.options.fetchTimeoutMs} ms`);
      try {
        // Whole blocks, as every upstream fetch is (the ferry wire sends and verifies blocks).
        const from = Math.floor(offset / this.bs) * this.bs;
        const to = Math.min(Math.ceil((offset + into.length) / this.bs) * this.bs, this.size);
        this.urgentStarted(to - from);
        const data = await withTimeout(upstream.fetch(from, to - from, 'urgent'), left).finally(() =>
          this.urgentEnded(to - from),
        );
        if (data === null) continue;
        if (data.length !== to - from) throw new Error(`source returned ${data.length} bytes for ${to - from}`);
        data.copy(into, 0, offset - from, offset - from + into.length);
        upstream.recycle?.(data); // copied out: the upstream may reuse it
        const ms = performance.now() - started;
        this.onDemandLatency.add(ms);
        if (to - from <= this.bs) this.onDemandBlockLatency.add(ms);
        return;
      } catch (e) {
        this.counters.fetchErrors++;
        if (this.closed) throw new BlockDeviceError('ESHUTDOWN', 'the device is closed');
        this.log.debug({ err: (e as Error).message, offset, attempt }, 'read through the source failed');
        // Back off on a real timer, so a source that fails at once cannot spin the event loop.
        await pause(backoff.next());
      }
    }
  }

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

  /** The blocks in [from, to) that `ranges` touch. */
  private blocksIn(ranges: ByteRange[], from: number, to: number): Set<number> {
    const out = new Set<number>();
    for (const r of ranges) {
      const first = Math.max(from, Math.floor(r.offset / this.bs));
      const last = Math.min(to - 1, Math.floor((r.offset + r.length - 1) / this.bs));
      for (let b = first; b <= last; b++) out.add(b);
    }
    return out;
  }

  /**
   * Waits until every listed block is held, fetching urgently what nobody is
   * fetching. With `unlanded` (a read), a block the image refused is not an
   * error: its fetched bytes go there instead.
   */
  private async ensureHeld(blocks: number[], unlanded?: Map<number, Buffer>): Promise<void> {
    const started = performance.now();
    const deadline = Date.now() + this.options.fetchTimeoutMs;
    let fetched = 0;
    let round = 0;
    const backoff = new Backoff(FAILED_FETCH_BACKOFF);
    let failures = this.counters.fetchErrors;
    for (;;) {
      const fetchesFailed = this.counters.fetchErrors !== failures;
      failures = this.counters.fetchErrors;
      if (round++ > 0 && fetchesFailed && !blocks.every((b) => this.map.isHeld(b) || unlanded?.has(b))) {
        // Fetches failed and blocks are still missing: back off on a real timer, so a source
        // that fails at once cannot spin the event loop the VM's disk runs on. A block that went
        // missing because its bytes were stale is fetched again at once.
        await pause(Math.min(backoff.next(), Math.max(0, deadline - Date.now())));
      }
      const waiting: Transit[] = [];
      const toFetch: Transit[] = [];
      for (const b of blocks) {
        if (this.map.isHeld(b) || unlanded?.has(b)) continue;
        const t = this.states.transit(b);
        if (t && (t.state !== 'fetching' || t.urgent)) {
          waiting.push(t); // landing, claimed, or an urgent fetch is on it already
          continue;
        }
        const mine = this.states.startFetch(b, true);
        toFetch.push(mine);
        waiting.push(mine);
      }
      if (waiting.length === 0) break;
      if (toFetch.length) {
        if (!this.upstream) {
          for (const t of toFetch) this.states.fetchFailed(t);
          throw new BlockDeviceError('EIO', 'block missing and no source is attached');
        }
        fetched += toFetch.length;
        this.counters.onDemandFetches += toFetch.length;
        for (const run of transitRuns(toFetch)) this.fetchRun(run, 'urgent').catch(() => undefined); // waiters see the block go missing again
      }
      const left = deadline - Date.now();
      const timedOut = await waitAll(
        waiting.map((t) => t.done),
        left,
      );
      for (const t of waiting) if (unlanded && t.error && t.unlanded) unlanded.set(t.block, t.unlanded);
      const failed = waiting.find((t) => t.error && !(unlanded && t.unlanded));
      if (failed) throw failed.error!;
      if (timedOut) {
        // The fetch stays in flight (it settles when the link delivers or drops): the next
        // request for the block waits on it instead of adding another, however long the source is down.
        throw new BlockDeviceError('EIO', `source did not deliver within ${this.options.fetchTimeoutMs} ms`);
      }
    }
    if (fetched) {
      const ms = performance.now() - started;
      this.onDemandLatency.add(ms);
      if (fetched === 1) this.onDemandBlockLatency.add(ms);
    }
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
    let claims: Transit[];
    for (;;) {
      const needData: number[] = [];
      const busy: Array<Promise<void>> = [];
      const toClaim: number[] = [];
      for (let b = first; b <= last; b++) {
        if (this.map.isHeld(b)) continue;
        const whole = b * this.bs >= offset && Math.min((b + 1) * this.bs, this.size) <= end;
        if (!whole) {
          if (partialNeedsData) needData.push(b);
        } else if (!this.states.claimable(b)) busy.push(this.states.transit(b)!.done);
        else toClaim.push(b);
      }
      if (needData.length === 0 && busy.length === 0) {
        // Claim only when nothing else is awaited, so claims are never held while waiting.
        claims = toClaim.map((b) => this.states.claim(b, 'vm'));
        break;
      }
      await Promise.all([this.ensureHeld(needData), ...busy]);
    }
    try {
      await op();
    } catch (e) {
      for (const t of claims) this.states.claimFailed(t);
      throw e;
    }
    for (const t of claims) this.states.claimApplied(t);
  }

  private async fetchRun(run: Transit[], priority: FetchPriority, arrived?: () => void): Promise<void> {
    const first = run[0].block;
    const offset = first * this.bs;
    const length = Math.min(run.length * this.bs, this.size - offset);
    let data: Buffer;
    const upstream = this.upstream;
    const urgent = priority === 'urgent' ? length : 0;
    this.urgentStarted(urgent);
    try {
      if (!upstream) throw new Error('no source is attached');
      data = await upstream.fetch(offset, length, priority);
      if (data.length !== length) throw new Error(`source returned ${data.length} bytes for ${length}`);
      this.urgentEnded(urgent);
      arrived?.();
    } catch (e) {
      this.urgentEnded(urgent);
      this.counters.fetchErrors++;
      this.log.debug({ err: (e as Error).message, first, count: run.length, priority }, 'fetch failed');
      for (const t of run) this.states.fetchFailed(t);
      throw e;
    }
    this.counters.bytesFetched += length;
    if (priority === 'background') this.backgroundRate.add(length);
    // A block the image refused is served from these bytes: then they are not the upstream's again.
    if (await this.land(run, data, upstream.checksumsOf?.(data))) upstream.recycle?.(data);
  }

  /**
   * Writes fetched blocks that are still wanted, in as few writes as possible.
   * Returns false when blocks the image refused keep views of `data`.
   */
  private async land(run: Transit[], data: Buffer, checksums?: BigUint64Array): Promise<boolean> {
    let free = true;
    const first = run[0].block;
    const landing: Transit[] = [];
    for (const t of run) {
      if (this.states.beginLanding(t)) landing.push(t);
      else this.counters.discardedFetches++;
    }
    for (const group of transitRuns(landing)) {
      const start = (group[0].block - first) * this.bs;
      const bytes = data.subarray(start, Math.min(start + group.length * this.bs, data.length));
      const landing = checksums && this.options.landed?.landing(group[0].block, group.length);
      try {
        await this.store(group[0].block * this.bs, bytes);
        landing?.landed(checksums!, group[0].block - first);
      } catch (e) {
        const err = e instanceof BlockDeviceError ? e : new BlockDeviceError('EIO', (e as Error).message);
        this.log.error({ err: err.message, block: group[0].block, count: group.length }, 'cannot store fetched blocks');
        for (const t of group) {
          const at = (t.block - first) * this.bs;
          this.states.landingFailed(t, err, data.subarray(at, Math.min(at + this.bs, data.length)));
        }
        free = false;
        this.emit('store-error', err);
        continue;
      }
      for (const t of group) this.states.landed(t);
    }
    return free;
  }
}

/** Waits between failed fetches of the same blocks: a source that fails at once must not spin the loop. */
const FAILED_FETCH_BACKOFF = { minMs: 20, maxMs: 1000 };

/** Blocks holdZeroRun takes over at a time. */
const ZERO_SLICE_BLOCKS = 16384;
/** Blocks a VM zero or trim claims at a time: small enough that its records die young. */
const VM_SLICE_BLOCKS = 1024;

let zeros: Buffer = Buffer.alloc(0);
function zeroBlock(size: number): Buffer {
  if (zeros.length < size) zeros = Buffer.alloc(size);
  return zeros;
}

/** Transits of consecutive blocks, grouped (the input is in block order). */
function transitRuns(transits: Transit[]): Transit[][] {
  const runs: Transit[][] = [];
  for (const [first, count] of blockRuns(transits.map((t) => t.block))) {
    runs.push(transits.filter((t) => t.block >= first && t.block < first + count));
  }
  return runs;
}

/** Resolves true if the time ran out before every promise settled (rejections count as settled). */
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

/** The promise's value, or null if `ms` passes first. */
async function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T | null> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), ms)));
  try {
    return await Promise.race([promise, timeout]);
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
