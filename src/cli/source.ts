/** `ferry source`: serves an image to destinations over the ferry wire (and, optionally, to the local VM over NBD). */
import os from 'node:os';
import path from 'node:path';
import type { Command } from 'commander';
import { loadConfig } from '../config/load';
import { createLogger } from '../log';
import { FileDevice } from '../store/file-device';
import { warnIfNoFileOps } from '../store/fileops';
import { NbdServer, StaticExportTable } from '../nbd/server';
import { CodecPool } from '../pool';
import { loadAuth } from '../wire/auth';
import { CodecChooser } from '../wire/codec-chooser';
import { imageIdentity } from '../wire/image-identity';
import { WireSourceServer } from '../wire/source-server';
import { nbdLimits, parseHostPort, runUntilSignal } from './process';
import { addAuthOptions, AuthCliFlags, authOverrides } from './auth-flags';

interface SourceFlags extends AuthCliFlags {
  image?: string;
  export?: string;
  listen?: string;
  nbdListen?: string;
  codec?: string;
  workers?: string;
  config?: string;
  logLevel?: string;
}

export function registerSource(program: Command): void {
  const command = program
    .command('source')
    .description('serve an image to migrating destinations over the ferry wire (compressed, deduplicated, verified)')
    .option('--image <file>', 'raw image to serve (config source.image)')
    .option('--export <name>', "export name; default: the image's base name (config source.export)")
    .option('--listen <host:port>', 'ferry wire address; default 127.0.0.1:10810 (config source.listen)')
    .option('--nbd-listen <host:port>', 'also serve the image over NBD to the local VM (config source.nbd_listen)')
    .option('--codec <name>', 'auto | lz4 | lz4-wasm | deflate | none; default auto (config source.codec)')
    .option('--workers <n>', 'encoding worker threads; default one per core (config source.workers)');
  addAuthOptions(command, 'source')
    .option('--config <file>', 'TOML configuration file; flags override it')
    .option('--log-level <level>', 'fatal|error|warn|info|debug|trace|silent (config log.level)')
    .action(async (flags: SourceFlags) => {
      const config = loadConfig(flags.config, {
        'source.image': flags.image,
        'source.export': flags.export,
        'source.listen': flags.listen,
        'source.nbd_listen': flags.nbdListen,
        'source.codec': flags.codec,
        'source.workers': flags.workers === undefined ? undefined : Number(flags.workers),
        ...authOverrides('source', flags),
        'log.level': flags.logLevel,
      });
      const s = config.source;
      if (!s.image) throw new Error('source: --image (or source.image in the config) is required');
      const auth = loadAuth(
        { pskFile: s.psk_file, cert: s.cert, key: s.key, ca: s.ca, insecure: s.insecure },
        'source',
      );
      const log = createLogger(config.log.level);
      warnIfNoFileOps(log);
      if (auth.kind === 'insecure')
        log.warn('ferry wire without TLS (--insecure): anyone on the path can read the disk or pose as either end');
      // The VM may still run here (pre-copy, or the paper's source-side setup), so the image stays writable when served over NBD.
      const device = FileDevice.open(s.image, { readOnly: !s.nbd_listen });
      const identity = imageIdentity(s.image);
      const workers = s.workers || Math.max(1, os.availableParallelism());
      const pool = new CodecPool({ workers, codec: s.codec === 'auto' ? 'lz4' : s.codec, level: s.deflate_level });
      const chooser = new CodecChooser(s.codec, ['none', 'lz4', 'deflate'], workers);
      const name = s.export ?? path.basename(s.image);
      const wire = new WireSourceServer({
        device,
        exportName: name,
        identity,
        auth,
        pool,
        chooser,
        log: log.child({ component: 'wire' }),
      });
      const hp = parseHostPort(s.listen);
      const address = await wire.listen(hp.host, hp.port);
      let nbd: NbdServer | null = null;
      let nbdAddress: string | undefined;
      if (s.nbd_listen) {
        nbd = new NbdServer(new StaticExportTable([{ name, description: '', device }]), log, nbdLimits(config));
        nbdAddress = await nbd.listen(parseHostPort(s.nbd_listen));
      }
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
        },
        'serving',
      );
      await runUntilSignal(log, async () => {
        await nbd?.close();
        await wire.close();
        await pool.close();
        if (!device.readOnly) await device.flush();
        await device.close();
      });
    });
}
