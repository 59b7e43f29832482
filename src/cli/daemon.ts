/** `ferry daemon`: the destination host's one process for many migrations (ferryd). */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import type { Logger } from 'pino';
import { loadDaemonConfig } from '../config/load';
import type { DaemonConfig } from '../config/daemon-schema';
import { ControlServer, controlLimits } from '../control/control-server';
import { parseDaemonRequestLine, type DaemonRequest } from '../control/daemon-protocol';
import { startMetricsServer, type MetricsServer } from '../control/metrics';
import { Daemon } from '../daemon/daemon';
import { DaemonMetrics } from '../daemon/daemon-metrics';
import { createLogger } from '../log';
import { NbdServer } from '../nbd/server';
import { warnIfNoFileOps } from '../store/fileops';
import { listenAddress, listenError, nbdLimits, parseHostPort, runUntilSignal } from './process';

interface DaemonFlags {
  config?: string;
  logLevel?: string;
  logFile?: string;
}

export function registerDaemon(program: Command): void {
  program
    .command('daemon')
    .description(
      'run every migration of this destination host in one process (ferryd): one NBD listener, one control socket, one shared budget',
    )
    .option('--config <file>', 'ferryd.toml (see docs/configuration.md); without it every key has its default')
    .option('--log-level <level>', 'fatal|error|warn|info|debug|trace|silent (config log.level)')
    .option('--log-file <path>', 'append JSON log lines to this file instead of stderr (config log.file)')
    .action(async (flags: DaemonFlags) => {
      const overrides = { 'log.level': flags.logLevel, 'log.file': flags.logFile };
      const config = loadDaemonConfig(flags.config, overrides);
      const file = flags.config;
      const reread = file ? () => loadDaemonConfig(file, overrides) : null;
      await runDaemon(config, createLogger(config.log, 'ferryd'), reread);
    });
}

async function runDaemon(config: DaemonConfig, log: Logger, reread: (() => DaemonConfig) | null): Promise<void> {
  const d = config.daemon;
  warnIfNoFileOps(log);
  const pool = Daemon.createPool(config, log);
  // The NBD server serves the daemon's exports, and the daemon asks it who uses one: made in that order.
  const nbdClients = { of: (_name: string): number => 0 };
  const daemon = new Daemon(config, pool, log, reread, (name) => nbdClients.of(name));
  const nbd = new NbdServer(daemon.exports, log, nbdLimits(config));
  nbdClients.of = (name) => nbd.clientsOf(name);
  const control = new ControlServer<DaemonRequest>(
    (request) => daemon.handle(request),
    log,
    parseDaemonRequestLine,
    controlLimits(d),
  );
  let metrics: MetricsServer | null = null;
  try {
    await daemon.start();
    const nbdAt = d.socket ?? d.listen;
    const address = await nbd.listen(listenAddress(d)).catch((e: NodeJS.ErrnoException) => {
      throw listenError('NBD server', nbdAt, e);
    });
    const sourceAt = config.source.listen;
    const source = sourceAt
      ? await daemon.sources.listen(...hostAndPort(sourceAt)).catch((e: NodeJS.ErrnoException) => {
          throw listenError('source listener', sourceAt, e);
        })
      : undefined;
    fs.mkdirSync(path.dirname(d.control), { recursive: true, mode: 0o755 });
    await control.listen(d.control).catch((e: NodeJS.ErrnoException) => {
      throw listenError('control socket', d.control, e);
    });
    if (d.metrics) {
      const at = d.metrics;
      const figures = new DaemonMetrics(
        () => daemon.reports(),
        () => daemon.sources.report(),
      );
      metrics = await startMetricsServer(figures, parseHostPort(at), log).catch((e: NodeJS.ErrnoException) => {
        throw listenError('metrics', at, e);
      });
    }
    // The readiness line: everything listens and every migration in the registry is resumed or failing visibly.
    log.info(
      {
        address,
        source,
        sourceExports: daemon.sources.report().exports.length,
        control: d.control,
        metrics: metrics?.address,
        stateDir: d.state_dir,
        migrations: daemon.migrationCount,
      },
      'serving',
    );
  } catch (e) {
    await nbd.close();
    await control.close();
    await metrics?.close();
    await daemon.close();
    await pool.close();
    throw e;
  }
  notifySystemd(log);
  // SIGHUP re-reads the file: rates, limits and declared migrations change at once.
  process.on('SIGHUP', () => {
    daemon.reloadFile().catch((e: Error) => log.warn({ err: e.message }, 'SIGHUP: no reload'));
  });
  const shutdown = async (): Promise<void> => {
    await nbd.close();
    await control.close();
    await metrics?.close();
    await daemon.close();
    await pool.close();
  };
  await runUntilSignal(log, shutdown);
}

function hostAndPort(value: string): [string, number] {
  const { host, port } = parseHostPort(value);
  return [host, port];
}

/**
 * Type=notify under systemd: Node cannot send on a datagram Unix socket, so
 * systemd-notify sends READY=1 on the daemon's behalf (the unit sets
 * NotifyAccess=all; --pid names the daemon as the sender).
 */
function notifySystemd(log: Logger): void {
  if (!process.env.NOTIFY_SOCKET) return;
  const child = spawn('systemd-notify', ['--ready', `--pid=${process.pid}`, '--status=serving'], { stdio: 'ignore' });
  child.on('error', (e) => log.warn({ err: e.message }, 'cannot tell systemd the daemon is ready'));
  child.on('exit', (code) => {
    if (code !== 0) log.warn({ code }, 'systemd-notify failed: systemd was not told the daemon is ready');
  });
}
