/** A throwaway CA and leaf certificates made with the openssl command, for mutual-TLS tests. */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { runOk } from './run';

export interface CertFiles {
  cert: string;
  key: string;
}

/** Why certificate tests cannot run here, or false when openssl is available. */
export function opensslMissing(): string | false {
  const r = spawnSync('openssl', ['version']);
  return r.status === 0 ? false : `the openssl command is not available (${r.error?.message ?? `exit ${r.status}`})`;
}

export async function makeCa(dir: string, name: string): Promise<CertFiles> {
  const cert = path.join(dir, `${name}.crt`);
  const key = path.join(dir, `${name}.key`);
  await runOk('openssl', [
    ...['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'],
    ...['-keyout', key, '-out', cert, '-subj', `/CN=${name}`, '-days', '2'],
    ...['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
  ]);
  return { cert, key };
}

/** A leaf signed by `ca` for `name` (CN and DNS subjectAltName) with the given extendedKeyUsage, e.g. "serverAuth". */
export async function makeLeaf(dir: string, ca: CertFiles, name: string, eku: string): Promise<CertFiles> {
  const base = path.join(dir, `${name}-${eku.replace(/\W/g, '')}-${path.basename(ca.cert, '.crt')}`);
  const [cert, key, csr, ext] = ['.crt', '.key', '.csr', '.ext'].map((s) => base + s);
  fs.writeFileSync(
    ext,
    [
      'basicConstraints=CA:FALSE',
      'keyUsage=critical,digitalSignature',
      `subjectAltName=DNS:${name}`,
      eku ? `extendedKeyUsage=${eku}` : '',
    ].join('\n') + '\n',
  );
  await runOk('openssl', [
    ...['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'],
    ...['-keyout', key, '-out', csr, '-subj', `/CN=${name}`],
  ]);
  await runOk('openssl', [
    ...['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-set_serial', String(Date.now())],
    ...['-out', cert, '-days', '2', '-extfile', ext],
  ]);
  return { cert, key };
}
