/** Bad input to `ferry dest`: each gives a clear message and loses nothing. */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { freePort, servingPort, startFerry } from './helpers/ferry-daemon';
import { tempDir } from './helpers/temp-dir';
import { run } from './helpers/run';
import { NbdClient, NbdError } from '../src/nbd/client';
import { BlockMap } from '../src/store/block-map';

const FERRY = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');
const ferry = (args: string[]) => run(process.execPath, [FERRY, ...args], { timeoutMs: 30_000 });

t.test('a malformed or unsupported source URL', async (t) => {
  const dir = tempDir(t);
  for (const [url, message] of [
    ['not a url', /unsupported source URL "not a url"/],
    ['http://example.invalid/x', /unsupported source URL/],
  ] as const) {
    const r = await ferry(['dest', '--cutover-at-start', '--source', url, '--image', path.join(dir, 'x.img')]);
    t.equal(r.code, 2, `exit 2 for ${url}`);
    t.match(r.stderr, message);
  }
  t.notOk(fs.existsSync(path.join(dir, 'x.img')), 'no image created');
});

t.test('an unreachable source', async (t) => {
  const dir = tempDir(t);
  const port = await freePort();
  const r = await ferry([
    'dest',
    '--cutover-at-start',
    '--source',
    `nbd://127.0.0.1:${port}/x`,
    '--image',
    path.join(dir, 'x.img'),
  ]);
  t.equal(r.code, 2);
  t.match(r.stderr, /cannot connect to NBD server at 127\.0\.0\.1:\d+: connect ECONNREFUSED/);
  t.notOk(fs.existsSync(path.join(dir, 'x.img')), 'no image created');
});

t.test('an unknown export on the source', async (t) => {
  const dir = tempDir(t);
  const src = path.join(dir, 'src.img');
  fs.writeFileSync(src, Buffer.alloc(1 << 20));
  const s = await startFerry(t, ['serve', '--image', src, '--listen', '127.0.0.1:0']);
  const r = await ferry([
    'dest',
    '--cutover-at-start',
    '--source',
    `nbd://127.0.0.1:${servingPort(s)}/nosuch`,
    '--image',
    path.join(dir, 'x.img'),
  ]);
  t.equal(r.code, 2);
  t.match(r.stderr, /refused export "nosuch": unknown export/);
});

t.test('resuming against a source of a different size or content is refused', async (t) => {
  const dir = tempDir(t);
  const a = path.join(dir, 'a.img');
  fs.writeFileSync(a, crypto.randomBytes(2 << 20));
  const port = await freePort();
  const sa = await startFerry(t, ['serve', '--image', a, '--export', 'disk', '--listen', `127.0.0.1:${port}`]);
  const image = path.join(dir, 'dest.img');
  const d = await startFerry(t, [
    'dest',
    '--cutover-at-start',
    '--source',
    `nbd://127.0.0.1:${port}/disk`,
    '--image',
    image,
    '--rate',
    '64k',
    '--listen',
    '127.0.0.1:0',
  ]);
  t.equal(await d.stop(), 0);
  await sa.stop();
  const before = fs.readFileSync(`${image}.ferry-state`);

  const b = path.join(dir, 'b.img');
  fs.writeFileSync(b, crypto.randomBytes(3 << 20));
  const sb = await startFerry(t, ['serve', '--image', b, '--export', 'disk', '--listen', `127.0.0.1:${port}`]);
  const r = await ferry(['dest', '--image', image, '--listen', '127.0.0.1:0']);
  t.equal(r.code, 2);
  t.match(r.stderr, /is not the image this destination was copying: size 3145728 \(recorded 2097152\)/);
  await sb.stop();

  const c = path.join(dir, 'c.img');
  fs.writeFileSync(c, crypto.randomBytes(2 << 20)); // same size, other content
  await startFerry(t, ['serve', '--image', c, '--export', 'disk', '--listen', `127.0.0.1:${port}`]);
  const r2 = await ferry(['dest', '--image', image, '--listen', '127.0.0.1:0']);
  t.equal(r2.code, 2);
  t.match(r2.stderr, /identity nbd-sha256:\w+ \(recorded nbd-sha256:\w+\)/);
  t.ok(fs.readFileSync(`${image}.ferry-state`).equals(before), 'the state is untouched');
});

t.test('an existing image without state is not overwritten', async (t) => {
  const dir = tempDir(t);
  const src = path.join(dir, 'src.img');
  fs.writeFileSync(src, Buffer.alloc(1 << 20));
  const s = await startFerry(t, ['serve', '--image', src, '--listen', '127.0.0.1:0']);
  const image = path.join(dir, 'mine.img');
  fs.writeFileSync(image, 'precious');
  const r = await ferry([
    'dest',
    '--cutover-at-start',
    '--source',
    `nbd://127.0.0.1:${servingPort(s)}/`,
    '--image',
    image,
  ]);
  t.equal(r.code, 2);
  t.match(r.stderr, /exists but has no migration state/);
  t.equal(fs.readFileSync(image, 'utf8'), 'precious');
});

t.test('a full local disk: ENOSPC to the VM, the state stays consistent', async (t) => {
  const dir = tempDir(t);
  const mnt = path.join(dir, 'small');
  fs.mkdirSync(mnt);
  const mounted =
    process.getuid?.() === 0 && spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', mnt]).status === 0;
  if (!mounted) {
    t.plan(0, 'skipped: needs root to mount a small tmpfs');
    return;
  }
  t.teardown(() => void spawnSync('umount', ['-l', mnt]));
  const src = path.join(dir, 'src.img');
  const source = crypto.randomBytes(16 << 20);
  fs.writeFileSync(src, source);
  const s = await startFerry(t, ['serve', '--image', src, '--read-only', '--listen', '127.0.0.1:0']);
  const image = path.join(mnt, 'dest.img');
  const state = path.join(dir, 'dest.state'); // the state lives where there is room
  const d = await startFerry(t, [
    ...['dest', '--cutover-at-start', '--source', `nbd://127.0.0.1:${servingPort(s)}/src.img`],
    ...['--image', image, '--state', state, '--listen', '127.0.0.1:0'],
  ]);
  await d.waitForLog('cannot store fetched blocks', 30_000);
  const vm = await NbdClient.connect({ host: '127.0.0.1', port: servingPort(d) }, { exportName: 'dest.img' });
  const err = await vm.write(12 << 20, crypto.randomBytes(1 << 20)).then(
    () => null,
    (e: NbdError) => e,
  );
  t.equal(err?.errno, 28, 'the VM gets ENOSPC for a write that does not fit');
  const readErr = await vm.read(15 << 20, 4096).then(
    () => null,
    (e: NbdError) => e,
  );
  t.ok(
    readErr === null || readErr.errno === 28 || readErr.errno === 5,
    'a read needing a fetch fails cleanly or succeeds',
  );
  const held = await vm.read(0, 4096).catch(() => null);
  t.ok(held === null || held.equals(source.subarray(0, 4096)), 'what is served is right');
  await vm.close();
  t.equal(await d.stop(), 0, 'SIGTERM still exits 0');
  const map = BlockMap.open(state);
  const img = fs.readFileSync(image);
  let wrong = 0;
  for (let b = 0; b < map.blockCount; b++) {
    if (map.isHeld(b) && !img.subarray(b * 4096, (b + 1) * 4096).equals(source.subarray(b * 4096, (b + 1) * 4096)))
      wrong++;
  }
  t.ok(map.heldCount > 0 && map.heldCount < map.blockCount, `${map.heldCount} of ${map.blockCount} blocks held`);
  t.equal(wrong, 0, 'every block the state marks held has the right content');
  map.close();
});
