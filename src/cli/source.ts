/** `ferry source`: serves an image to destinations over the ferry wire (and, optionally, to the local VM over NBD). */
import os from 'node:os';
import path from 'node:path';
import type { Command } from 'commander';
import { asUsage, UsageError } from './usage-error';
import { loadConfig } from '../config/load';
import { createLogger } from '../log';
import { ControlServer, controlLimits, type ControlDispatch } from '../control/control-server';
import { warnIfNoFileOps } from '../store/fileops';
import { NbdServer, StaticExportTable } from '../nbd/server';
import { CodecPool } from '../pool';
import { authWarnings } from '../wire/auth';
import { sourceWireAuth } from '../config/wire-auth';
import { CodecChooser } from '../wire/codec-chooser';
import { WireSourceServer } from '../wire/source-server';
import { SingleSourceExport } from '../wire/source-exports';
import { SourceImage } from '../wire/source-image';
import type { SourceSessions } from '../wire/source-sessions';
import { nbdLimits, parseHostPort, runUntilSignal } from './process';
import { addAuthOptions, AuthCliFlags, authOverrides } from './auth-flags';
import { defaultStateDir, ensureStateDir } from './state-dir';

interface SourceFlags extends AuthCliFlags {
  image?: string;
  export?: string;
  listen?: string;
  nbdListen?: string;
  codec?: string;
  workers?: string;
  stateDir?: string;
  control?: string;
  config?: string;
  logLevel?: string;
  logFile?: string;
}

export function registerSource(program: Command): void {
  const command = program
    .command('source')
    .description('serve an image to migrating destinations over the ferry wire (compressed, deduplicated, verified)')
    .option('--image <file>', 'raw image file or block device to serve (config source.image)')
    .option('--export <name>', "export name; default: the image's base name (config source.export)")
    .option('--listen <host:port>', 'ferry wire address; default 127.0.0.1:10810 (config source.listen)')
    .option('--nbd-listen <host:port>', 'also serve the image over NBD to the local VM (config source.nbd_listen)')
    .option('--codec <name>', 'auto | lz4 | lz4-wasm | deflate | none; default auto (config source.codec)')
    .option('--workers <n>', 'encoding worker threads; default one per core (config source.workers)')
    .option(
      '--state-dir <dir>',
      "where the cutover record and the image's identity are kept; default /var/lib/ferry (root), else $XDG_STATE_HOME/ferry or ~/.local/state/ferry (config source.state_dir)",
    )
    .option('--control <path>', 'control socket for ferry ctl: status, cutover, unfence (config source.control)');
  addAuthOptions(command, 'source')
    .option('--config <file>', 'TOML configuration file; flags override it')
    .option('--log-level <level>', 'fatal|error|warn|info|debug|trace|silent (config log.level)')
    .option('--log-file <path>', 'append JSON log lines to this file instead of stderr (config log.file)')
    .action(async (flags: SourceFlags) => {
      const config = loadConfig(flags.config, {
        'source.image': flags.image,
        'source.export': flags.export,
        'source.listen': flags.listen,
        'source.nbd_listen': flags.nbdListen,
        'source.codec': flags.codec,
        'source.workers': flags.workers === undefined ? undefined : Number(flags.workers),
        'source.state_dir': flags.stateDir,
        'source.control': flags.control,
        ...authOverrides('source', flags),
        'log.level': flags.logLevel,
        'log.file': flags.logFile,
      });
      const s = config.source;
      if (!s.image) throw new UsageError('source: --image (or source.image in the config) is required');
      const auth = asUsage(() => sourceWireAuth(s));
      const log = createLogger(config.log);
      warnIfNoFileOps(log);
      for (const warning of authWarnings(auth)) log.warn(warning);
      // The VM may still run here (pre-copy), so the image stays writable when served over NBD, and
      // every write through it is tracked; without NBD nothing here can see the writers: read-only, no tracking.
      const stateDir = ensureStateDir(s.state_dir ?? defaultStateDir());
      const name = s.export ?? path.basename(s.image);
      const image = SourceImage.open({
        name,
        image: s.image,
        writes: s.nbd_listen ? 'tracked' : 'read-only',
        stateDir,
        // Every session has a connection when it is made, so live ones never exceed the connection cap.
        maxSessions: s.max_connections,
        log,
      });
      const { device, sessions, identity } = image;
      const workers = s.workers || Math.max(1, os.availableParallelism());
      const pool = new CodecPool({
        workers,
        workerNice: s.workers_nice,
        codec: s.codec === 'auto' ? 'lz4' : s.codec,
        level: s.deflate_level,
        log,
      });
      // Started now, their boot is not the first batch's wait; they stop after idling until a fetch needs them.
      pool.warm();
      const chooser = new CodecChooser(s.codec, ['none', 'lz4', 'deflate'], workers);
      const wire = new WireSourceServer({
        exports: new SingleSourceExport(image),
        auth,
        pool,
        chooser,
        log: log.child({ component: 'wire' }),
        handshakeTimeoutMs: s.handshake_timeout_ms,
        maxConnections: s.max_connections,
      });
      const hp = parseHostPort(s.listen);
      const address = await wire.listen(hp.host, hp.port);
      let nbd: NbdServer | null = null;
      let nbdAddress: string | undefined;
      if (s.nbd_listen) {
        nbd = new NbdServer(
          new StaticExportTable([{ name, description: '', device: image.vmDevice! }]),
          log,
          nbdLimits(config),
        );
        nbdAddress = await nbd.listen(parseHostPort(s.nbd_listen));
      }
      const control = s.control ? new ControlServer(sourceDispatch(sessions), log, undefined, controlLimits(s)) : null;
      await control?.listen(s.control!, s.control_group);
      log.info(
        {
          address,
          nbd: nbdAddress,
          export: name,
          image: s.image,
          size: device.size,
          identity,
          codec: s.codec,
          auth: auth.kind,
          workers,
          tracking: sessions.tracking ? 'stream' : 'none',
          fenced: sessions.fenced,
        },
        'serving',
      );
      await runUntilSignal(log, async () => {
        await control?.close();
        await nbd?.close();
        await wire.close();
        await pool.close();
        await image.close();
      });
    });
}

/** The source's control verbs: status, cutover, unfence. */
function sourceDispatch(sessions: SourceSessions): ControlDispatch {
  return async (request) => {
    switch (request.cmd) {
      case 'status':
        break;
      case 'cutover':
        await sessions.cutover();
        break;
      case 'unfence':
        sessions.unfence();
        break;
      default:
        throw new Error(`ferry source does not take "${request.cmd}" (it answers status, cutover and unfence)`);
    }
    return sessions.status();
  };
}
