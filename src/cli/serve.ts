/** `ferry serve`: a raw image over NBD. */
import path from 'node:path';
import type { Command } from 'commander';
import { UsageError } from './usage-error';
import { loadConfig } from '../config/load';
import { createLogger } from '../log';
import { NbdServer, StaticExportTable } from '../nbd/server';
import { FileDevice } from '../store/file-device';
import { warnIfNoFileOps } from '../store/fileops';
import { lockImage } from '../store/image-lock';
import { listenAddress, nbdLimits, runUntilSignal } from './process';

interface ServeFlags {
  image?: string;
  export?: string;
  listen?: string;
  socket?: string;
  readOnly?: boolean;
  config?: string;
  logLevel?: string;
  logFile?: string;
}

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('serve a raw image file or block device over NBD (fixed newstyle)')
    .option('--image <file>', 'raw image file or block device to serve (config serve.image)')
    .option('--export <name>', "export name; default: the image's base name (config serve.export)")
    .option('--listen <host:port>', 'TCP address to listen on; default 127.0.0.1:10809 (config serve.listen)')
    .option('--socket <path>', 'listen on this Unix socket instead of TCP (config serve.socket)')
    .option('--read-only', 'refuse writes, trims and zeroes (config serve.read_only)')
    .option('--config <file>', 'TOML configuration file; flags override it')
    .option('--log-level <level>', 'fatal|error|warn|info|debug|trace|silent (config log.level)')
    .option('--log-file <path>', 'append JSON log lines to this file instead of stderr (config log.file)')
    .action(async (flags: ServeFlags) => {
      const config = loadConfig(flags.config, {
        'serve.image': flags.image,
        'serve.export': flags.export,
        'serve.listen': flags.listen,
        'serve.socket': flags.socket,
        'serve.read_only': flags.readOnly,
        'log.level': flags.logLevel,
        'log.file': flags.logFile,
      });
      const image = config.serve.image;
      if (!image) throw new UsageError('serve: --image (or serve.image in the config) is required');
      const log = createLogger(config.log);
      warnIfNoFileOps(log);
      const unlock = lockImage(image, config.serve.read_only ? 'shared' : 'exclusive');
      const device = FileDevice.open(image, { readOnly: config.serve.read_only });
      const name = config.serve.export ?? path.basename(image);
      const exports = new StaticExportTable([{ name, description: config.serve.description, device }]);
      const server = new NbdServer(exports, log, nbdLimits(config));
      const address = await server.listen(listenAddress(config.serve));
      log.info({ address, export: name, image, size: device.size, readOnly: device.readOnly }, 'serving');
      await runUntilSignal(log, async () => {
        await server.close();
        if (!device.readOnly) await device.flush();
        await device.close();
        unlock();
      });
    });
}
