/**
 * Drives one QEMU live migration over QMP, with an optional disk cutover run
 * while the source VM is stopped just before switch-over:
 *
 *   migrate-set-capabilities  events, pause-before-switchover
 *   migrate uri=TO            memory pre-copy; the VM runs on at the source
 *   MIGRATION pre-switchover  the source VM is stopped and its disk flushed
 *   (disk cutover)            the source takes no more writes from now on
 *   migrate-continue          device state goes over; the destination VM starts
 *   MIGRATION completed       query-migrate's downtime: how long the VM was stopped
 *
 * Until the cutover runs, any failure cancels the migration and QEMU resumes the
 * source VM. Once it has run the source disk is fenced, so a failure stops the
 * source VM instead (it must not run on a disk that refuses its writes).
 */
import { QmpCommandError, type QmpClient, type QmpEvent } from './qmp';

/** query-migrate's answer, the fields ferry reads. */
export interface MigrateInfo {
  status?: string;
  'error-desc'?: string;
  'total-time'?: number;
  'expected-downtime'?: number;
  downtime?: number;
  'setup-time'?: number;
  ram?: { transferred?: number; remaining?: number; total?: number; 'dirty-sync-count'?: number; mbps?: number };
}

export interface MigrationProgress {
  status: string;
  ramTransferredBytes: number;
  ramRemainingBytes: number;
  ramTotalBytes: number;
  elapsedMs: number;
}

/** The disk cutover could not run, and did not: the source takes writes as before. */
export class CutoverNotRunError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CutoverNotRunError';
  }
}

/**
 * Where the source VM stands after a failed migration, for the operator:
 * - 'running': the migration was cancelled before the disk cutover; nothing changed;
 * - 'stopped': the disk cutover ran (the source is fenced), the VM is stopped with its memory intact;
 * - 'paused-at-switchover': the cutover's outcome is unknown; QEMU is left waiting at pre-switchover;
 * - 'unchanged': refused before anything started;
 * - 'unknown': the QMP connection was lost (QEMU exited, or the socket went).
 */
export type SourceVmState = 'running' | 'stopped' | 'paused-at-switchover' | 'unchanged' | 'unknown';

export class LiveMigrationError extends Error {
  constructor(
    message: string,
    readonly sourceVm: SourceVmState,
  ) {
    super(message);
    this.name = 'LiveMigrationError';
  }
}

export interface LiveMigrationOptions {
  /** The destination QEMU's -incoming URI, e.g. tcp:HOST:PORT. */
  to: string;
  /**
   * Runs with the source VM stopped at pre-switchover. Throw CutoverNotRunError when it
   * surely did not run (the migration is then cancelled); any other error means its
   * outcome is unknown (QEMU is then left paused at pre-switchover for the operator).
   * Without it the migration does not pause.
   */
  cutover?: () => Promise<void>;
  /** migrate-set-parameters max-bandwidth, bytes/s. */
  maxBandwidth?: number;
  /** migrate-set-parameters downtime-limit, ms. */
  downtimeLimitMs?: number;
  /** Gives up (and cancels, before the cutover) if the migration has not converged in this time. */
  timeoutMs?: number;
  /**
   * Aborting before the cutover cancels the migration (the source VM runs on); from the
   * cutover on it is too late to go back, and the migration is seen through.
   */
  signal?: AbortSignal;
  /** How often to report progress (query-migrate). */
  progressIntervalMs?: number;
  onProgress?(progress: MigrationProgress): void;
  /** Called when a step starts, for the operator's log. */
  onStep?(step: string): void;
}

export interface LiveMigrationResult {
  /** How long the VM was stopped (query-migrate downtime; includes the cutover). */
  downtimeMs: number;
  totalTimeMs: number;
  setupTimeMs: number;
  ramTransferredBytes: number;
  /** How long the disk cutover took at pre-switchover (0 without one). */
  cutoverMs: number;
  /** When the disk cutover finished (Date.now()), or null without one. */
  cutoverAt: number | null;
}

/** Statuses of query-migrate during which a migration is under way. */
const RUNNING_STATUSES = new Set([
  'setup',
  'active',
  'pre-switchover',
  'device',
  'cancelling',
  'wait-unplug',
  'postcopy-active',
  'postcopy-paused',
  'postcopy-recover',
  'colo',
]);

/** Statuses a wait ends on besides its target. */
const FINAL_STATUSES = new Set(['completed', 'failed', 'cancelled']);

/** What a wait ends on when the QMP connection goes: no status will come any more. */
const CONNECTION_LOST = 'qmp-connection-lost';

/** Follows the migration's status from MIGRATION events and query-migrate answers alike. */
class MigrationStatusWatch {
  status = 'none';
  lostBecause = '';
  private waiters: Array<{ want: Set<string>; resolve(status: string): void }> = [];
  private readonly onEvent = (e: QmpEvent): void => {
    if (e.name === 'MIGRATION' && typeof e.data.status === 'string') this.set(e.data.status);
  };
  private readonly onClose = (err: Error): void => {
    this.lostBecause = err.message;
    this.set(CONNECTION_LOST);
  };

  constructor(private readonly qmp: QmpClient) {
    qmp.on('event', this.onEvent);
    qmp.on('close', this.onClose);
    if (qmp.closed) this.set(CONNECTION_LOST);
  }

  set(status: string): void {
    if (this.status === CONNECTION_LOST) return;
    this.status = status;
    for (const w of this.waiters.slice()) {
      if (w.want.has(status) || status === CONNECTION_LOST) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(status);
      }
    }
  }

  /** Resolves with the first of `want` seen (now or later). */
  until(want: Iterable<string>): Promise<string> {
    const set = new Set(want);
    if (set.has(this.status)) return Promise.resolve(this.status);
    return new Promise((resolve) => this.waiters.push({ want: set, resolve }));
  }

  stop(): void {
    this.qmp.off('event', this.onEvent);
    this.qmp.off('close', this.onClose);
  }
}

function progressOf(info: MigrateInfo, elapsedMs: number): MigrationProgress {
  return {
    status: info.status ?? 'none',
    ramTransferredBytes: info.ram?.transferred ?? 0,
    ramRemainingBytes: info.ram?.remaining ?? 0,
    ramTotalBytes: info.ram?.total ?? 0,
    elapsedMs,
  };
}

export async function migrateVm(qmp: QmpClient, options: LiveMigrationOptions): Promise<LiveMigrationResult> {
  const step = options.onStep ?? (() => undefined);
  const pause = options.cutover !== undefined;

  const runState = await qmp.execute<{ status: string; running: boolean }>('query-status');
  if (!runState.running && runState.status !== 'paused')
    throw new LiveMigrationError(
      `the source VM is ${runState.status}, not running or paused: there is nothing to migrate`,
      'unchanged',
    );
  const before = await qmp.execute<MigrateInfo>('query-migrate');
  if (before.status && RUNNING_STATUSES.has(before.status))
    throw new LiveMigrationError(
      `a migration is already under way (query-migrate status ${before.status}): wait for it or cancel it with migrate_cancel`,
      'unchanged',
    );

  step(`capabilities: events on, pause-before-switchover ${pause ? 'on' : 'off'}`);
  try {
    await qmp.execute('migrate-set-capabilities', {
      capabilities: [
        { capability: 'events', state: true },
        { capability: 'pause-before-switchover', state: pause },
      ],
    });
    const parameters: Record<string, number> = {};
    if (options.maxBandwidth !== undefined) parameters['max-bandwidth'] = options.maxBandwidth;
    if (options.downtimeLimitMs !== undefined) parameters['downtime-limit'] = options.downtimeLimitMs;
    if (Object.keys(parameters).length > 0) await qmp.execute('migrate-set-parameters', parameters);
  } catch (err) {
    throw new LiveMigrationError(`${(err as Error).message}; nothing was started`, 'unchanged');
  }

  const watch = new MigrationStatusWatch(qmp);
  const started = Date.now();
  let progressTimer: NodeJS.Timeout | null = null;
  let deadline: NodeJS.Timeout | null = null;
  let timedOut: (() => void) | null = null;
  const timeout = new Promise<'timeout'>((resolve) => (timedOut = () => resolve('timeout')));
  let onAbort: (() => void) | null = null;
  const aborted = new Promise<'aborted'>((resolve) => {
    onAbort = () => resolve('aborted');
    if (options.signal?.aborted) resolve('aborted');
    else options.signal?.addEventListener('abort', onAbort, { once: true });
  });
  const queryMigrate = async (): Promise<MigrateInfo> => {
    const info = await qmp.execute<MigrateInfo>('query-migrate');
    if (info.status) watch.set(info.status);
    return info;
  };
  const cancel = async (why: string): Promise<never> => {
    step('cancelling the migration');
    await qmp.execute('migrate_cancel').catch(() => undefined);
    await Promise.race([watch.until(['cancelled', 'failed', 'completed']), qmp.closed ? null : sleep(30_000)]);
    throw new LiveMigrationError(`${why}; the migration was cancelled and the source VM runs on`, 'running');
  };

  try {
    step(`migrate to ${options.to}`);
    try {
      await qmp.execute('migrate', { uri: options.to });
    } catch (err) {
      const detail = err instanceof QmpCommandError ? err.desc : (err as Error).message;
      throw new LiveMigrationError(`QEMU refused to start the migration to ${options.to}: ${detail}`, 'running');
    }
    if (options.progressIntervalMs) {
      const interval = options.progressIntervalMs;
      progressTimer = setInterval(() => {
        queryMigrate()
          .then((info) => options.onProgress?.(progressOf(info, Date.now() - started)))
          .catch(() => undefined);
      }, interval);
    }
    if (options.timeoutMs !== undefined) deadline = setTimeout(() => timedOut?.(), options.timeoutMs);
    // An event may have raced ahead of the subscription's first use: ask once (a lost connection shows in the wait).
    await queryMigrate().catch(() => undefined);

    const converged = await Promise.race([watch.until(['pre-switchover', ...FINAL_STATUSES]), timeout, aborted]);
    if (converged === 'timeout')
      return await cancel(`the memory migration did not converge within ${options.timeoutMs} ms`);
    if (converged === 'aborted') return await cancel('interrupted before the switch-over');
    if (converged === CONNECTION_LOST)
      throw new LiveMigrationError(
        `${watch.lostBecause} before the switch-over; nothing was cut over (if QEMU still runs, query-migrate on another QMP socket says where the migration is)`,
        'unknown',
      );
    if (converged === 'failed' || converged === 'cancelled') {
      const info = await queryMigrate().catch(() => ({}) as MigrateInfo);
      throw new LiveMigrationError(
        `the migration ${converged}${info['error-desc'] ? `: ${info['error-desc']}` : ''}; the source VM runs on`,
        'running',
      );
    }
    if (deadline) clearTimeout(deadline);

    let cutoverMs = 0;
    let cutoverAt: number | null = null;
    if (converged === 'completed' && options.cutover)
      step('QEMU switched over without pausing: the destination cuts over at its first write');
    if (converged === 'pre-switchover' && options.cutover) {
      step('source VM stopped before switch-over: disk cutover');
      const t0 = Date.now();
      try {
        await options.cutover();
      } catch (err) {
        if (err instanceof CutoverNotRunError) return await cancel(`disk cutover did not run: ${err.message}`);
        throw new LiveMigrationError(
          `disk cutover failed and whether the source was fenced is unknown: ${(err as Error).message}. ` +
            'QEMU is left paused at pre-switchover: check the source (ferry ctl status), then either ' +
            'migrate-continue {"state": "pre-switchover"} if it is fenced, or migrate_cancel if not',
          'paused-at-switchover',
        );
      }
      cutoverAt = Date.now();
      cutoverMs = cutoverAt - t0;
      step(`disk cutover done in ${cutoverMs} ms: switch-over`);
      try {
        await qmp.execute('migrate-continue', { state: 'pre-switchover' });
      } catch (err) {
        throw await stopFenced(qmp, `QEMU refused migrate-continue: ${(err as Error).message}`);
      }
    }

    const final = await watch.until(FINAL_STATUSES);
    if (final === CONNECTION_LOST)
      throw new LiveMigrationError(
        `${watch.lostBecause} during the switch-over` +
          (cutoverAt === null ? '' : ', after the source disk was fenced: the destination holds the disk') +
          '; whether the VM runs at the destination is unknown (ask its QEMU: query-status)',
        'unknown',
      );
    let info = await queryMigrate();
    // QEMU reports 'completed' a moment before it computes the totals (migration_calculate_complete).
    for (let tries = 0; final === 'completed' && !info['total-time'] && tries < 100; tries++) {
      await sleep(20);
      info = await queryMigrate();
    }
    if (final !== 'completed') {
      const why = `the migration ${final}${info['error-desc'] ? `: ${info['error-desc']}` : ''}`;
      if (cutoverAt !== null) throw await stopFenced(qmp, why);
      throw new LiveMigrationError(`${why}; the source VM runs on`, 'running');
    }
    step('migration completed: the VM runs at the destination');
    return {
      downtimeMs: info.downtime ?? 0,
      totalTimeMs: info['total-time'] ?? Date.now() - started,
      setupTimeMs: info['setup-time'] ?? 0,
      ramTransferredBytes: info.ram?.transferred ?? 0,
      cutoverMs,
      cutoverAt,
    };
  } finally {
    if (progressTimer) clearInterval(progressTimer);
    if (deadline) clearTimeout(deadline);
    if (onAbort) options.signal?.removeEventListener('abort', onAbort);
    watch.stop();
  }
}

/** After the fence: QEMU resumes a source VM whose migration failed; it must not run on a disk that refuses writes. */
async function stopFenced(qmp: QmpClient, why: string): Promise<LiveMigrationError> {
  const stopped = await qmp.execute('stop').then(
    () => true,
    () => false,
  );
  return new LiveMigrationError(
    `${why}. The source disk is already fenced (the destination holds it now), so the source VM ` +
      (stopped
        ? 'was stopped, its memory intact: start the destination QEMU with -incoming again and rerun the migration'
        : 'could not be stopped: stop it (QMP stop) before it writes to a disk that refuses writes'),
    'stopped',
  );
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
