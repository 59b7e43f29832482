/**
 * One destination's migration: opens or resumes the local image and its
 * block map against an upstream, runs the background copy, persists progress,
 * and finishes when every block is held. It is what the control socket drives.
 */
import fs from 'node:fs';
import type { Logger } from 'pino';
import { BlockMap } from '../store/block-map';
import { FileDevice } from '../store/file-device';
import { BackgroundCopy, BackgroundCopyOptions } from './background-copy';
import { MigratingDevice } from './migrating-device';
import { ZeroScan } from './zero-scan';
import type { MigrationControl, MigrationState, MigrationStatus } from './status';
import { emptyLinkStats, type LinkStats, type Upstream } from '../upstream/upstream';

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
  /** Opens the upstream for a URL (plain NBD or ferry wire) with the migration's block size. */
  openUpstream: (url: string, blockSize: number) => Promise<Upstream>;
}

export class MigrationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MigrationError';
  }
}

export class Migration implements MigrationControl {
  private readonly copy: BackgroundCopy | null;
  private readonly zeroScan: ZeroScan | null = null;
  private persistTimer: NodeJS.Timeout | null = null;
  private completing: Promise<void> | null = null;
  private completedAt: Date | null;
  private readonly startedAt = new Date();
  private closed = false;
  /** The link's figures when it was closed (they stay in the status after completion). */
  private lastLinkStats: LinkStats = emptyLinkStats();

  private constructor(
    readonly device: MigratingDevice,
    private upstream: Upstream | null,
    options: MigrationOptions,
    private readonly log: Logger,
  ) {
    const map = device.map;
    this.completedAt = map.complete ? new Date() : null;
    if (map.complete || !upstream) {
      this.copy = null;
      return;
    }
    const copy = new BackgroundCopy(device, options.copy, options.rateLimit, log);
    this.copy = copy;
    if ((options.skipZeroRanges ?? true) && upstream.zeroRanges && device.canFastZero) {
      const scan = new ZeroScan(device, upstream, log);
      copy.setLimit(0);
      scan.on('progress', (blocks: number) => copy.setLimit(blocks));
      this.zeroScan = scan;
    }
    device.on('all-held', () => void this.complete());
    this.persistTimer = setInterval(() => {
      device.flush().catch((e: Error) => log.error({ err: e.message }, 'cannot persist progress'));
    }, options.persistIntervalMs);
  }

  static async open(options: MigrationOptions, log: Logger): Promise<Migration> {
    const { imagePath, statePath } = options;
    if (BlockMap.exists(statePath)) return Migration.resume(options, log);
    if (!options.sourceUrl) throw new MigrationError(`no state at ${statePath} and no source given: pass --source URL`);
    if (fs.existsSync(imagePath)) {
      throw new MigrationError(
        `image ${imagePath} exists but has no migration state (${statePath}); refusing to overwrite it — remove it or choose another --image`,
      );
    }
    const upstream = await options.openUpstream(options.sourceUrl, options.blockSize);
    let map: BlockMap;
    let local: FileDevice;
    try {
      local = FileDevice.open(imagePath, { createSize: upstream.size });
      map = BlockMap.create(statePath, {
        blockSize: options.blockSize,
        imageSize: upstream.size,
        sourceIdentity: upstream.identity,
        sourceUrl: options.sourceUrl,
      });
    } catch (e) {
      await upstream.close();
      throw e;
    }
    log.info(
      { source: upstream.description, size: upstream.size, blocks: map.blockCount, blockSize: map.blockSize },
      'migration started',
    );
    const migration = new Migration(Migration.device(local, map, upstream, options, log), upstream, options, log);
    if (map.blockCount === 0) void migration.complete();
    return migration;
  }

  private static async resume(options: MigrationOptions, log: Logger): Promise<Migration> {
    const map = BlockMap.open(options.statePath);
    if (!fs.existsSync(options.imagePath)) {
      map.close();
      throw new MigrationError(`state ${options.statePath} exists but image ${options.imagePath} does not`);
    }
    const local = FileDevice.open(options.imagePath);
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
    try {
      upstream = await options.openUpstream(url, map.blockSize);
      if (upstream.size !== map.imageSize || upstream.identity !== map.sourceIdentity) {
        await upstream.close();
        throw new MigrationError(
          `source ${url} is not the image this destination was copying: ` +
            `size ${upstream.size} (recorded ${map.imageSize}), identity ${upstream.identity} (recorded ${map.sourceIdentity})`,
        );
      }
      await map.setSourceUrl(url);
    } catch (e) {
      map.close();
      await local.close();
      throw e;
    }
    log.info({ source: url, held: map.heldCount, blocks: map.blockCount }, 'migration resumed');
    const migration = new Migration(Migration.device(local, map, upstream, options, log), upstream, options, log);
    if (map.allHeld) void migration.complete();
    return migration;
  }

  private static device(
    local: FileDevice,
    map: BlockMap,
    upstream: Upstream | null,
    options: MigrationOptions,
    log: Logger,
  ) {
    upstream?.attachLocal?.({ isHeld: (b) => map.isHeld(b), read: (offset, into) => local.read(offset, into) });
    return new MigratingDevice(local, map, upstream, { fetchTimeoutMs: options.fetchTimeoutMs }, log);
  }

  start(): void {
    this.zeroScan?.start();
    this.copy?.start();
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
    return {
      state: this.state,
      source: this.upstream?.description ?? map.sourceUrl,
      connected: this.upstream?.connected ?? false,
      blockSize: map.blockSize,
      blocksTotal: map.blockCount,
      blocksHeld: map.heldCount,
      bytesFetched: d.counters.bytesFetched,
      bytesSkippedAsZero: d.counters.zeroBlocksSkipped * map.blockSize,
      onDemandFetches: d.counters.onDemandFetches,
      backgroundBytesPerSecond: Math.round(rate),
      backgroundWindowBytes: this.copy?.windowBytes ?? 0,
      backgroundInFlightBytes: this.copy?.bytesInFlight ?? 0,
      onDemandLatencyMs: {
        p50: round2(d.onDemandLatency.percentile(50)),
        p99: round2(d.onDemandLatency.percentile(99)),
        count: d.onDemandLatency.count,
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
    if (this.closed) return;
    this.closed = true;
    if (this.persistTimer) clearInterval(this.persistTimer);
    this.zeroScan?.stop();
    await this.copy?.stop();
    await this.completing?.catch(() => undefined);
    // Closing the upstream fails the fetches and queries still waiting on it; then nothing lands after the image closes.
    await this.upstream?.close();
    await this.copy?.settle();
    await this.zeroScan?.settle();
    await this.device.flush().catch((e: Error) => this.log.error({ err: e.message }, 'final persist failed'));
    this.device.map.close();
    await this.device.close();
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
      await this.copy?.stop();
      this.device.detachUpstream();
      if (this.upstream) this.lastLinkStats = this.upstream.linkStats();
      await this.upstream?.close();
      await this.copy?.settle();
      await this.zeroScan?.settle();
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

function round2(n: number): number {
  return Math.round(n * 100) / 100;
}
