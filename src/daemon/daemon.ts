/**
 * `ferry daemon`: one process per destination host running many migrations
 * (each one VM with one or more disks). One codec pool, one NBD listener
 * serving every disk by export name, one control socket. Every disk is a
 * Migration (the one-disk machinery of `ferry dest`); this class keeps the
 * registry, drives the lifecycle and shares the host's copy budget.
 *
 * Crash safety: the registry records a stage before the work it starts
 * (creating, cutover, aborting), so a restart after kill -9 finishes or
 * redoes that work; each disk's progress and the VM's flushed writes are in
 * its image and block map, which a resumed Migration picks up.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import type { DaemonConfig } from '../config/daemon-schema';
import { MigrationSpec } from '../config/daemon-schema';
import type { DaemonRequest } from '../control/daemon-protocol';
import { Migration } from '../migrate/migration';
import { removeDiskFilesIfOurs } from './disk-files';
import { ExportRegistry } from '../nbd/export-registry';
import { refuseIfHeld } from '../store/image-lock';
import { CodecPool } from '../pool';
import { shareBudget, type BudgetShare } from './budget';
import { decide, type Effect, type Verb } from './lifecycle';
import { diskFacts, migrationReport, type DiskReport, type MigrationReport } from './migration-status';
import {
  diskExportName,
  diskStatePath,
  migrationStateDir,
  parseMigrationSpec,
  sameMigration,
  type MigrationRecord,
} from './migration-spec';
import { RegistryFile, type RegistryBody } from './registry-file';
import { SourceWindows } from './source-windows';
import type { HostWindowMember } from '../migrate/host-window';
import { UpstreamOpener } from './upstream-opener';
import { DaemonSources, type KeyNotApplied, type SettingsApplied } from './daemon-sources';

/** How often the budget, unfinished cutovers and failed opens are looked at again. */
const TICK_MS = 1000;
/** Aborted and forgotten migrations remembered, so that asking again answers what happened. */
const ENDED_KEPT = 1000;
/** A disk that cannot be opened (its source is down) is tried again after this long. */
const REOPEN_MS = 5000;

/** [daemon] keys bound when the daemon starts: a reload names them, and why, rather than take them. */
const DAEMON_RESTART_ONLY = {
  listen: 'the NBD listener serves the VMs of every migration and tracked source export; restart the daemon to move it',
  socket: 'the NBD listener serves the VMs of every migration and tracked source export; restart the daemon to move it',
  control: 'the control socket is bound at start (this answer comes over it); restart the daemon to move it',
  metrics: 'the metrics listener is bound at start; restart the daemon to move it',
  state_dir:
    "the registry and every migration's block map are open in the running state directory; restart the daemon to move it",
} as const;

/** Sections read once at start (the NBD server's limits, the upstream credentials, the logger). */
const SECTION_RESTART_ONLY = {
  nbd: "the NBD listener's limits are set when it starts; restart the daemon to change them",
  wire: 'the ferry-wire credentials and codec workers of the migrations are read once; restart the daemon to change them',
  log: 'the log is opened at start; restart the daemon to change it',
} as const;

function sectionValue(config: DaemonConfig, section: 'nbd' | 'wire' | 'log', key: string): unknown {
  return (config[section] as Record<string, unknown>)[key];
}

export class DaemonRefusal extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DaemonRefusal';
  }
}

interface DiskRun {
  spec: MigrationSpec['disk'][number];
  exportName: string;
  statePath: string;
  migration: Migration | null;
  /** Its background copy's place in the window shared with the other disks of its source's host. */
  window: HostWindowMember | null;
  /** What the budget last told this disk, so that only changes reach it (and its log). */
  applied: { paused: boolean; rate: number | null | undefined };
}

interface Run {
  record: MigrationRecord;
  disks: DiskRun[];
  log: Logger;
  /** Why the disks are not open (a source down after a restart); retried. */
  error: string | null;
  nextOpenAt: number;
  opening: Promise<void> | null;
  cutoverRun: Promise<void> | null;
  /** Verbs on one migration run one at a time. */
  queue: Promise<unknown>;
  share: BudgetShare | null;
}

export class Daemon {
  readonly exports = new ExportRegistry();
  private readonly runs = new Map<string, Run>();
  private readonly registryFile: RegistryFile;
  private generation = 0;
  /** Names of declared migrations that were aborted or forgotten: the config does not bring them back. */
  private retired: string[] = [];
  private ended: RegistryBody['ended'] = [];
  private readonly opener: UpstreamOpener;
  /** Background windows shared by the disks of each source host. */
  private readonly windows: SourceWindows;
  private tick: NodeJS.Timeout | null = null;
  private closing = false;
  /** The images this host sources, on the same pool and NBD listener. */
  readonly sources: DaemonSources;

  /**
   * reread: loads the config file again (SIGHUP, `reload`); a config without a file cannot be reloaded.
   * nbdClients: the NBD clients using an export now (a source export in use is not removed).
   */
  constructor(
    private config: DaemonConfig,
    readonly pool: CodecPool,
    private readonly log: Logger,
    private readonly reread: (() => DaemonConfig) | null = null,
    nbdClients: (exportName: string) => number = () => 0,
  ) {
    this.registryFile = new RegistryFile(config.daemon.state_dir);
    this.opener = new UpstreamOpener(config, pool, log);
    this.windows = new SourceWindows({
      batchBytes: config.copy.batch_blocks * config.daemon.block_size,
      windowBytes: config.copy.window_bytes,
    });
    this.sources = new DaemonSources(config, {
      pool,
      nbdExports: this.exports,
      nbdClients,
      destinationClaim: (image, exportName) => this.destinationClaim(image, exportName),
      log,
    });
  }

  /** One pool for both roles: decoding what the daemon fetches and encoding what it sources. */
  static createPool(config: DaemonConfig, log: Logger): CodecPool {
    const pool = new CodecPool({
      workers: config.wire.workers || Math.max(1, os.availableParallelism()),
      workerNice: config.wire.workers_nice,
      codec: 'lz4',
      level: config.source.deflate_level,
      log,
    });
    // Started now for the migrations the daemon resumes; they stop after idling until a batch needs them.
    pool.warm();
    return pool;
  }

  /** Loads the registry and resumes every migration in it, then creates the declared ones it lacks. */
  async start(): Promise<void> {
    const body = this.registryFile.load();
    this.generation = body.generation;
    this.retired = body.retired;
    this.ended = body.ended;
    for (const record of body.migrations) this.runs.set(record.spec.name, this.newRun(record));
    this.log.info({ migrations: body.migrations.length, generation: body.generation }, 'registry loaded');
    await Promise.all([...this.runs.values()].map((run) => this.resume(run)));
    // After the registry (its migrations own their images) and before declared migrations are created.
    await this.sources.apply(this.config.source.export);
    await this.createDeclared();
    this.tick = setInterval(() => this.onTick(), TICK_MS);
    this.tick.unref();
    this.applyBudget();
  }

  /** Stops every disk (progress saved), leaving every migration in the registry for the next start. */
  async close(): Promise<void> {
    this.closing = true;
    if (this.tick) clearInterval(this.tick);
    await Promise.all(
      [...this.runs.values()].map(async (run) => {
        await run.queue.catch(() => undefined);
        await run.opening?.catch(() => undefined);
        await this.closeDisks(run);
      }),
    );
    await this.sources.close();
  }

  get migrationCount(): number {
    return this.runs.size;
  }

  /** Runs one control request; throws a DaemonRefusal (or the error of the work) to refuse. */
  async handle(request: DaemonRequest): Promise<object> {
    switch (request.cmd) {
      case 'list':
        return this.list();
      case 'reload': {
        const reload = await this.reloadFile();
        return { ...this.list(), reload };
      }
      case 'sources':
        return this.sources.report();
      case 'source-unfence': {
        const image = this.sourceExport(request.name);
        image.sessions.unfence();
        return image.status();
      }
      case 'source-cutover':
        return this.sources.cutover(request.name).catch((e: Error) => {
          throw new DaemonRefusal(`source-cutover ${request.name}: ${e.message}`);
        });
      case 'create':
        return this.create(request.spec, 'control');
      case 'status':
        return this.report(this.find(request.name));
      case 'rate':
        return this.serialized(this.find(request.name), async (run) => {
          this.refuseWhileAborting(run);
          run.record.spec.rate = request.bytesPerSecond ?? 0;
          this.save();
          this.applyBudget();
          run.log.info({ bytesPerSecond: request.bytesPerSecond }, 'migration rate set');
          return this.report(run);
        });
      default:
        return this.verb(request.cmd, request.name);
    }
  }

  /** Reads the config file again and applies it; a file with errors changes nothing and says why. */
  async reloadFile(): Promise<SettingsApplied> {
    if (!this.reread) throw new DaemonRefusal('the daemon was started without --config: there is nothing to reload');
    let next: DaemonConfig;
    try {
      next = this.reread();
    } catch (e) {
      this.log.error({ err: (e as Error).message }, 'config not reloaded: it has errors; the running settings stay');
      throw new DaemonRefusal(`config not reloaded: ${(e as Error).message}`);
    }
    return this.reload(next);
  }

  /**
   * Applies new rates, limits, declared migrations, source exports and the
   * [source] listener keys a running daemon can take (SIGHUP); answers which
   * keys it applied and, for each it could not, why.
   */
  async reload(config: DaemonConfig): Promise<SettingsApplied> {
    const restartOnly = (Object.keys(DAEMON_RESTART_ONLY) as Array<keyof typeof DAEMON_RESTART_ONLY>).filter(
      (k) => config.daemon[k] !== this.config.daemon[k],
    );
    const notApplied: KeyNotApplied[] = restartOnly.map((k) => ({
      key: `daemon.${k}`,
      reason: DAEMON_RESTART_ONLY[k],
    }));
    for (const section of ['nbd', 'wire', 'log'] as const)
      for (const k of Object.keys({ ...config[section], ...this.config[section] }))
        if (JSON.stringify(sectionValue(config, section, k)) !== JSON.stringify(sectionValue(this.config, section, k)))
          notApplied.push({ key: `${section}.${k}`, reason: SECTION_RESTART_ONLY[section] });
    for (const n of notApplied) this.log.warn({ key: n.key, reason: n.reason }, 'config key not applied');
    const source = await this.sources.reconfigure(config.source);
    const sourceKept = new Set(source.notApplied.map((n) => n.key.slice('source.'.length)));
    this.config = {
      ...config,
      nbd: this.config.nbd,
      wire: this.config.wire,
      log: this.config.log,
      daemon: { ...config.daemon, ...Object.fromEntries(restartOnly.map((k) => [k, this.config.daemon[k]])) },
      source: {
        ...config.source,
        ...Object.fromEntries([...sourceKept].map((k) => [k, this.config.source[k as keyof DaemonConfig['source']]])),
      },
    };
    for (const spec of config.migration) {
      const run = this.runs.get(spec.name);
      if (!run || run.record.origin !== 'config') continue;
      run.record.spec.rate = spec.rate;
      run.record.spec.weight = spec.weight;
    }
    this.save();
    await this.sources.apply(config.source.export);
    await this.createDeclared();
    this.applyBudget();
    const result = { applied: source.applied, notApplied: [...notApplied, ...source.notApplied] };
    this.log.info(
      {
        maxRate: config.daemon.max_rate,
        maxConcurrentCopies: config.daemon.max_concurrent_copies,
        applied: result.applied,
        notApplied: result.notApplied.map((n) => n.key),
      },
      'config reloaded',
    );
    return result;
  }

  private list(): object {
    const sources = this.sources.report();
    return {
      sources: {
        listen: sources.listen,
        exports: sources.exports.map((e) => ({
          export: e.export,
          image: e.image,
          writes: e.writes,
          fenced: e.fenced,
          destinationsConnected: e.destinationsConnected,
          sessions: e.sessions.length,
          bytesSent: e.bytesSent,
        })),
        failed: sources.failed.map((f) => ({
          export: f.export,
          image: f.image,
          reason: f.reason,
          attempts: f.attempts,
        })),
        removalRefused: sources.removalRefused,
      },
      maxRate: this.config.daemon.max_rate || null,
      maxConcurrentCopies: this.config.daemon.max_concurrent_copies || null,
      migrations: [...this.runs.values()].map((run) => {
        const r = this.report(run);
        return {
          name: r.name,
          state: r.state,
          disks: r.disks.length,
          percent: r.total.percent,
          bytesTotal: r.total.bytesTotal,
          backgroundBytesPerSecond: r.total.backgroundBytesPerSecond,
          etaSeconds: r.total.etaSeconds,
          queued: r.queued,
          error: r.error,
        };
      }),
    };
  }

  /** Every migration's report, for metrics. */
  reports(): MigrationReport[] {
    return [...this.runs.values()].map((run) => this.report(run));
  }

  private find(name: string): Run {
    const run = this.runs.get(name);
    if (run) return run;
    const ended = this.ended.find((e) => e.name === name);
    if (ended)
      throw new DaemonRefusal(
        `no migration named "${name}": it was ${ended.verb === 'abort' ? 'aborted' : 'forgotten'} at ${ended.at}`,
      );
    throw new DaemonRefusal(`no migration named "${name}"`);
  }

  private serialized<T>(run: Run, work: (run: Run) => Promise<T>): Promise<T> {
    const next = run.queue.catch(() => undefined).then(() => work(run));
    run.queue = next;
    return next;
  }

  private refuseWhileAborting(run: Run): void {
    if (run.record.stage === 'aborting') throw new DaemonRefusal(`${run.record.spec.name} is being aborted`);
  }

  // ---- create ----------------------------------------------------------------------------

  private async create(raw: unknown, origin: MigrationRecord['origin']): Promise<object> {
    const parsed = parseMigrationSpec(raw);
    if (!parsed.ok) throw new DaemonRefusal(`create: ${parsed.error}`);
    const spec = parsed.spec;
    const existing = this.runs.get(spec.name);
    if (existing) {
      if (!sameMigration(existing.record.spec, spec))
        throw new DaemonRefusal(
          `create: a migration named "${spec.name}" exists with other disks; abort or forget it first, or choose another name`,
        );
      return this.report(existing);
    }
    this.refuseConflicts(spec);
    const record: MigrationRecord = {
      spec,
      stage: 'creating',
      paused: false,
      origin,
      createdAt: new Date().toISOString(),
      cutoverAt: null,
    };
    const run = this.newRun(record);
    this.runs.set(spec.name, run);
    this.retired = this.retired.filter((n) => n !== spec.name);
    this.ended = this.ended.filter((e) => e.name !== spec.name);
    this.save();
    return this.serialized(run, async () => {
      try {
        await this.openDisks(run, true);
      } catch (e) {
        this.runs.delete(spec.name);
        fs.rmSync(migrationStateDir(this.config.daemon.state_dir, spec.name), { recursive: true, force: true });
        this.save();
        throw new DaemonRefusal(`create ${spec.name}: ${(e as Error).message}`);
      }
      record.stage = 'created';
      this.save();
      run.log.info({ disks: spec.disk.map((d) => d.name) }, 'migration created');
      // Through the verb, so that the stage says started and the budget lets it copy.
      if (spec.start) await this.applyVerb(run, 'start');
      if (spec.cutover === 'at-start') await this.applyVerb(run, 'cutover');
      return this.report(run);
    });
  }

  private sourceExport(name: string) {
    try {
      return this.sources.find(name);
    } catch (e) {
      throw new DaemonRefusal((e as Error).message);
    }
  }

  /** Why a source export may not have this image or name: a migration's disk has it. */
  private destinationClaim(image: string, exportName: string): string | null {
    const resolved = path.resolve(image);
    for (const run of this.runs.values())
      for (const d of run.record.spec.disk) {
        const owner = `migration ${run.record.spec.name} disk ${d.name}`;
        if (path.resolve(d.image) === resolved) return `image ${image} is the destination image of ${owner}`;
        if (diskExportName(run.record.spec.name, d) === exportName)
          return `export ${exportName} is the NBD export of ${owner}`;
      }
    return null;
  }

  /** Two migrations may not share an image or an export name, nor take a source export's or another process's image. */
  private refuseConflicts(spec: MigrationSpec): void {
    for (const mine of spec.disk) {
      const claimed = this.sources.claim(mine.image, diskExportName(spec.name, mine));
      if (claimed) throw new DaemonRefusal(`create: ${claimed}`);
    }
    for (const other of this.runs.values())
      for (const d of other.record.spec.disk)
        for (const mine of spec.disk) {
          if (d.image === mine.image)
            throw new DaemonRefusal(`create: image ${mine.image} belongs to migration ${other.record.spec.name}`);
          if (diskExportName(other.record.spec.name, d) === diskExportName(spec.name, mine))
            throw new DaemonRefusal(
              `create: export ${diskExportName(spec.name, mine)} belongs to migration ${other.record.spec.name}`,
            );
        }
    // Last: an image of this daemon is named by the checks above, another process's by its holder.
    for (const mine of spec.disk)
      try {
        refuseIfHeld(mine.image);
      } catch (e) {
        throw new DaemonRefusal(`create: disk ${mine.name}: ${(e as Error).message}`);
      }
  }

  private async createDeclared(): Promise<void> {
    for (const spec of this.config.migration) {
      if (this.runs.has(spec.name) || this.retired.includes(spec.name)) continue;
      await this.create(spec, 'config').catch((e: Error) =>
        this.log.error({ migration: spec.name, err: e.message }, 'cannot create the declared migration'),
      );
    }
  }

  // ---- verbs -----------------------------------------------------------------------------

  private verb(verb: Verb, name: string): Promise<object> {
    // Asked again after it is done (the answer was lost): the same yes.
    const ended = this.runs.has(name) ? undefined : this.ended.find((e) => e.name === name);
    if (ended?.verb === verb)
      return Promise.resolve({ name, state: verb === 'abort' ? 'aborted' : 'forgotten', at: ended.at });
    return this.serialized(this.find(name), async (run) => {
      await this.applyVerb(run, verb);
      return this.runs.has(name) ? this.report(run) : { name, state: verb === 'abort' ? 'aborted' : 'forgotten' };
    });
  }

  private async applyVerb(run: Run, verb: Verb): Promise<void> {
    const facts = diskFacts(this.diskReports(run));
    const decision = decide(verb, run.record, facts);
    if (!decision.ok) throw new DaemonRefusal(`${verb} ${run.record.spec.name} refused: ${decision.reason}`);
    if (run.error && decision.effect !== 'abort')
      throw new DaemonRefusal(`${verb} ${run.record.spec.name}: its disks are not open: ${run.error}`);
    const changed = decision.stage !== run.record.stage || decision.paused !== run.record.paused;
    run.record.stage = decision.stage;
    run.record.paused = decision.paused;
    if (decision.effect === 'cutover') run.record.cutoverAt ??= new Date().toISOString();
    // Recorded before it is done: a crash in the middle is finished (or redone) by the next start.
    if (changed) this.save();
    await this.effect(run, decision.effect);
  }

  private async effect(run: Run, effect: Effect): Promise<void> {
    switch (effect) {
      case 'none':
        return;
      case 'start':
        for (const d of run.disks) d.migration?.start();
        this.applyBudget();
        return;
      case 'budget':
        this.applyBudget();
        return;
      case 'cutover':
        return this.cutoverAll(run);
      case 'abort':
        return this.abort(run);
      case 'forget':
        return this.forget(run);
    }
  }

  /** Every disk at once; the stage is durable already, so a crash part-way is finished by the next start. */
  private cutoverAll(run: Run): Promise<void> {
    run.cutoverRun ??= (async () => {
      run.log.info({ disks: run.disks.map((d) => d.spec.name) }, 'cutover of every disk');
      const results = await Promise.allSettled(
        run.disks.map(async (d) => {
          d.migration!.start();
          await d.migration!.cutover();
        }),
      );
      this.applyBudget();
      const failed = results
        .map((r, i) => (r.status === 'rejected' ? `${run.disks[i].spec.name}: ${(r.reason as Error).message}` : null))
        .filter((x) => x !== null);
      if (failed.length)
        throw new DaemonRefusal(
          `cutover of ${run.record.spec.name} is not finished (it is retried): ${failed.join('; ')}`,
        );
      run.log.info('cutover done on every disk');
    })().finally(() => (run.cutoverRun = null));
    return run.cutoverRun;
  }

  private async abort(run: Run): Promise<void> {
    const name = run.record.spec.name;
    for (const d of run.disks) this.exports.remove(d.exportName);
    for (const d of run.disks) {
      d.window?.leave();
      d.window = null;
      if (d.migration) {
        await d.migration.abort();
        d.migration = null;
      } else removeDiskFilesIfOurs(d.spec.image, d.statePath);
    }
    fs.rmSync(migrationStateDir(this.config.daemon.state_dir, name), { recursive: true, force: true });
    this.drop(run, 'abort');
    run.log.warn('migration aborted: images and state removed; the sources are untouched');
  }

  private async forget(run: Run): Promise<void> {
    for (const d of run.disks) this.exports.remove(d.exportName);
    await this.closeDisks(run);
    fs.rmSync(migrationStateDir(this.config.daemon.state_dir, run.record.spec.name), { recursive: true, force: true });
    this.drop(run, 'forget');
    run.log.info({ images: run.disks.map((d) => d.spec.image) }, 'migration forgotten: the images stay');
  }

  private drop(run: Run, verb: 'abort' | 'forget'): void {
    const name = run.record.spec.name;
    this.runs.delete(name);
    this.ended = [...this.ended.filter((e) => e.name !== name), { name, verb, at: new Date().toISOString() }].slice(
      -ENDED_KEPT,
    );
    if (run.record.origin === 'config' && !this.retired.includes(name)) this.retired.push(name);
    this.save();
    this.applyBudget();
  }

  // ---- disks -----------------------------------------------------------------------------

  private newRun(record: MigrationRecord): Run {
    const name = record.spec.name;
    return {
      record,
      log: this.log.child({ migration: name }),
      disks: record.spec.disk.map((spec) => ({
        spec,
        exportName: diskExportName(name, spec),
        statePath: diskStatePath(this.config.daemon.state_dir, name, spec.name),
        migration: null,
        window: null,
        applied: { paused: false, rate: undefined },
      })),
      error: null,
      nextOpenAt: 0,
      opening: null,
      cutoverRun: null,
      queue: Promise.resolve(),
      share: null,
    };
  }

  /** After a restart: finish an abort, or open the disks and pick up where the stage says. */
  private async resume(run: Run): Promise<void> {
    if (run.record.stage === 'aborting') {
      await this.abort(run);
      return;
    }
    await this.reopen(run);
  }

  private async reopen(run: Run): Promise<void> {
    try {
      await this.openDisks(run, false);
    } catch (e) {
      run.error = (e as Error).message;
      run.nextOpenAt = Date.now() + REOPEN_MS;
      run.log.error({ err: run.error }, 'cannot open the disks; trying again');
      return;
    }
    run.error = null;
    const { stage } = run.record;
    if (stage === 'creating') {
      run.record.stage = 'created';
      this.save();
    }
    if (stage === 'started' || stage === 'cutover') for (const d of run.disks) d.migration!.start();
    if (stage === 'cutover') this.cutoverAll(run).catch((e: Error) => run.log.warn({ err: e.message }, 'cutover'));
    run.log.info({ stage: run.record.stage }, 'migration resumed');
  }

  /** Opens (or creates) every disk; if one fails, the others are closed again (and what create made, removed). */
  private openDisks(run: Run, creating: boolean): Promise<void> {
    run.opening ??= (async () => {
      const d = this.config.daemon;
      fs.mkdirSync(migrationStateDir(d.state_dir, run.record.spec.name), { recursive: true, mode: 0o700 });
      const results = await Promise.allSettled(
        run.disks.map(async (disk) => {
          const log = run.log.child({ disk: disk.spec.name });
          disk.window?.leave();
          disk.window = this.windows.join(disk.spec.source, diskWeight(run));
          disk.migration = await Migration.open(
            {
              imagePath: disk.spec.image,
              statePath: disk.statePath,
              sourceUrl: disk.spec.source,
              blockSize: disk.spec.block_size ?? d.block_size,
              fetchTimeoutMs: d.fetch_timeout_ms,
              persistIntervalMs: d.persist_interval_ms,
              rateLimit: null,
              skipZeroRanges: this.config.copy.skip_zero_ranges,
              fileMode: parseInt(d.file_mode, 8),
              copy: {
                batchBlocks: this.config.copy.batch_blocks,
                windowBytes: this.config.copy.window_bytes,
                storeErrorBackoffMs: this.config.copy.store_error_backoff_ms,
                queueBatches: this.config.copy.queue_batches,
                hostWindow: disk.window,
              },
              openUpstream: (url, blockSize, session) =>
                this.opener.open({ url, blockSize, session, dirtyBitmap: disk.spec.dirty_bitmap }, log),
            },
            log,
          );
          disk.applied = { paused: false, rate: undefined };
          this.watchPhase(run, disk);
        }),
      );
      const failed = results.findIndex((r) => r.status === 'rejected');
      if (failed >= 0) {
        for (const disk of run.disks) {
          const m = disk.migration;
          disk.migration = null;
          disk.window?.leave();
          disk.window = null;
          await (creating ? m?.discard() : m?.close())?.catch(() => undefined);
        }
        const reason = (results[failed] as PromiseRejectedResult).reason as Error;
        throw new Error(`disk ${run.disks[failed].spec.name}: ${reason.message}`);
      }
      for (const disk of run.disks)
        this.exports.add({
          name: disk.exportName,
          description: `${run.record.spec.name} ${disk.spec.name}`,
          device: disk.migration!.device,
        });
    })().finally(() => (run.opening = null));
    return run.opening;
  }

  /** A disk that leaves warming on its own (the VM wrote to it here) takes every other disk of its VM along. */
  private watchPhase(run: Run, disk: DiskRun): void {
    disk.migration!.device.on('phase', (phase: string) => {
      if (phase === 'warming' || run.record.stage === 'cutover' || this.closing) return;
      run.log.info({ disk: disk.spec.name }, 'a disk cut over on its own: every disk of the migration follows');
      void this.serialized(run, (r) => this.applyVerb(r, 'cutover')).catch((e: Error) =>
        run.log.warn({ err: e.message }, 'cutover'),
      );
    });
  }

  private async closeDisks(run: Run): Promise<void> {
    await Promise.all(
      run.disks.map(async (d) => {
        const m = d.migration;
        d.migration = null;
        d.window?.leave();
        d.window = null;
        this.exports.remove(d.exportName);
        await m?.close().catch((e: Error) => run.log.error({ disk: d.spec.name, err: e.message }, 'close failed'));
      }),
    );
  }

  private diskReports(run: Run): DiskReport[] {
    return run.disks.map((d) => ({
      name: d.spec.name,
      export: d.exportName,
      image: d.spec.image,
      status: d.migration?.status() ?? null,
    }));
  }

  private report(run: Run): MigrationReport {
    return migrationReport(run.record, this.diskReports(run), {
      queued: run.share?.queued ?? false,
      allocatedRate: run.share?.copying ? run.share.rate : null,
      error: run.error,
    });
  }

  // ---- budget and housekeeping -----------------------------------------------------------

  /** Tells every disk whether it may copy and how fast; only changes reach the disks. */
  applyBudget(): void {
    const runs = [...this.runs.values()];
    const shares = shareBudget({
      maxRate: this.config.daemon.max_rate || null,
      maxConcurrent: this.config.daemon.max_concurrent_copies,
      migrations: runs.map((run) => ({
        name: run.record.spec.name,
        weight: run.record.spec.weight,
        rate: run.record.spec.rate || null,
        wantsCopy: (run.record.stage === 'started' || run.record.stage === 'cutover') && !run.record.paused,
        cutOver: run.record.stage === 'cutover',
        copyingDisks: run.disks.filter((d) => d.migration && d.migration.phase !== 'complete').map((d) => d.spec.name),
      })),
    });
    for (const run of runs) {
      const share = shares.get(run.record.spec.name)!;
      run.share = share;
      for (const d of run.disks) {
        if (d.window && d.window.weight !== diskWeight(run)) d.window.setWeight(diskWeight(run));
        const m = d.migration;
        if (!m || m.phase === 'complete') continue;
        const copying = share.disks.has(d.spec.name);
        try {
          if (!copying && !d.applied.paused) m.pause();
          if (copying && d.applied.paused) m.resume();
          d.applied.paused = !copying;
          const rate = share.disks.get(d.spec.name);
          if (copying && rate !== d.applied.rate) {
            m.setRateLimit(rate ?? null);
            d.applied.rate = rate;
          }
        } catch (e) {
          run.log.debug({ disk: d.spec.name, err: (e as Error).message }, 'budget not applied');
        }
      }
    }
  }

  private onTick(): void {
    if (this.closing) return;
    for (const run of this.runs.values()) {
      if (run.error && !run.opening && Date.now() >= run.nextOpenAt)
        void this.serialized(run, (r) => this.reopen(r)).then(() => this.applyBudget());
      else if (run.record.stage === 'cutover' && !run.cutoverRun && !run.error) {
        const unfinished = run.disks.some((d) => d.migration && d.migration.phase === 'warming');
        if (unfinished) this.cutoverAll(run).catch((e: Error) => run.log.warn({ err: e.message }, 'cutover'));
      }
    }
    this.applyBudget();
  }

  private save(): void {
    const body: RegistryBody = {
      generation: ++this.generation,
      migrations: [...this.runs.values()].map((r) => r.record),
      retired: this.retired,
      ended: this.ended,
    };
    this.registryFile.save(body);
  }
}

/** A disk's weight in its source host's window: its migration's weight, split between its disks. */
function diskWeight(run: Run): number {
  return run.record.spec.weight / run.disks.length;
}
