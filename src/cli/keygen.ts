/** `ferry keygen`: key material for the ferry wire. */
import crypto from 'node:crypto';
import fs from 'node:fs';
import type { Command } from 'commander';

export function registerKeygen(program: Command): void {
  program
    .command('keygen')
    .description('create a pre-shared key for the ferry wire (copy the same file to source and destination)')
    .requiredOption('--psk <file>', 'where to write the key (mode 0600; never overwritten)')
    .action((flags: { psk: string }) => {
      const key = crypto.randomBytes(32).toString('hex');
      try {
        fs.writeFileSync(flags.psk, key + '\n', { flag: 'wx', mode: 0o600 });
      } catch (e) {
        const err = e as NodeJS.ErrnoException;
        if (err.code === 'EEXIST')
          throw new Error(`keygen: ${flags.psk} exists; refusing to overwrite a key`, { cause: e });
        throw new Error(`keygen: cannot write ${flags.psk}: ${err.message}`, { cause: e });
      }
      process.stdout.write(
        `wrote a 256-bit pre-shared key to ${flags.psk}; use --psk-file ${flags.psk} on both ends\n`,
      );
    });
}
