/** The ferry wire's authentication flags, shared by `source` and `dest`. */
import type { Command } from 'commander';

export interface AuthCliFlags {
  pskFile?: string;
  cert?: string;
  key?: string;
  ca?: string;
  insecure?: boolean;
}

export function addAuthOptions(command: Command, section: string): Command {
  return command
    .option('--psk-file <file>', `pre-shared key (64 hex digits; ferry keygen --psk FILE) (config ${section}.psk_file)`)
    .option('--cert <file>', `PEM certificate for mutual TLS (config ${section}.cert)`)
    .option('--key <file>', `PEM private key for mutual TLS (config ${section}.key)`)
    .option('--ca <file>', `PEM CA that signed the peer's certificate (config ${section}.ca)`)
    .option('--insecure', `plain TCP without authentication or encryption (config ${section}.insecure)`);
}

export function authOverrides(section: string, flags: AuthCliFlags): Record<string, unknown> {
  return {
    [`${section}.psk_file`]: flags.pskFile,
    [`${section}.cert`]: flags.cert,
    [`${section}.key`]: flags.key,
    [`${section}.ca`]: flags.ca,
    [`${section}.insecure`]: flags.insecure,
  };
}
