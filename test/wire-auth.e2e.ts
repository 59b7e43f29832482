/**
 * Authentication of the ferry wire: TLS 1.3 only with forward secrecy,
 * key files checked, mutual TLS pinned to a source name and to roles, and
 * the common mismatches explained in words.
 */
import t, { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { startFerry, servingPort } from './helpers/ferry-daemon';
import { tempDir } from './helpers/temp-dir';
import { run, RunResult } from './helpers/run';
import { makeCa, makeLeaf, opensslMissing } from './helpers/test-certs';
import { readPsk } from '../src/wire/auth';

const FERRY = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');

interface Setup {
  dir: string;
  image: string;
}

function setup(t: Test): Setup {
  const dir = tempDir(t, 'ferry-auth-');
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, Buffer.alloc(1 << 20, 7));
  return { dir, image };
}

async function keygen(dir: string, name: string): Promise<string> {
  const file = path.join(dir, name);
  const r = await run(process.execPath, [FERRY, 'keygen', '--psk', file]);
  if (r.code !== 0) throw new Error(r.stderr);
  return file;
}

async function source(t: Test, s: Setup, auth: string[]) {
  // The handshake deadline is not under test here: at its default (10 s) a starved process on a
  // loaded machine once turned the explanation into a bare disconnect.
  const config = path.join(s.dir, 'source.toml');
  fs.writeFileSync(config, '[source]\nhandshake_timeout_ms = 60000\n');
  const src = await startFerry(t, [
    ...['source', '--image', s.image, '--listen', '127.0.0.1:0', '--workers', '1', '--config', config],
    ...auth,
  ]);
  return { src, url: `ferry://127.0.0.1:${servingPort(src)}/disk.img` };
}

/** A destination that is expected to fail to connect (it exits). */
function dest(s: Setup, url: string, auth: string[], image = 'dest.img'): Promise<RunResult> {
  return run(
    process.execPath,
    [FERRY, 'dest', '--source', url, '--image', path.join(s.dir, image), '--listen', '127.0.0.1:0', ...auth],
    { timeoutMs: 60_000 },
  );
}

t.test('pre-shared keys', async (t) => {
  const s = setup(t);
  const key = await keygen(s.dir, 'key');
  const other = await keygen(s.dir, 'other');
  const { src, url } = await source(t, s, ['--psk-file', key]);

  t.test('TLS 1.3 with an ephemeral key exchange; TLS 1.2 refused', async (t) => {
    const psk = readPsk(key).key;
    const port = servingPort(src);
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      pskCallback: () => ({ psk, identity: 'ferry' }),
      ciphers: 'TLS_AES_128_GCM_SHA256',
      checkServerIdentity: () => undefined,
    });
    await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
    t.equal(socket.getProtocol(), 'TLSv1.3');
    t.match(socket.getEphemeralKeyInfo(), { type: 'ECDH' }, 'the PSK is combined with (EC)DHE: forward secret');
    socket.destroy();
    const old = tls.connect({
      host: '127.0.0.1',
      port,
      pskCallback: () => ({ psk, identity: 'ferry' }),
      ciphers: 'PSK-AES256-GCM-SHA384:ECDHE-PSK-CHACHA20-POLY1305',
      maxVersion: 'TLSv1.2',
      checkServerIdentity: () => undefined,
    });
    const err = await new Promise<Error>((resolve) => {
      old.once('secureConnect', () => resolve(new Error('connected')));
      old.once('error', resolve);
    });
    old.destroy();
    t.not(err.message, 'connected', `a TLS 1.2 client is refused (${err.message})`);
  });

  t.test('a wrong key is explained', async (t) => {
    const r = await dest(s, url, ['--psk-file', other]);
    t.equal(r.code, 1);
    t.match(
      r.stderr,
      /TLS handshake failed: the source refused the pre-shared key .*other \(both ends need the same key file\)/,
    );
    await src.waitForLog('refused a connection that failed authentication');
  });

  t.test('an insecure destination against a TLS source is explained', async (t) => {
    const r = await dest(s, url, ['--insecure'], 'insecure.img');
    t.not(r.code, 0);
    t.match(r.stderr, /the source did not answer in plain TCP: it probably requires TLS/);
    t.notMatch(r.stderr, /bad preamble\)?$/m);
  });

  t.test('key files: owner-only, long enough, not one byte repeated', async (t) => {
    const open = path.join(s.dir, 'open');
    fs.copyFileSync(key, open);
    fs.chmodSync(open, 0o644);
    const r = await dest(s, url, ['--psk-file', open], 'open.img');
    t.equal(r.code, 2);
    t.match(
      r.stderr,
      /pre-shared key .*open can be read by group or others \(mode 0644\): chmod 600 .*--allow-open-psk/,
    );
    t.throws(() => readPsk(open), /can be read by group or others/);
    t.same(readPsk(open, true).key, readPsk(key).key, '--allow-open-psk accepts it');
    t.equal(readPsk(open, true).openFile, true, '(and it is warned)');
    const zeros = path.join(s.dir, 'zeros');
    fs.writeFileSync(zeros, '00'.repeat(32) + '\n', { mode: 0o600 });
    t.throws(() => readPsk(zeros), /is one byte value \(0x00\) repeated: that is not a secret/);
    const short = path.join(s.dir, 'short');
    fs.writeFileSync(short, 'ab'.repeat(15) + '\n', { mode: 0o600 });
    t.throws(() => readPsk(short), /at least 64 hex digits/);
  });

  t.test('--allow-open-psk serves with a warning', async (t) => {
    const open = path.join(s.dir, 'open-served');
    fs.copyFileSync(key, open);
    fs.chmodSync(open, 0o640);
    const other = setup(t);
    const served = await source(t, other, ['--psk-file', open, '--allow-open-psk']);
    await served.src.waitForLog(/can be read by group or others \(accepted by --allow-open-psk\)/);
    await served.src.stop();
  });
});

t.test('a TLS destination against an insecure source is explained', async (t) => {
  const s = setup(t);
  const key = await keygen(s.dir, 'key');
  const { url } = await source(t, s, ['--insecure']);
  const r = await dest(s, url, ['--psk-file', key]);
  t.equal(r.code, 1);
  t.match(
    r.stderr,
    /the source does not speak TLS: it seems to run with --insecure while this destination uses a pre-shared key/,
  );
});

t.test('mutual TLS', { skip: opensslMissing() }, async (t) => {
  const s = setup(t);
  const ca = await makeCa(s.dir, 'ca');
  const rogueCa = await makeCa(s.dir, 'rogue-ca');
  const srcCert = await makeLeaf(s.dir, ca, 'source.example', 'serverAuth');
  const destCert = await makeLeaf(s.dir, ca, 'dest.example', 'clientAuth');
  const otherSource = await makeLeaf(s.dir, ca, 'other-source.example', 'serverAuth');
  const rogueDest = await makeLeaf(s.dir, rogueCa, 'dest.example', 'clientAuth');
  const asDest = (c: { cert: string; key: string }, caFile = ca.cert, peer = 'source.example') => [
    ...['--cert', c.cert, '--key', c.key, '--ca', caFile, '--peer-name', peer],
  ];
  const { src, url } = await source(t, s, ['--cert', srcCert.cert, '--key', srcCert.key, '--ca', ca.cert]);

  t.test('the right source and destination connect', async (t) => {
    const d = await startFerry(t, [
      ...['dest', '--source', url, '--image', path.join(s.dir, 'ok.img'), '--listen', '127.0.0.1:0'],
      ...asDest(destCert),
    ]);
    t.ok(servingPort(d) > 0, 'the destination serves');
    await d.stop();
  });

  t.test('another source name is refused by the destination', async (t) => {
    const r = await dest(s, url, asDest(destCert, ca.cert, 'other-source.example'), 'name.img');
    t.equal(r.code, 1);
    t.match(
      r.stderr,
      /the source's certificate names "source\.example", not other-source\.example: it is not the source this destination was given/,
    );
  });

  t.test('a source certificate is not accepted as a destination', async (t) => {
    const r = await dest(s, url, asDest(otherSource), 'role.img');
    t.equal(r.code, 1);
    t.match(r.stderr, /source refused: certificate "other-source\.example" is not a destination's/);
    await src.waitForLog('refusing destination');
  });

  t.test('a destination certificate from another CA is refused by the source', async (t) => {
    const r = await dest(s, url, asDest(rogueDest), 'rogue.img');
    t.equal(r.code, 1);
    t.match(r.stderr, /source refused: certificate "dest\.example" is not signed by the CA this source trusts/);
  });

  t.test('a source signed by another CA is refused by the destination', async (t) => {
    const r = await dest(s, url, asDest(destCert, rogueCa.cert), 'ca.img');
    t.equal(r.code, 1);
    t.match(r.stderr, /the source's certificate is not signed by the CA given with --ca/);
  });

  t.test('a PSK destination against a certificate source is explained', async (t) => {
    const key = await keygen(s.dir, 'key');
    const r = await dest(s, url, ['--psk-file', key], 'psk.img');
    t.equal(r.code, 1);
    t.match(r.stderr, /the source uses certificates \(--cert\/--key\/--ca\), not a pre-shared key/);
  });
});
