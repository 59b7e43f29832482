/**
 * One destination's migration: opens or resumes the local image and its
 * block map against an upstream, runs the background copy, persists progress,
 * and finishes when every block is held. It is what the control socket drives.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { BlockMap } from '../store/block-map';
import { FileDevice } from '../store/file-device';
import { ChecksumGuardDevice } from '../store/checksum-guard-device';
import { LandedChecksums } from '../store/landed-checksums';
import { lockImage, lockImages, type ReleaseLock } from '../store/image-lock';
import { BackgroundCopy, BackgroundCopyOptions } from './background-copy';
import { MigratingDevice } from './migrating-device';
import { ZeroScan } from './zero-scan';
import { SeedScan } from './seed-scan';
import type { MigrationControl, MigrationPhase, MigrationState, MigrationStatus } from './status';
import { emptyLinkStats, type LinkStats, type Upstream } from '../upstream/upstream';
import { syncDirectoryOf } from '../util/sync-directory';

export interface MigrationOptions {
  imagePath: string;
  statePath: string;
  /** Source URL; may be omitted when resuming (the map remembers it) or when complete. */
  sourceUrl?: string;
  blockSize: number;
  fetchTimeoutMs: number;
  persistIntervalMs: number;
  rateLimit: number | null;
  /** Hold the source's zero ranges without fetching them (when the source can tell and the image can punch holes). */
  skipZeroRanges?: boolean;
  copy: BackgroundCopyOptions;
  /**
   * Cut over as soon as the migration starts: for a source nobody writes any
   * more (a stopped VM, a snapshot), or to fence a ferry source at once.
   */
  cutoverAtStart?: boolean;
  /**
   * A seed image at the destination (a template, an older copy of the disk):
   * blocks whose SHA-256 equals the source's are copied from it instead of
   * fetched. Needs a source that answers block-hash queries (the ferry wire).
   */
  seedPath?: string;
  /** Mode of the image and state files a new migration creates; default 0600. */
  fileMode?: number;
  /**
   * Opens the upstream for a URL (plain NBD or ferry wire) with the
   * migration's block size and this destination's session id at the source.
   */
  openUpstream: (url: string, blockSize: number, session: string) => Promise<Upstream>;
}

/** Where a new migration's state is written before it takes its name. */
export function creatingPath(statePath: string): string {
  return `${statePath}.creating`;
}

export class MigrationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MigrationError';
  }
}

export class Migration extends EventEmitter implements MigrationControl {
  private readonly copy: BackgroundCopy | null;
  private readonly zeroScan: ZeroScan | null = null;
  private readonly seedScan: SeedScan | null = null;
  private persistTimer: NodeJS.Timeout | null = null;
  private completing: Promise<void> | null = null;
  private completedAt: Date | null;
  private readonly startedAt = new Date();
  private closed = false;
  /** The link's figures when it was closed (they stay in the status after completion). */
  private lastLinkStats: LinkStats = emptyLinkStats();
  /** Releases the exclusive locks on the image and its state (taken before either is opened for writing). */
  private unlock: ReleaseLock = () => undefined;
  /** What open() created for a new migration (a block device is never removed); null when resumed. */
  private createdHere: { image: string | null; state: string } | null = null;

  private started = false;
  private epochCheck: Promise<void> = Promise.resolve();
  private aborted = false;

  private constructor(
    readonly device: MigratingDevice,
    private upstream: Upstream | null,
    private readonly options: MigrationOptions,
    private readonly log: Logger,
    seed: FileDevice | null = null,
  ) {
    super();
    const map = device.map;
    this.completedAt = map.complete ? new Date() : null;
    if (map.complete || !upstream) {
      this.copy = null;
      void seed?.close();
      return;
    }
    const copy = new BackgroundCopy(
      device,
      options.copy,
      options.rateLimit,
      log,
      () => (this.upstream ? this.upstream.linkStats() : null),
      () => this.upstream?.bytesRead?.() ?? null,
      (bytesPerSecond) => this.upstream?.setPacingRate?.(bytesPerSecond),
    );
    this.copy = copy;
    // The copy claims only blocks every scan has passed: it never fetches a hole or a seeded block.
    const scans: Array<{ scannedBlocks: number }> = [];
    const limitCopy = (): void => copy.setLimit(Math.min(...scans.map((scan) => scan.scannedBlocks)));
    if ((options.skipZeroRanges ?? true) && upstream.zeroRanges && device.canFastZero) {
      const scan = new ZeroScan(device, upstream, log);
      scan.on('progress', limitCopy);
      scans.push(scan);
      this.zeroScan = scan;
    }
    if (seed) {
      const scan = new SeedScan(device, upstream, seed, log);
      scan.on('progress', limitCopy);
      scans.push(scan);
      this.seedScan = scan;
    }
    if (scans.length) limitCopy();
    device.on('all-held', () => {
      if (device.phase === 'post-copy') void this.complete();
    });
    device.on('phase', (phase: string) => {
      this.log.info({ phase }, 'phase');
      if (phase !== 'post-copy') return;
      if (this.started) this.startCopy();
      if (device.map.allHeld) void this.complete();
    });
    this.checkTrackingEpoch(upstream);
    upstream.on('connected', () => this.checkTrackingEpoch(upstream));
    device.waitBeforeFinalSet(() => this.trackingChecked());
    this.persistTimer = setInterval(() => {
      device.flush().catch((e: Error) => log.error({ err: e.message }, 'cannot persist progress'));
    }, options.persistIntervalMs);
  }

  static async open(options: MigrationOptions, log: Logger): Promise<Migration> {
    const { imagePath, statePath } = options;
    if (BlockMap.exists(statePath)) return Migration.resume(options, log);
    if (!options.sourceUrl) throw new MigrationError(`no state at ${statePath} and no source given: pass --source URL`);
    // An existing block device is the target: its old content is never served (unheld blocks come
    // from the source) and is overwritten as blocks arrive. An existing file is refused.
    const onDevice = isBlockDevice(imagePath);
    const creating = creatingPath(statePath);
    if (fs.existsSync(creating)) Migration.undoInterruptedStart(imagePath, creating, onDevice, log);
    if (!onDevice && fs.existsSync(imagePath)) {
      throw new MigrationError(
        `image ${imagePath} exists but has no migration state (${statePath}); refusing to overwrite it — remove it or choose another --image`,
      );
    }
    const session = crypto.randomUUID();
    const upstream = await options.openUpstream(options.sourceUrl, options.blockSize, session);
    let map: BlockMap | undefined;
    let local: FileDevice | undefined;
    let seed: FileDevice | null = null;
    const locks: ReleaseLock[] = [];
    try {
      seed = Migration.openSeed(options, upstream);
      // The state is written under a temporary name first and takes its own name last, once the
      // image exists at its size: a start killed at any step leaves either a complete migration
      // or a `.creating` record saying the image is this start's to remove.
      map = BlockMap.create(
        creating,
        {
          blockSize: options.blockSize,
          imageSize: upstream.size,
          sourceIdentity: upstream.identity,
          sourceUrl: options.sourceUrl,
          phase: 'warming',
          trackingEpoch: upstream.trackingEpoch,
          session,
        },
        options.fileMode,
      );
      const unlockCreating = lockImage(creating, 'exclusive');
      locks.push(unlockCreating);
      local = FileDevice.open(imagePath, {
        createSize: upstream.size,
        deviceSize: upstream.size,
        createMode: options.fileMode,
      });
      locks.push(lockImage(imagePath, 'exclusive'));
      await local.flush(); // the image's size is durable before the state says it exists
      unlockCreating(); // the image lock keeps an undo by another start out from here on
      map.moveTo(statePath);
      locks.push(lockImage(statePath, 'exclusive'));
    } catch (e) {
      for (const unlock of locks) unlock();
      await seed?.close();
      map?.close();
      await local?.close();
      // The image was created here just now (an existing file is refused above): remove it again.
      if (local && !onDevice) fs.rmSync(imagePath, { force: true });
      if (map) fs.rmSync(map.path, { force: true });
      await upstream.close();
      throw e;
    }
    log.info(
      {
        source: upstream.description,
        size: upstream.size,
        blocks: map.blockCount,
        blockSize: map.blockSize,
        tracking: upstream.tracking,
      },
      'migration started',
    );
    const migration = new Migration(Migration.device(local, map, upstream, options, log), upstream, options, log, seed);
    migration.unlock = () => locks.forEach((unlock) => unlock());
    migration.createdHere = { image: onDevice ? null : imagePath, state: statePath };
    return migration;
  }

  /**
   * A first start was killed before its state took its name: what it created
   * (the `.creating` record and, for a file, the image made after it) is
   * removed so that this start begins afresh. Both are locked first: a start
   * still running keeps them.
   */
  private static undoInterruptedStart(imagePath: string, creating: string, onDevice: boolean, log: Logger): void {
    const unlock = lockImages([creating, ...(onDevice || !fs.existsSync(imagePath) ? [] : [imagePath])], 'exclusive');
    try {
      if (!onDevice) fs.rmSync(imagePath, { force: true });
      fs.rmSync(creating, { force: true });
    } finally {
      unlock();
    }
    log.warn({ image: imagePath, state: creating }, 'an interrupted first start or abort was undone; starting afresh');
  }

  /** One image, one owner: a second destination on the same image would lose writes. */
  private static async resume(options: MigrationOptions, log: Logger): Promise<Migration> {
    const paths = [options.imagePath, options.statePath].filter((p) => fs.existsSync(p));
    const unlock = lockImages(paths, 'exclusive');
    try {
      const migration = await Migration.resumeLocked(options, log);
      migration.unlock = unlock;
      return migration;
    } catch (e) {
      unlock();
      throw e;
    }
  }

  private static async resumeLocked(options: MigrationOptions, log: Logger): Promise<Migration> {
    const map = BlockMap.open(options.statePath);
    if (!fs.existsSync(options.imagePath)) {
      map.close();
      throw new MigrationError(`state ${options.statePath} exists but image ${options.imagePath} does not`);
    }
    let local: FileDevice;
    try {
      local = FileDevice.open(options.imagePath, { deviceSize: map.imageSize });
    } catch (e) {
      map.close();
      throw e;
    }
    if (local.size !== map.imageSize) {
      map.close();
      await local.close();
      throw new MigrationError(
        `image ${options.imagePath} has ${local.size} bytes but its state records ${map.imageSize}`,
      );
    }
    if (map.complete) {
      log.info({ image: options.imagePath }, 'migration already complete; serving locally without a source');
      return new Migration(Migration.device(local, map, null, options, log), null, options, log);
    }
    const url = options.sourceUrl ?? map.sourceUrl;
    let upstream: Upstream;
    let seed: FileDevice | null;
    try {
      upstream = await options.openUpstream(url, map.blockSize, map.session || crypto.randomUUID());
      if (upstream.size !== map.imageSize || upstream.identity !== map.sourceIdentity) {
        await upstream.close();
        throw new MigrationError(
          `source ${url} is not the image this destination was copying: ` +
            `size ${upstream.size} (recorded ${map.imageSize}), identity ${upstream.identity} (recorded ${map.sourceIdentity})`,
        );
      }
      try {
        seed = Migration.openSeed(options, upstream);
      } catch (e) {
        await upstream.close();
        throw e;
      }
      await map.setSourceUrl(url);
    } catch (e) {
      map.close();
      await local.close();
      throw e;
    }
    log.info({ source: url, held: map.heldCount, blocks: map.blockCount, phase: map.phase }, 'migration resumed');
    return new Migration(Migration.device(local, map, upstream, options, log), upstream, options, log, seed);
  }

  /** The seed image, read-only, once the source is known to send the hashes that vouch for its blocks. */
  private static openSeed(options: MigrationOptions, upstream: Upstream): FileDevice | null {
    if (!options.seedPath) return null;
    const problem = upstream.blockHashes
      ? (upstream.blockHashesProblem?.() ?? null)
      : `${upstream.description} cannot send block hashes (plain NBD has none): --seed needs a ferry source (ferry://)`;
    if (problem) throw new MigrationError(`cannot seed from ${options.seedPath}: ${problem}`);
    if (!fs.existsSync(options.seedPath)) throw new MigrationError(`seed image ${options.seedPath} does not exist`);
    if (fs.existsSync(options.imagePath) && fs.realpathSync(options.seedPath) === fs.realpathSync(options.imagePath))
      throw new MigrationError(`the seed ${options.seedPath} is the image itself`);
    return FileDevice.open(options.seedPath, { readOnly: true });
  }

  private static device(
    local: FileDevice,
    map: BlockMap,
    upstream: Upstream | null,
    options: MigrationOptions,
    log: Logger,
  ) {
    // Every change to the image goes through the guard, which drops the landed checksums it touches.
    const landed = new LandedChecksums(map.blockCount);
    const image = new ChecksumGuardDevice(local, landed, map.blockSize);
    upstream?.attachLocal?.({ isHeld: (b) => map.isHeld(b), read: (offset, into) => local.read(offset, into), landed });
    return new MigratingDevice(image, map, upstream, { fetchTimeoutMs: options.fetchTimeoutMs, landed }, log);
  }

  /**
   * Starts the work: the copy and the zero scan begin now if this side is the
   * authority or the source reports its writes (warm-up), else at cutover.
   */
  start(): void {
    if (this.started || this.completedAt) return;
    this.started = true;
    const d = this.device;
    if (d.phase === 'post-copy' || this.canWarm) this.startCopy();
    else
      this.log.info(
        'the source reports no writes: nothing is copied before cutover (ferry ctl cutover, or the first write here)',
      );
    if (d.phase === 'post-copy' && d.map.allHeld) void this.complete();
    else if (this.options.cutoverAtStart && d.phase !== 'post-copy')
      this.cutover().catch((e: Error) => this.log.error({ err: e.message }, 'cutover at start failed'));
  }

  /** Whether blocks may be copied before cutover: the source tells which it writes. */
  private get canWarm(): boolean {
    return (this.upstream?.tracking ?? 'none') !== 'none';
  }

  private startCopy(): void {
    this.zeroScan?.start();
    this.seedScan?.start();
    this.copy?.start();
  }

  /**
   * A source whose tracking restarted (a new epoch) may have taken writes it
   * never reported, and a source tracked otherwise than when the blocks were
   * copied (another dirty bitmap, or none) cannot vouch for them: before
   * cutover every block copied so far is suspect.
   */
  private checkTrackingEpoch(upstream: Upstream): void {
    this.epochCheck = this.epochCheck
      .then(async () => {
        const map = this.device.map;
        const epoch = upstream.tracking === 'none' ? '' : upstream.trackingEpoch;
        if (epoch === map.trackingEpoch || this.device.phase === 'post-copy') return;
        const n = await this.device.invalidateAll();
        await map.setTrackingEpoch(epoch);
        if (map.trackingEpoch !== '' || n > 0)
          this.log.warn(
            { blocksInvalidated: n, epoch },
            "the source's write tracking is not the one the copied blocks were tracked by (it restarted, or another bitmap or none): they are fetched again",
          );
      })
      .catch((e: Error) => this.log.error({ err: e.message }, 'cannot record the source tracking epoch'));
  }

  /** Resolves once every check of the source's tracking queued so far has run (more may queue meanwhile). */
  private async trackingChecked(): Promise<void> {
    for (let last = this.epochCheck; ; last = this.epochCheck) {
      await last;
      if (last === this.epochCheck) return;
    }
  }

  /** Makes this side the authority now (ferry ctl cutover). */
  async cutover(): Promise<void> {
    if (this.completedAt || this.device.phase === 'post-copy') return;
    await this.device.cutover();
  }

  /**
   * Before cutover: stops, removes the image and its state, and leaves the
   * source untouched (its VM keeps running there). After cutover this side
   * holds the only current copy of the VM's writes, so it is refused.
   */
  async abort(): Promise<void> {
    const phase = this.device.phase;
    if (this.completedAt || phase !== 'warming')
      throw new MigrationError(
        `cannot abort: the cutover ${phase === 'cutover' ? 'is under way' : 'has happened'}; this destination holds the VM's latest writes`,
      );
    this.aborted = true;
    const { imagePath, statePath } = this.options;
    const onDevice = isBlockDevice(imagePath);
    // The locks go last: until the files are gone, no other process may open them.
    await this.closeKeepingLocks().catch(() => undefined); // what is not saved is removed anyway
    try {
      // The state becomes the record of a start to undo before the image goes: killed between
      // the two, the next open removes the image (never a block device) instead of keeping it.
      const marker = creatingPath(statePath);
      fs.renameSync(statePath, marker);
      syncDirectoryOf(marker);
      if (!onDevice) fs.rmSync(imagePath, { force: true });
      fs.rmSync(marker, { force: true });
    } finally {
      this.unlock();
    }
    this.log.warn(
      { image: imagePath, state: statePath },
      'migration aborted: image and state removed; the source is untouched',
    );
    this.emit('aborted');
  }

  get isAborted(): boolean {
    return this.aborted;
  }

  get phase(): MigrationPhase {
    return this.completedAt ? 'complete' : this.device.phase;
  }

  get state(): MigrationState {
    if (this.completedAt) return 'complete';
    if (this.upstream && !this.upstream.connected) return 'stalled';
    if (this.copy?.isPaused) return 'paused';
    return 'migrating';
  }

  status(): MigrationStatus {
    const d = this.device;
    const map = d.map;
    const rate = d.backgroundRate.perSecond();
    const remaining = (map.blockCount - map.heldCount) * map.blockSize;
    const link = this.upstream?.linkStats() ?? this.lastLinkStats;
    const tracking = this.upstream?.tracking ?? 'none';
    return {
      state: this.state,
      phase: this.phase,
      tracking,
      warmup:
        this.phase === 'warming' && tracking === 'none'
          ? 'the source reports no writes: nothing is copied before cutover'
          : null,
      passThroughReads: d.counters.passThroughReads,
      blocksInvalidated: d.counters.blocksInvalidated,
      dirtyReports: d.counters.dirtyReports,
      source: this.upstream?.description ?? map.sourceUrl,
      connected: this.upstream?.connected ?? false,
      blockSize: map.blockSize,
      blocksTotal: map.blockCount,
      blocksHeld: map.heldCount,
      bytesFetched: d.counters.bytesFetched,
      bytesSkippedAsZero: d.counters.zeroBlocksSkipped * map.blockSize,
      bytesSeeded: d.counters.seededBlocks * map.blockSize,
      onDemandFetches: d.counters.onDemandFetches,
      backgroundBytesPerSecond: Math.round(rate),
      backgroundWindowBytes: this.copy?.windowBytes ?? 0,
      backgroundInFlightBytes: this.copy?.wireBytesInFlight ?? 0,
      onDemandLatencyMs: {
        p50: round2(d.onDemandLatency.percentile(50)),
        p99: round2(d.onDemandLatency.percentile(99)),
        count: d.onDemandLatency.count,
      },
      onDemandBlockLatencyMs: {
        p50: round2(d.onDemandBlockLatency.percentile(50)),
        p99: round2(d.onDemandBlockLatency.percentile(99)),
        count: d.onDemandBlockLatency.count,
      },
      etaSeconds: remaining === 0 ? 0 : rate > 0 ? Math.round(remaining / rate) : null,
      rateLimitBytesPerSecond: this.copy?.rateLimit ?? null,
      reconnects: this.upstream?.reconnects ?? 0,
      fetchErrors: d.counters.fetchErrors,
      ...link,
      startedAt: this.startedAt.toISOString(),
      completedAt: this.completedAt?.toISOString() ?? null,
    };
  }

  pause(): void {
    this.requireCopy('pause').pause();
    this.log.info('background copy paused');
  }

  resume(): void {
    this.requireCopy('resume').resume();
    this.log.info('background copy resumed');
  }

  setRateLimit(bytesPerSecond: number | null): void {
    this.requireCopy('set a rate limit').setRateLimit(bytesPerSecond);
    this.log.info({ bytesPerSecond }, 'background rate limit set');
  }

  async detach(): Promise<void> {
    if (!this.completedAt) {
      const s = this.status();
      throw new MigrationError(
        `cannot detach: ${s.blocksTotal - s.blocksHeld} of ${s.blocksTotal} blocks are not held yet`,
      );
    }
    if (this.upstream) this.lastLinkStats = this.upstream.linkStats();
    await this.upstream?.close();
    this.upstream = null;
  }

  async reconnect(url?: string): Promise<void> {
    if (!this.upstream) throw new MigrationError('no source to reconnect to: the migration is complete');
    await this.upstream.reconnect(url);
    if (url) await this.device.map.setSourceUrl(url);
  }

  /** Stops the copy, persists progress and closes everything. */
  async close(): Promise<void> {
    try {
      await this.closeKeepingLocks();
    } finally {
      this.unlock();
    }
  }

  /** close() but the image and state stay locked, for a caller that removes them first. */
  private async closeKeepingLocks(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.removeAllListeners('phase');
    if (this.persistTimer) clearInterval(this.persistTimer);
    this.zeroScan?.stop();
    this.seedScan?.stop();
    await this.copy?.stop();
    await this.completing?.catch(() => undefined);
    // Closing the upstream fails the fetches and queries still waiting on it; then nothing lands after the image closes.
    await this.upstream?.close();
    await this.copy?.settle();
    await this.zeroScan?.settle();
    await this.seedScan?.settle();
    let persistError: Error | null = null;
    await this.device.flush().catch((e: Error) => {
      persistError = e;
      this.log.error({ err: e.message }, 'final persist failed');
    });
    this.device.map.close();
    await this.device.close();
    // Progress since the last save is fetched again after a restart, but the operator must know.
    if (persistError) throw persistError;
  }

  /**
   * Closes, and removes the image and state this process created: for a
   * start that failed before anything was served, so that it leaves nothing
   * behind. A resumed migration keeps its files.
   */
  async discard(): Promise<void> {
    const mustServe = this.started;
    try {
      await this.closeKeepingLocks();
      if (mustServe || !this.createdHere) return;
      if (this.createdHere.image) fs.rmSync(this.createdHere.image, { force: true });
      fs.rmSync(this.createdHere.state, { force: true });
    } finally {
      this.unlock();
    }
  }

  private requireCopy(what: string): BackgroundCopy {
    if (!this.copy || this.completedAt) throw new MigrationError(`cannot ${what}: the migration is complete`);
    return this.copy;
  }

  private complete(): Promise<void> {
    this.completing ??= (async () => {
      const map = this.device.map;
      await map.markComplete(() => this.device.flushData());
      this.completedAt = new Date();
      if (this.persistTimer) clearInterval(this.persistTimer);
      this.persistTimer = null;
      this.zeroScan?.stop();
      this.seedScan?.stop();
      await this.copy?.stop();
      this.device.detachUpstream();
      if (this.upstream) this.lastLinkStats = this.upstream.linkStats();
      await this.upstream?.close();
      await this.copy?.settle();
      await this.zeroScan?.settle();
      await this.seedScan?.settle();
      this.log.info(
        {
          blocks: map.blockCount,
          bytesFetched: this.device.counters.bytesFetched,
          seconds: (Date.now() - this.startedAt.getTime()) / 1000,
        },
        'migration complete: every block held, source disconnected',
      );
    })().catch((e: Error) => {
      this.completing = null;
      this.log.error({ err: e.message }, 'cannot record completion; will retry');
      setTimeout(() => void this.complete(), 1000).unref();
    });
    return this.completing;
  }
}

function isBlockDevice(path: string): boolean {
  try {
    return fs.statSync(path).isBlockDevice();
  } catch {
    return false;
  }
}

function round2(n: number): number {
  return Math.round(n * 100) / 100;
}
