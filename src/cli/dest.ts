/** `ferry dest`: the live-migration destination. */
import path from 'node:path';
import type { Command } from 'commander';
import type { Logger } from 'pino';
import { loadConfig } from '../config/load';
import type { FerryConfig } from '../config/schema';
import { createLogger } from '../log';
import { NbdServer, StaticExportTable } from '../nbd/server';
import { Migration } from '../migrate/migration';
import { NbdUpstream } from '../upstream/nbd-upstream';
import type { Upstream } from '../upstream/upstream';
import { ControlServer } from '../control/control-server';
import { startMetricsServer } from '../control/metrics';
import { listenAddress, nbdLimits, parseHostPort, runUntilSignal } from './process';
import { parseByteRate } from '../control/byte-rate';
import os from 'node:os';
import { CodecPool } from '../pool';
import { warnIfNoFileOps } from '../store/fileops';
import { loadAuth } from '../wire/auth';
import { WireUpstream } from '../upstream/wire-upstream';
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
  config?: string;
  logLevel?: string;
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
    );
  addAuthOptions(command, 'wire')
    .option('--config <file>', 'TOML configuration file; flags override it')
    .option('--log-level <level>', 'fatal|error|warn|info|debug|trace|silent (config log.level)')
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
        'copy.rate_limit': flags.rate === undefined ? undefined : (parseByteRate(flags.rate) ?? 0),
        ...authOverrides('wire', flags),
        'log.level': flags.logLevel,
      });
      await runDest(config, createLogger(config.log.level));
    });
}

async function runDest(config: FerryConfig, log: Logger): Promise<void> {
  const d = config.dest;
  if (!d.image) throw new Error('dest: --image (or dest.image in the config) is required');
  warnIfNoFileOps(log);
  const pools: CodecPool[] = [];
  const migration = await Migration.open(
    {
      imagePath: d.image,
      statePath: d.state ?? `${d.image}.ferry-state`,
      sourceUrl: d.source,
      blockSize: d.block_size,
      fetchTimeoutMs: d.fetch_timeout_ms,
      persistIntervalMs: d.persist_interval_ms,
      rateLimit: config.copy.rate_limit || null,
      skipZeroRanges: config.copy.skip_zero_ranges,
      cutoverAtStart: d.cutover === 'at-start',
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
  const address = await server.listen(listenAddress(d));
  const control = d.control ? new ControlServer(migration, log) : null;
  if (control && d.control) await control.listen(d.control);
  const metrics = d.metrics ? await startMetricsServer(migration, parseHostPort(d.metrics), log) : null;
  migration.start();
  log.info(
    {
      address,
      export: name,
      image: d.image,
      control: d.control,
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

async function openUpstream(
  url: string,
  blockSize: number,
  _session: string,
  config: FerryConfig,
  log: Logger,
  pools: CodecPool[],
): Promise<Upstream> {
  if (url.startsWith('ferry://')) {
    const w = config.wire;
    const auth = loadAuth({ pskFile: w.psk_file, cert: w.cert, key: w.key, ca: w.ca, insecure: w.insecure }, 'dest');
    if (auth.kind === 'insecure')
      log.warn('ferry wire without TLS (--insecure): anyone on the path can read the disk or pose as either end');
    const pool = new CodecPool({ workers: w.workers || Math.max(1, os.availableParallelism()), codec: 'lz4' });
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
        maxAttempts: w.max_attempts,
      },
      log.child({ upstream: 'ferry' }),
    );
  }
  if (url.startsWith('nbd://') || url.startsWith('nbd+unix://')) {
    return NbdUpstream.open(url, log.child({ upstream: 'nbd' }), {
      minBackoffMs: config.dest.reconnect_min_ms,
      maxBackoffMs: config.dest.reconnect_max_ms,
      connectTimeoutMs: 10_000,
    });
  }
  throw new Error(
    `dest: unsupported source URL "${url}" (use ferry://HOST:PORT/EXPORT, nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH)`,
  );
}
