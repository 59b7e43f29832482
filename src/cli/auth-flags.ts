/** The ferry wire's authentication flags, shared by `source` and `dest`. */
import type { Command } from 'commander';

export interface AuthCliFlags {
  pskFile?: string;
  cert?: string;
  key?: string;
  ca?: string;
  insecure?: boolean;
  allowOpenPsk?: boolean;
  peerName?: string;
}

export function addAuthOptions(command: Command, section: 'source' | 'wire'): Command {
  command
    .option('--psk-file <file>', `pre-shared key (64 hex digits; ferry keygen --psk FILE) (config ${section}.psk_file)`)
    .option(
      '--allow-open-psk',
      `accept a key file group or others can read (warned) (config ${section}.allow_open_psk)`,
    )
    .option('--cert <file>', `PEM certificate for mutual TLS (config ${section}.cert)`)
    .option('--key <file>', `PEM private key for mutual TLS (config ${section}.key)`)
    .option('--ca <file>', `PEM CA that signed the peer's certificate (config ${section}.ca)`);
  if (section === 'wire')
    command.option(
      '--peer-name <name>',
      "name the source's certificate must carry (CN or subjectAltName); default: the host in --source (config wire.peer_name)",
    );
  return command.option('--insecure', `plain TCP without authentication or encryption (config ${section}.insecure)`);
}

export function authOverrides(section: 'source' | 'wire', flags: AuthCliFlags): Record<string, unknown> {
  return {
    [`${section}.psk_file`]: flags.pskFile,
    [`${section}.allow_open_psk`]: flags.allowOpenPsk,
    [`${section}.cert`]: flags.cert,
    [`${section}.key`]: flags.key,
    [`${section}.ca`]: flags.ca,
    [`${section}.insecure`]: flags.insecure,
    ...(section === 'wire' ? { 'wire.peer_name': flags.peerName } : {}),
  };
}
