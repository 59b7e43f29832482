/**
 * `ferry ctl` and the metrics endpoint against a real destination, the
 * source's --nbd-listen, and certificate authentication on the wire.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import http from 'node:http';
import crypto from 'node:crypto';
import { startFerry, servingPort, freePort, ferryCtl, ctlStatus } from './helpers/ferry-daemon';
import { tempDir } from './helpers/temp-dir';
import { run } from './helpers/run';
import { hasTool } from './helpers/tools';
import { NbdClient } from '../src/nbd/client';
import { until } from './helpers/until';

const FERRY = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');
const ctl = ferryCtl;
const status = ctlStatus;

function scrape(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve(body));
      })
      .on('error', reject);
  });
}

t.test('pause, resume, rate, detach and reconnect on a migrating destination', async (t) => {
  const dir = tempDir(t, 'ferry-ctl-');
  const source = crypto.randomBytes(16 << 20);
  fs.writeFileSync(path.join(dir, 'disk.img'), source);
  const src = await startFerry(t, [
    'source',
    '--image',
    path.join(dir, 'disk.img'),
    '--listen',
    '127.0.0.1:0',
    '--insecure',
  ]);
  const control = path.join(dir, 'ctl.sock');
  const metricsPort = await freePort();
  const dest = await startFerry(t, [
    ...[
      'dest',
      '--cutover-at-start',
      '--source',
      `ferry://127.0.0.1:${servingPort(src)}/disk.img`,
      '--image',
      path.join(dir, 'dest.img'),
    ],
    ...[
      '--insecure',
      '--listen',
      '127.0.0.1:0',
      '--control',
      control,
      '--rate',
      '1M',
      '--metrics',
      `127.0.0.1:${metricsPort}`,
    ],
  ]);
  t.equal((await ctl(control, 'pause')).code, 0);
  t.equal((await status(control)).state, 'paused');
  let paused = await status(control);
  await until(
    async () => (paused = await status(control)).backgroundInFlightBytes === 0,
    'the batches in flight at the pause have landed',
  );
  const last = (16 << 20) - 4096; // far beyond what the rate-limited copy reached
  const vm = await NbdClient.connect({ host: '127.0.0.1', port: servingPort(dest) }, { exportName: 'dest.img' });
  t.ok((await vm.read(last, 4096)).equals(source.subarray(last)), 'on-demand reads go on while paused');
  await vm.close();

  const early = await ctl(control, 'detach');
  t.equal(early.code, 1, 'detach before complete is refused');
  t.match(early.stderr + early.stdout, /cannot detach: \d+ of 4096 blocks are not held yet/);

  t.equal((await ctl(control, 'reconnect')).code, 0, 'reconnect');
  const stillPaused = await status(control);
  t.equal(stillPaused.connected, true);
  t.equal(stillPaused.state, 'paused', 'a reconnect does not resume the copy');
  const onDemand = stillPaused.onDemandFetches - paused.onDemandFetches;
  t.ok(onDemand >= 1, `the VM's read was fetched on demand (${onDemand} blocks)`);
  t.ok(
    stillPaused.blocksHeld - paused.blocksHeld <= onDemand,
    `no background progress while paused: ${stillPaused.blocksHeld - paused.blocksHeld} blocks arrived, all on demand`,
  );

  const metrics = await scrape(metricsPort);
  t.match(metrics, /ferry_blocks_total 4096/);
  t.match(metrics, /ferry_state\{state="paused"\} 1/);

  t.equal((await ctl(control, 'rate', 'off')).code, 0);
  t.equal((await ctl(control, 'resume')).code, 0);
  await dest.waitForLog('migration complete: every block held, source disconnected', 60_000);
  const done = await status(control);
  t.equal(done.state, 'complete');
  t.equal(done.rateLimitBytesPerSecond, null);
  t.equal((await ctl(control, 'detach')).code, 0, 'detach once complete');
  t.match(await scrape(metricsPort), /ferry_blocks_held 4096/);
  t.equal(await dest.stop(), 0);
  t.ok(fs.readFileSync(path.join(dir, 'dest.img')).equals(source));
});

t.test('ferry source --nbd-listen serves the VM on the source host', async (t) => {
  const dir = tempDir(t, 'ferry-srcnbd-');
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, Buffer.alloc(4 << 20));
  const nbdPort = await freePort();
  await startFerry(t, [
    'source',
    '--image',
    image,
    '--listen',
    '127.0.0.1:0',
    '--insecure',
    '--nbd-listen',
    `127.0.0.1:${nbdPort}`,
  ]);
  const vm = await NbdClient.connect({ host: '127.0.0.1', port: nbdPort }, { exportName: 'disk.img' });
  const data = crypto.randomBytes(10000);
  await vm.write(5000, data, true);
  t.ok((await vm.read(5000, 10000)).equals(data));
  await vm.close();
  t.ok(fs.readFileSync(image).subarray(5000, 15000).equals(data), 'the write reached the image');
});

t.test('mutual TLS with certificates; a certificate from another CA is refused', async (t) => {
  if (!hasTool('openssl')) {
    t.plan(0, 'skipped: openssl is not installed');
    return;
  }
  const dir = tempDir(t, 'ferry-cert-');
  const sh = (cmd: string) => run('sh', ['-c', cmd], { cwd: dir, timeoutMs: 30_000 });
  const mkCa = (name: string) =>
    sh(
      `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=${name} -keyout ${name}.key -out ${name}.pem`,
    );
  // The role is in extendedKeyUsage: a source serves (serverAuth), a destination connects (clientAuth).
  const mkCert = (name: string, ca: string, role: 'serverAuth' | 'clientAuth') =>
    sh(
      `printf 'extendedKeyUsage=${role}\\n' > ${name}.ext && ` +
        `openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=${name} -keyout ${name}.key -out ${name}.csr && ` +
        `openssl x509 -req -in ${name}.csr -CA ${ca}.pem -CAkey ${ca}.key -CAcreateserial -days 2 -extfile ${name}.ext -out ${name}.pem`,
    );
  for (const r of [
    await mkCa('ca'),
    await mkCa('otherca'),
    await mkCert('src', 'ca', 'serverAuth'),
    await mkCert('dst', 'ca', 'clientAuth'),
    await mkCert('evil', 'otherca', 'clientAuth'),
  ]) {
    t.equal(r.code, 0, r.stderr);
  }
  const source = crypto.randomBytes(1 << 20);
  fs.writeFileSync(path.join(dir, 'disk.img'), source);
  const src = await startFerry(t, [
    ...['source', '--image', path.join(dir, 'disk.img'), '--listen', '127.0.0.1:0'],
    ...['--cert', path.join(dir, 'src.pem'), '--key', path.join(dir, 'src.key'), '--ca', path.join(dir, 'ca.pem')],
  ]);
  const url = `ferry://127.0.0.1:${servingPort(src)}/disk.img`;
  const bad = await run(process.execPath, [
    ...[
      FERRY,
      'dest',
      '--cutover-at-start',
      '--source',
      url,
      '--peer-name',
      'src',
      '--image',
      path.join(dir, 'evil.img'),
    ],
    ...['--cert', path.join(dir, 'evil.pem'), '--key', path.join(dir, 'evil.key'), '--ca', path.join(dir, 'ca.pem')],
  ]);
  t.equal(bad.code, 1, 'a certificate from another CA is refused');
  t.match(bad.stderr, /certificate "evil" is not signed by the CA this source trusts/);
  const dest = await startFerry(t, [
    ...[
      'dest',
      '--cutover-at-start',
      '--source',
      url,
      '--image',
      path.join(dir, 'dest.img'),
      '--listen',
      '127.0.0.1:0',
      '--peer-name',
      'src',
    ],
    ...['--cert', path.join(dir, 'dst.pem'), '--key', path.join(dir, 'dst.key'), '--ca', path.join(dir, 'ca.pem')],
  ]);
  await dest.waitForLog('migration complete: every block held, source disconnected', 30_000);
  await dest.stop();
  t.ok(fs.readFileSync(path.join(dir, 'dest.img')).equals(source));
});
