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
  t.equal(r.code, 1, 'a runtime failure exits 1');
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
  t.equal(r.code, 1);
  t.match(r.stderr, /refused export "nosuch": unknown export/);
});

t.test('resuming against a source of a different size or export name is refused', async (t) => {
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
  t.equal(r.code, 1);
  t.match(r.stderr, /is not the image this destination was copying: size 3145728 \(recorded 2097152\)/);
  await sb.stop();

  // Same size, another export name: a plain NBD source is recorded by its export name and size
  // (not its content, which its VM may change before cutover).
  await startFerry(t, ['serve', '--image', a, '--export', 'other', '--listen', `127.0.0.1:${port}`]);
  const r2 = await ferry([
    'dest',
    '--source',
    `nbd://127.0.0.1:${port}/other`,
    '--image',
    image,
    '--listen',
    '127.0.0.1:0',
  ]);
  t.equal(r2.code, 1);
  t.match(r2.stderr, /identity nbd-export:\w+ \(recorded nbd-export:\w+\)/);
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
  t.equal(r.code, 1, 'a runtime failure exits 1');
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
  // The fetched bytes answer the read even though the image cannot take them.
  const missing = await vm.read(15 << 20, 4096);
  t.ok(missing.equals(source.subarray(15 << 20, (15 << 20) + 4096)), 'a read of a missing block succeeds');
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

t.test('a start that cannot listen names the address and leaves no image or state behind', async (t) => {
  const dir = tempDir(t);
  const src = path.join(dir, 'src.img');
  fs.writeFileSync(src, crypto.randomBytes(1 << 20));
  const s = await startFerry(t, ['serve', '--image', src, '--export', 'disk', '--listen', '127.0.0.1:0']);
  const url = `nbd://127.0.0.1:${servingPort(s)}/disk`;
  const busy = servingPort(s); // a port something already listens on
  const image = path.join(dir, 'dest.img');
  const cases: Array<[string, string[], RegExp]> = [
    [
      'NBD port in use',
      ['--listen', `127.0.0.1:${busy}`],
      new RegExp(`NBD server: cannot listen on 127\\.0\\.0\\.1:${busy}: the address is in use`),
    ],
    [
      'metrics port in use',
      ['--listen', '127.0.0.1:0', '--metrics', `127.0.0.1:${busy}`],
      new RegExp(`metrics: cannot listen on 127\\.0\\.0\\.1:${busy}: the address is in use`),
    ],
    [
      'control socket directory missing',
      ['--listen', '127.0.0.1:0', '--control', path.join(dir, 'no', 'such', 'ctl.sock')],
      new RegExp(`control socket: cannot listen on .*ctl\\.sock: directory ${dir}/no/such does not exist`),
    ],
  ];
  for (const [what, args, message] of cases) {
    const r = await ferry(['dest', '--source', url, '--image', image, ...args]);
    t.equal(r.code, 1, `${what}: exit 1`);
    t.match(r.stderr, message, what);
    t.notOk(fs.existsSync(image), `${what}: no image left behind`);
    t.notOk(fs.existsSync(`${image}.ferry-state`), `${what}: no state left behind`);
    t.notOk(fs.existsSync(`${image}.ferry-ctl`), `${what}: no control socket left behind`);
  }
});

t.test('a failed start of a resumed migration keeps its image and state', async (t) => {
  const dir = tempDir(t);
  const src = path.join(dir, 'src.img');
  fs.writeFileSync(src, crypto.randomBytes(1 << 20));
  const s = await startFerry(t, ['serve', '--image', src, '--export', 'disk', '--listen', '127.0.0.1:0']);
  const image = path.join(dir, 'dest.img');
  const args = ['dest', '--source', `nbd://127.0.0.1:${servingPort(s)}/disk`, '--image', image];
  const d = await startFerry(t, [...args, '--listen', '127.0.0.1:0', '--rate', '64k']);
  t.equal(await d.stop(), 0);
  const state = fs.readFileSync(`${image}.ferry-state`);
  const r = await ferry([...args, '--listen', `127.0.0.1:${servingPort(s)}`]);
  t.equal(r.code, 1);
  t.match(r.stderr, /NBD server: cannot listen on 127\.0\.0\.1:\d+: the address is in use/);
  t.ok(fs.existsSync(image), 'the image stays');
  t.ok(fs.readFileSync(`${image}.ferry-state`).equals(state), 'the state stays as it was');
});
