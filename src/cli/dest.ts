/** `ferry dest`: the live-migration destination. */
import { refuseIfHeld } from '../store/image-lock';
import path from 'node:path';
import type { Command } from 'commander';
import { asUsage, UsageError } from './usage-error';
import type { Logger } from 'pino';
import { loadConfig } from '../config/load';
import type { FerryConfig } from '../config/schema';
import { createLogger } from '../log';
import { NbdServer, StaticExportTable } from '../nbd/server';
import { Migration } from '../migrate/migration';
import { NbdUpstream } from '../upstream/nbd-upstream';
import type { Upstream } from '../upstream/upstream';
import { ControlServer, controlLimits } from '../control/control-server';
import type { MetricsServer } from '../control/metrics';
import { listenAddress, listenError, nbdLimits, parseHostPort, runUntilSignal } from './process';
import { destControlPath, destStatePath, ensureStateDir, isBlockDevicePath } from './state-dir';
import { parseByteRate } from '../control/byte-rate';
import os from 'node:os';
import type { CodecPool } from '../pool';
import { warnIfNoFileOps } from '../store/fileops';
import { authWarnings } from '../wire/auth';
import { destWireAuth } from '../config/wire-auth';
import { addAuthOptions, AuthCliFlags, authOverrides } from './auth-flags';

interface DestFlags extends AuthCliFlags {
  source?: string;
  image?: string;
  state?: string;
  export?: string;
  listen?: string;
  socket?: string;
  control?: string;
  metrics?: string;
  blockSize?: string;
  rate?: string;
  cutoverAtStart?: boolean;
  dirtyBitmap?: string;
  seed?: string;
  config?: string;
  logLevel?: string;
  logFile?: string;
}

export function registerDest(program: Command): void {
  const command = program
    .command('dest')
    .description('serve a VM disk over NBD while it migrates in from a source (on-demand fetch + background copy)')
    .option(
      '--source <url>',
      'ferry://HOST:PORT/EXPORT (ferry source), or nbd://HOST:PORT/EXPORT, nbd+unix:///EXPORT?socket=PATH (config dest.source)',
    )
    .option('--image <file>', 'local image, created sparse at the source size (config dest.image)')
    .option('--state <file>', 'block map file; default IMAGE.ferry-state (config dest.state)')
    .option('--export <name>', "export name for the VM; default: the image's base name (config dest.export)")
    .option('--listen <host:port>', 'NBD listen address; default 127.0.0.1:10809 (config dest.listen)')
    .option('--socket <path>', 'listen on this Unix socket instead of TCP (config dest.socket)')
    .option('--control <path>', 'control socket for `ferry ctl` (config dest.control)')
    .option('--metrics <host:port>', 'serve Prometheus metrics at http://HOST:PORT/metrics (config dest.metrics)')
    .option('--block-size <bytes>', 'block size of a new migration; default 4096 (config dest.block_size)')
    .option(
      '--cutover-at-start',
      'the source is no longer written (stopped VM, snapshot): be the authority at once (config dest.cutover = "at-start")',
    )
    .option(
      '--rate <bytes/s>',
      'background copy limit, e.g. 50M (k/M/G = 1024-based) or off (config copy.rate_limit, 0 = none)',
    )
    .option(
      '--seed <file>',
      "a template or older copy of the disk here: blocks whose SHA-256 equals the source's are copied from it, not fetched; ferry source only (config dest.seed)",
    )
    .option(
      '--dirty-bitmap <name>',
      'plain NBD source only: QEMU dirty bitmap NAME exported by the source (qemu:dirty-bitmap:NAME) that records its writes (config dest.dirty_bitmap)',
    );
  addAuthOptions(command, 'wire')
    .option('--config <file>', 'TOML configuration file; flags override it')
    .option('--log-level <level>', 'fatal|error|warn|info|debug|trace|silent (config log.level)')
    .option('--log-file <path>', 'append JSON log lines to this file instead of stderr (config log.file)')
    .action(async (flags: DestFlags) => {
      const config = loadConfig(flags.config, {
        'dest.source': flags.source,
        'dest.image': flags.image,
        'dest.state': flags.state,
        'dest.export': flags.export,
        'dest.listen': flags.listen,
        'dest.socket': flags.socket,
        'dest.control': flags.control,
        'dest.metrics': flags.metrics,
        'dest.block_size': flags.blockSize === undefined ? undefined : Number(flags.blockSize),
        'dest.cutover': flags.cutoverAtStart ? 'at-start' : undefined,
        'dest.dirty_bitmap': flags.dirtyBitmap,
        'dest.seed': flags.seed,
        'copy.rate_limit': flags.rate === undefined ? undefined : (asUsage(() => parseByteRate(flags.rate!)) ?? 0),
        ...authOverrides('wire', flags),
        'log.level': flags.logLevel,
        'log.file': flags.logFile,
      });
      await runDest(config, createLogger(config.log));
    });
}

async function runDest(config: FerryConfig, log: Logger): Promise<void> {
  const d = config.dest;
  if (!d.image) throw new UsageError('dest: --image (or dest.image in the config) is required');
  const statePath = d.state ?? destStatePath(d.image, d.state_dir);
  if (!d.state && isBlockDevicePath(d.image)) ensureStateDir(path.dirname(statePath));
  const controlPath = d.control ?? defaultControl(statePath, log);
  warnIfNoFileOps(log);
  if (d.seed && d.source && !d.source.startsWith('ferry://'))
    throw new UsageError(
      `dest: --seed (dest.seed) needs a ferry source, which sends the block hashes that vouch for the seed's blocks; ${d.source} is plain NBD`,
    );
  // Another process's image is refused naming it and its holder (before "exists but has no state" would).
  refuseIfHeld(d.image);
  const pools: CodecPool[] = [];
  const migration = await Migration.open(
    {
      imagePath: d.image,
      fileMode: parseInt(d.file_mode, 8),
      statePath,
      sourceUrl: d.source,
      blockSize: d.block_size,
      fetchTimeoutMs: d.fetch_timeout_ms,
      persistIntervalMs: d.persist_interval_ms,
      rateLimit: config.copy.rate_limit || null,
      skipZeroRanges: config.copy.skip_zero_ranges,
      cutoverAtStart: d.cutover === 'at-start',
      seedPath: d.seed,
      copy: {
        batchBlocks: config.copy.batch_blocks,
        windowBytes: config.copy.window_bytes,
        storeErrorBackoffMs: config.copy.store_error_backoff_ms,
        queueBatches: config.copy.queue_batches,
      },
      openUpstream: (url, blockSize, session) => openUpstream(url, blockSize, session, config, log, pools),
    },
    log,
  );
  const name = d.export ?? path.basename(d.image);
  const server = new NbdServer(
    new StaticExportTable([{ name, description: d.description, device: migration.device }]),
    log,
    nbdLimits(config),
  );
  const control = controlPath ? new ControlServer(migration, log, undefined, controlLimits(d)) : null;
  let address: string;
  let metrics: MetricsServer | null = null;
  try {
    const nbdAt = d.socket ?? d.listen;
    address = await server.listen(listenAddress(d)).catch((e: NodeJS.ErrnoException) => {
      throw listenError('NBD server', nbdAt, e);
    });
    if (control && controlPath)
      await control.listen(controlPath, d.control_group).catch((e: NodeJS.ErrnoException) => {
        throw listenError('control socket', controlPath, e);
      });
    if (d.metrics) {
      const metricsAt = d.metrics;
      // Loaded only when asked for: prom-client is 4 MiB of a destination's memory (docs/benchmarks.md, "Memory").
      const { startMetricsServer } = require('../control/metrics') as typeof import('../control/metrics');
      metrics = await startMetricsServer(migration, parseHostPort(metricsAt), log).catch((e: NodeJS.ErrnoException) => {
        throw listenError('metrics', metricsAt, e);
      });
    }
  } catch (e) {
    // Nothing was served: a new migration's image and state go, so a retry starts clean.
    await server.close();
    await control?.close();
    await migration
      .discard()
      .catch((err: Error) => log.error({ err: err.message }, 'cannot remove what the failed start created'));
    for (const pool of pools) await pool.close();
    throw e;
  }
  migration.start();
  log.info(
    {
      address,
      export: name,
      image: d.image,
      stateFile: statePath,
      control: controlPath,
      metrics: d.metrics,
      state: migration.state,
      phase: migration.phase,
    },
    'serving',
  );
  const shutdown = async (): Promise<void> => {
    await server.close();
    await control?.close();
    await metrics?.close();
    await migration.close();
    for (const pool of pools) await pool.close();
  };
  // An aborted migration has nothing left to serve: stop as after a signal.
  const aborted = new Promise<void>((resolve) => migration.once('aborted', resolve));
  await runUntilSignal(log, shutdown, aborted);
}

/** Unix socket paths are limited to 107 bytes; a longer default is skipped rather than failing the start. */
function defaultControl(statePath: string, log: Logger): string | undefined {
  const control = destControlPath(statePath);
  if (Buffer.byteLength(path.resolve(control)) <= 107) return control;
  log.warn({ control }, 'default control socket path is too long for a Unix socket; pass --control to have one');
  return undefined;
}

async function openUpstream(
  url: string,
  blockSize: number,
  session: string,
  config: FerryConfig,
  log: Logger,
  pools: CodecPool[],
): Promise<Upstream> {
  if (url.startsWith('ferry://')) {
    if (config.dest.dirty_bitmap)
      throw new UsageError(
        `dest: --dirty-bitmap (dest.dirty_bitmap) is for a plain NBD source; ferry source ${url} reports its writes itself`,
      );
    const w = config.wire;
    const auth = asUsage(() => destWireAuth(w));
    for (const warning of authWarnings(auth)) log.warn(warning);
    // Loaded here: a destination of a plain NBD source needs neither (2 MiB of heap).
    const [{ CodecPool }, { WireUpstream }] = await Promise.all([
      import('../pool'),
      import('../upstream/wire-upstream'),
    ]);
    const pool = new CodecPool({
      workers: w.workers || Math.max(1, os.availableParallelism()),
      workerNice: w.workers_nice,
      codec: 'lz4',
      log,
    });
    pool.warm(); // batches come as soon as the streams are open
    pools.push(pool);
    return WireUpstream.open(
      url,
      auth,
      pool,
      {
        blockSize,
        backgroundStreams: w.background_streams,
        maxBatchBlocks: config.copy.batch_blocks,
        connectTimeoutMs: 10_000,
        minBackoffMs: config.dest.reconnect_min_ms,
        maxBackoffMs: config.dest.reconnect_max_ms,
        stallTimeoutMs: config.dest.wire_stall_timeout_ms,
        maxAttempts: w.max_attempts,
        session,
      },
      log.child({ upstream: 'ferry' }),
    );
  }
  if (url.startsWith('nbd://') || url.startsWith('nbd+unix://')) {
    return NbdUpstream.open(url, log.child({ upstream: 'nbd' }), {
      minBackoffMs: config.dest.reconnect_min_ms,
      maxBackoffMs: config.dest.reconnect_max_ms,
      stallTimeoutMs: config.dest.nbd_stall_timeout_ms,
      connectTimeoutMs: 10_000,
      dirtyBitmap: config.dest.dirty_bitmap,
    });
  }
  throw new UsageError(
    `dest: unsupported source URL "${url}" (use ferry://HOST:PORT/EXPORT, nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH)`,
  );
}
