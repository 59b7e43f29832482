/** The `ferry` command: one subcommand per job. */
import { Command, CommanderError } from 'commander';
import { EXIT_RUNTIME, EXIT_USAGE, UsageError } from './usage-error';

type Register = (program: Command) => void;

/**
 * Loaded on demand: each subcommand's module pulls in what it runs (valibot,
 * prom-client, the pool...), and a short-lived `ferry ctl` should not pay
 * for the daemons' start-up.
 */
const SUBCOMMANDS: Record<string, () => Register> = {
  serve: () => require('./serve').registerServe,
  dest: () => require('./dest').registerDest,
  daemon: () => require('./daemon').registerDaemon,
  source: () => require('./source').registerSource,
  keygen: () => require('./keygen').registerKeygen,
  demo: () => require('./demo').registerDemo,
  ctl: () => require('./ctl').registerCtl,
  'migrate-vm': () => require('./migrate-vm').registerMigrateVm,
};

export function main(argv: string[]): void {
  const program = new Command();
  program
    .name('ferry')
    .description('Live storage migration over WAN: serve a VM disk over NBD while it streams in from the source')
    .version(require('../../../package.json').version as string)
    .showHelpAfterError()
    .exitOverride();
  const named = argv[2];
  const names = Object.prototype.hasOwnProperty.call(SUBCOMMANDS, named) ? [named] : Object.keys(SUBCOMMANDS);
  for (const name of names) SUBCOMMANDS[name]()(program);
  // Exit codes: 0 success, 1 runtime failure, 2 usage (a bad flag, config key or value).
  program.parseAsync(argv).catch((err: unknown) => {
    // commander has printed its own message (or the help, or the version) already
    if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? 0 : EXIT_USAGE);
    // Matched by name: the config loader (and valibot) load only with the commands that use them.
    const configError = (err as Error).name === 'ConfigError';
    const usage = configError || err instanceof UsageError;
    const message = configError ? (err as Error).message : `ferry: ${(err as Error).message}`;
    process.stderr.write(message + '\n');
    process.exit(usage ? EXIT_USAGE : EXIT_RUNTIME);
  });
}
