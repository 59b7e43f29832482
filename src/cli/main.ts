/** The `ferry` command: one subcommand per job. */
import { Command, CommanderError } from 'commander';

type Register = (program: Command) => void;

/**
 * Loaded on demand: each subcommand's module pulls in what it runs (zod,
 * prom-client, the pool...), and a short-lived `ferry ctl` should not pay
 * for the daemons' start-up.
 */
const SUBCOMMANDS: Record<string, () => Register> = {
  serve: () => require('./serve').registerServe,
  dest: () => require('./dest').registerDest,
  source: () => require('./source').registerSource,
  keygen: () => require('./keygen').registerKeygen,
  demo: () => require('./demo').registerDemo,
  ctl: () => require('./ctl').registerCtl,
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
  program.parseAsync(argv).catch((err: unknown) => {
    if (err instanceof CommanderError) process.exit(err.exitCode);
    // A ConfigError's message names the key and value already.
    const message = (err as Error).name === 'ConfigError' ? (err as Error).message : `ferry: ${(err as Error).message}`;
    process.stderr.write(message + '\n');
    process.exit(2);
  });
}
