/**
 * Seeding: a destination with an older copy of the disk fetches only the
 * blocks that changed since, and ends with exactly the source's image.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { startFerry, servingPort, ctlStatus } from './helpers/ferry-daemon';
import { tempDir } from './helpers/temp-dir';
import { run } from './helpers/run';

const SIZE = 64 << 20;
const BS = 4096;
const FERRY_BIN = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');

t.test('a disk that differs from its seed in 10% of its blocks moves at most 12% of its bytes', async (t) => {
  const dir = tempDir(t, 'ferry-seed-');
  // Random (incompressible) content: compression cannot hide what is fetched.
  const seed = crypto.randomBytes(SIZE);
  const source = Buffer.from(seed);
  const blocks = SIZE / BS;
  const changed = new Set<number>();
  while (changed.size < blocks / 10) changed.add(crypto.randomInt(blocks));
  for (const b of changed) crypto.randomFillSync(source, b * BS, BS);
  fs.writeFileSync(path.join(dir, 'seed.img'), seed);
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
  const dest = await startFerry(t, [
    ...['dest', '--cutover-at-start', '--source', `ferry://127.0.0.1:${servingPort(src)}/disk.img`],
    ...['--image', path.join(dir, 'dest.img'), '--seed', path.join(dir, 'seed.img')],
    ...['--listen', '127.0.0.1:0', '--control', control, '--insecure'],
  ]);
  await dest.waitForLog('migration complete: every block held, source disconnected', 120_000);
  const s = await ctlStatus(control);
  t.equal(await dest.stop(), 0);
  t.ok(fs.readFileSync(path.join(dir, 'dest.img')).equals(source), 'the destination holds exactly the source image');
  t.equal(s.bytesSeeded, SIZE - changed.size * BS, 'every unchanged block came from the seed');
  t.equal(s.bytesFetched, changed.size * BS, 'only the changed blocks were fetched');
  const share = s.bytesOnWire / SIZE;
  t.ok(share <= 0.12, `${(share * 100).toFixed(1)}% of the image's bytes crossed the wire (${s.bytesOnWire} bytes)`);
});

t.test('--seed with a plain NBD source is a usage error', async (t) => {
  const dir = tempDir(t, 'ferry-seed-');
  fs.writeFileSync(path.join(dir, 'seed.img'), Buffer.alloc(BS));
  const r = await run(process.execPath, [
    FERRY_BIN,
    ...['dest', '--source', 'nbd://127.0.0.1:1/disk', '--image', path.join(dir, 'dest.img')],
    ...['--seed', path.join(dir, 'seed.img')],
  ]);
  t.equal(r.code, 2);
  t.match(r.stderr, /--seed \(dest\.seed\) needs a ferry source/);
  t.notOk(fs.existsSync(path.join(dir, 'dest.img')), 'nothing was created');
});
