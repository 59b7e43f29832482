/** The `ferry` command: one subcommand per job. */
import { Command, CommanderError } from 'commander';
import { ConfigError } from '../config/load';
import { registerServe } from './serve';
import { registerDemo } from './demo';
import { registerDest } from './dest';
import { registerSource } from './source';
import { registerKeygen } from './keygen';
import { registerCtl } from './ctl';
import { EXIT_RUNTIME, EXIT_USAGE, UsageError } from './usage-error';
import { registerMigrateVm } from './migrate-vm';

export function main(argv: string[]): void {
  const program = new Command();
  program
    .name('ferry')
    .description('Live storage migration over WAN: serve a VM disk over NBD while it streams in from the source')
    .version(require('../../../package.json').version as string)
    .showHelpAfterError()
    .exitOverride();
  registerServe(program);
  registerDest(program);
  registerSource(program);
  registerKeygen(program);
  registerDemo(program);
  registerCtl(program);
  registerMigrateVm(program);
  // Exit codes: 0 success, 1 runtime failure, 2 usage (a bad flag, config key or value).
  program.parseAsync(argv).catch((err: unknown) => {
    // commander has printed its own message (or the help, or the version) already
    if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? 0 : EXIT_USAGE);
    const usage = err instanceof ConfigError || err instanceof UsageError;
    const message = err instanceof ConfigError ? err.message : `ferry: ${(err as Error).message}`;
    process.stderr.write(message + '\n');
    process.exit(usage ? EXIT_USAGE : EXIT_RUNTIME);
  });
}
