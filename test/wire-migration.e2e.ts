/**
 * ferry source → ferry dest over the ferry wire, across an emulated slow
 * link: correctness with a VM writing, bytes spared by zero blocks and
 * compression, corruption caught, wrong keys refused, restarts resumed.
 */
import t, { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { startFerry, servingPort, FerryDaemon, ctlStatus } from './helpers/ferry-daemon';
import { tempDir } from './helpers/temp-dir';
import { run } from './helpers/run';
import { CorruptingProxy } from './helpers/corrupting-proxy';
import { SlowLink } from '../src/link/slow-link';
import { NbdClient } from '../src/nbd/client';
import { fillDemoImage } from '../src/demo/demo-image';
import { until } from './helpers/until';

const FERRY = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');

const status = ctlStatus;

async function slowLink(t: Test, port: number, latencyMs = 5, mbit = 400): Promise<number> {
  const link = new SlowLink({
    listen: { host: '127.0.0.1', port: 0 },
    target: { host: '127.0.0.1', port },
    oneWayLatencyMs: latencyMs,
    bandwidthBitsPerSecond: mbit * 1_000_000,
  });
  const a = await link.start();
  t.teardown(() => link.close());
  return a.port;
}

interface Pair {
  dir: string;
  source: Buffer;
  sourceDaemon: FerryDaemon;
  dest: FerryDaemon;
  destImage: string;
  control: string;
}

async function migrate(
  t: Test,
  source: Buffer,
  opts: { auth?: string[]; link?: boolean; extraDest?: string[]; codec?: string } = {},
): Promise<Pair> {
  const dir = tempDir(t, 'ferry-wire-');
  const auth = opts.auth ?? ['--insecure'];
  const sourcePath = path.join(dir, 'disk.img');
  fs.writeFileSync(sourcePath, source);
  const sourceDaemon = await startFerry(t, [
    'source',
    '--image',
    sourcePath,
    '--listen',
    '127.0.0.1:0',
    '--codec',
    opts.codec ?? 'lz4',
    '--workers',
    '1',
    ...auth,
  ]);
  let port = servingPort(sourceDaemon);
  if (opts.link !== false) port = await slowLink(t, port);
  const destImage = path.join(dir, 'dest.img');
  const control = path.join(dir, 'ctl.sock');
  const dest = await startFerry(t, [
    ...['dest', '--cutover-at-start', '--source', `ferry://127.0.0.1:${port}/disk.img`, '--image', destImage],
    ...['--listen', '127.0.0.1:0', '--control', control, ...auth, ...(opts.extraDest ?? [])],
  ]);
  return { dir, source, sourceDaemon, dest, destImage, control };
}

t.test('a VM writes while the disk moves over the wire: the image is the source plus the writes', async (t) => {
  const source = Buffer.alloc(32 << 20);
  fillDemoImage(source, 5);
  const dir = tempDir(t, 'ferry-key-');
  const key = path.join(dir, 'key');
  t.equal((await run(process.execPath, [FERRY, 'keygen', '--psk', key])).code, 0);
  t.equal(fs.statSync(key).mode & 0o777, 0o600, 'the key file is private');
  const p = await migrate(t, source, { auth: ['--psk-file', key], extraDest: ['--rate', '8M'] });
  const vm = await NbdClient.connect({ host: '127.0.0.1', port: servingPort(p.dest) }, { exportName: 'dest.img' });
  const expected = Buffer.from(source);
  for (let i = 0; i < 200; i++) {
    const length = 1 + crypto.randomInt(20000);
    const offset = crypto.randomInt(source.length - length);
    if (i % 3 === 0) {
      const data = crypto.randomBytes(length);
      await vm.write(offset, data, i % 30 === 0);
      data.copy(expected, offset);
    } else {
      const got = await vm.read(offset, length);
      if (!got.equals(expected.subarray(offset, offset + length))) t.fail(`read ${offset}+${length} wrong`);
    }
  }
  await vm.flush();
  await vm.close();
  await p.dest.waitForLog('migration complete: every block held, source disconnected', 60_000);
  const s = await status(p.control);
  t.equal(s.state, 'complete');
  t.ok(s.onDemandFetches > 0, `${s.onDemandFetches} on-demand fetches`);
  t.ok(s.bytesOnWire < s.bytesBeforeEncoding, `compressed: ${s.bytesOnWire} on the wire for ${s.bytesBeforeEncoding}`);
  t.equal(s.checksumFailures, 0);
  t.equal(await p.dest.stop(), 0);
  t.ok(fs.readFileSync(p.destImage).equals(expected), 'final image equals the source plus the writes');
});

t.test('a mostly-zero image moves with wire bytes under 1% of its size', async (t) => {
  const source = Buffer.alloc(64 << 20);
  crypto.randomFillSync(source, 1 << 20, 64 << 10); // 0.1% data
  source.write('some text '.repeat(1000), 40 << 20);
  const p = await migrate(t, source);
  await p.dest.waitForLog('migration complete: every block held, source disconnected', 60_000);
  const s = await status(p.control);
  t.ok(
    s.bytesOnWire < source.length / 100,
    `${s.bytesOnWire} wire bytes for ${source.length} (${((100 * s.bytesOnWire) / source.length).toFixed(3)}%)`,
  );
  await p.dest.stop();
  t.ok(fs.readFileSync(p.destImage).equals(source));
});

t.test('repeated content moves as references; blocks the VM overwrote are fetched as bytes', async (t) => {
  const unit = 4 << 20;
  const source = Buffer.alloc(4 * unit);
  crypto.randomFillSync(source, 0, unit);
  for (let k = 1; k < 4; k++) source.copy(source, k * unit, 0, unit); // three repeats of the first 4 MiB
  const p = await migrate(t, source, { codec: 'none', extraDest: ['--rate', '3M'] });
  const vm = await NbdClient.connect({ host: '127.0.0.1', port: servingPort(p.dest) }, { exportName: 'dest.img' });
  const expected = Buffer.from(source);
  // Once the copy has passed the first 2 MiB, overwrite blocks there that later blocks repeat:
  // references to them must be refused and the repeats fetched as bytes.
  await until(async () => (await status(p.control)).blocksHeld >= 600, 'the copy has passed the first 2 MiB');
  for (let i = 0; i < 64; i++) {
    const offset = crypto.randomInt(unit / 2 / 4096) * 4096;
    const data = crypto.randomBytes(4096);
    await vm.write(offset, data);
    data.copy(expected, offset);
  }
  await vm.flush();
  await vm.close();
  await p.dest.waitForLog('migration complete: every block held, source disconnected', 60_000);
  const s = await status(p.control);
  t.ok(s.bytesOnWire < 2 * unit, `${s.bytesOnWire} wire bytes for ${source.length}: the repeats went as references`);
  t.ok(s.referencesUsed > 2000, `${s.referencesUsed} references used`);
  t.ok(s.referencesRefused > 0, `${s.referencesRefused} references to overwritten blocks refused`);
  t.equal(await p.dest.stop(), 0);
  t.ok(fs.readFileSync(p.destImage).equals(expected), 'final image equals the source plus the writes');
});

/** Real text: the JavaScript, TypeScript declarations and Markdown under node_modules, back to back. */
function textImage(size: number): Buffer {
  const image = Buffer.alloc(size);
  let at = 0;
  const walk = (dir: string): void => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      if (at >= size) return;
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (/\.(js|ts|md|json)$/.test(entry.name)) at += fs.readFileSync(full).copy(image, at);
    }
  };
  walk(path.resolve(__dirname, '..', '..', 'node_modules'));
  return image;
}

t.test('a text-heavy image moves with wire bytes under half of its size', async (t) => {
  const source = textImage(32 << 20);
  const p = await migrate(t, source);
  await p.dest.waitForLog('migration complete: every block held, source disconnected', 60_000);
  const s = await status(p.control);
  t.ok(
    s.bytesOnWire < source.length / 2,
    `${s.bytesOnWire} wire bytes for ${source.length} (${((100 * s.bytesOnWire) / source.length).toFixed(1)}%)`,
  );
  t.equal(s.codec, 'lz4');
  await p.dest.stop();
  t.ok(fs.readFileSync(p.destImage).equals(source));
});

t.test('a link that flips a bit in 1 frame in 100: correct image, every corruption counted', async (t) => {
  const source = Buffer.alloc(32 << 20);
  fillDemoImage(source, 11, { zero: 0.1, text: 0.3, records: 0.2, random: 0.4 });
  const dir = tempDir(t, 'ferry-flip-');
  fs.writeFileSync(path.join(dir, 'disk.img'), source);
  const src = await startFerry(t, [
    'source',
    '--image',
    path.join(dir, 'disk.img'),
    '--listen',
    '127.0.0.1:0',
    '--insecure',
    '--codec',
    'lz4',
  ]);
  const proxy = new CorruptingProxy({ host: '127.0.0.1', port: servingPort(src) }, 100);
  const port = await proxy.start();
  t.teardown(() => proxy.close());
  const control = path.join(dir, 'ctl.sock');
  const destImage = path.join(dir, 'dest.img');
  const config = path.join(dir, 'dest.toml');
  // Small frames: more of them to corrupt. A small window: few frames in flight behind a corrupt one
  // (they are dropped with its connection, unseen), so the count below stays exact enough to check.
  fs.writeFileSync(config, '[copy]\nbatch_blocks = 8\nwindow_bytes = 262144\n');
  const dest = await startFerry(t, [
    ...[
      'dest',
      '--cutover-at-start',
      '--source',
      `ferry://127.0.0.1:${port}/disk.img`,
      '--image',
      destImage,
      '--insecure',
    ],
    ...['--listen', '127.0.0.1:0', '--control', control, '--config', config],
  ]);
  try {
    await dest.waitForLog('migration complete: every block held, source disconnected', 120_000);
  } catch (e) {
    throw new Error(`${(e as Error).message}\nthe source's log:\n${src.stderr().slice(-6000)}`, { cause: e });
  }
  const s = await status(control);
  const counted = s.checksumFailures + s.corruptFrames;
  t.ok(proxy.flips >= 3, `${proxy.flips} bits flipped in ${proxy.frames} frames`);
  t.ok(
    counted >= 1 && counted <= proxy.flips,
    `${counted} corruptions counted (${s.checksumFailures} checksum, ${s.corruptFrames} frames)`,
  );
  // A corrupt frame drops its connection, and with it any frame in flight behind it: those were never seen.
  t.ok(proxy.flips - counted <= s.corruptFrames * 2, 'every flip that reached the destination was counted');
  await dest.stop();
  t.ok(fs.readFileSync(destImage).equals(source), 'final image equals the source');
});

t.test('a wrong key is refused with a reason on both sides', async (t) => {
  const dir = tempDir(t, 'ferry-keys-');
  const [a, b] = [path.join(dir, 'a'), path.join(dir, 'b')];
  await run(process.execPath, [FERRY, 'keygen', '--psk', a]);
  await run(process.execPath, [FERRY, 'keygen', '--psk', b]);
  fs.writeFileSync(path.join(dir, 'disk.img'), Buffer.alloc(1 << 20));
  const src = await startFerry(t, [
    'source',
    '--image',
    path.join(dir, 'disk.img'),
    '--listen',
    '127.0.0.1:0',
    '--psk-file',
    a,
  ]);
  const r = await run(process.execPath, [
    ...[FERRY, 'dest', '--cutover-at-start', '--source', `ferry://127.0.0.1:${servingPort(src)}/disk.img`],
    ...['--image', path.join(dir, 'dest.img'), '--psk-file', b],
  ]);
  t.equal(r.code, 1, 'a refused handshake is a runtime failure');
  t.match(
    r.stderr,
    /cannot connect to ferry source at 127\.0\.0\.1:\d+: TLS handshake failed: the source refused the pre-shared key/,
  );
  await src.waitForLog('refused a connection that failed authentication', 5000);
  const noAuth = await run(process.execPath, [FERRY, 'source', '--image', path.join(dir, 'disk.img')]);
  t.equal(noAuth.code, 2, 'no authentication chosen is a usage error');
  t.match(noAuth.stderr, /needs --psk-file FILE, or --cert\/--key\/--ca, or an explicit --insecure/);
  t.notOk(fs.existsSync(path.join(dir, 'dest.img')), 'nothing created');
});

t.test('a destination killed mid-migration resumes over the wire', async (t) => {
  // No zero blocks (the zero scan would hold them at once) and a capped rate: the copy is still
  // seconds from its end when the kill comes, however late a loaded machine delivers it.
  const source = crypto.randomBytes(32 << 20);
  const p = await migrate(t, source, { extraDest: ['--rate', '4M'] });
  let before = await status(p.control);
  await until(async () => (before = await status(p.control)).blocksHeld > 0, 'the copy has made progress');
  // Progress is persisted every second and at every flush: a VM's flush makes what is held so far
  // survive the kill, however early a loaded machine delivers it.
  const vm = await NbdClient.connect({ host: '127.0.0.1', port: servingPort(p.dest) }, { exportName: 'dest.img' });
  vm.on('error', () => undefined);
  await vm.flush();
  t.ok(before.blocksHeld > 0 && before.state === 'migrating', `${before.blocksHeld} blocks held before a flush`);
  await p.dest.stop('SIGKILL');
  vm.destroy();
  const args = ['dest', '--image', p.destImage, '--listen', '127.0.0.1:0', '--control', p.control, '--insecure'];
  const again = await startFerry(t, args);
  const resumed = await again.waitForLog('migration resumed', 10_000);
  t.ok(Number(resumed.held) > 0, `resumed with ${resumed.held} blocks held`);
  await again.waitForLog('migration complete: every block held, source disconnected', 60_000);
  const after = await status(p.control);
  t.ok(
    after.bytesBeforeEncoding < source.length,
    `fetched ${after.bytesBeforeEncoding} bytes after the restart, less than the image`,
  );
  await again.stop();
  t.ok(fs.readFileSync(p.destImage).equals(source));
});
