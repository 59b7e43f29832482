/**
 * One image, one owner, across processes: a second `ferry dest` (or a
 * `ferry serve`) on an image a destination holds is refused naming its pid,
 * the holder keeps serving with its flushed writes intact, and a holder
 * killed with -9 does not block the restart.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { startFerry, servingPort } from './helpers/ferry-daemon';
import { tempDir } from './helpers/temp-dir';
import { run } from './helpers/run';
import { NbdClient } from '../src/nbd/client';

const FERRY = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');
const SIZE = 4 << 20;

t.test('a destination owns its image', async (t) => {
  const dir = tempDir(t);
  const sourcePath = path.join(dir, 'source.img');
  fs.writeFileSync(sourcePath, crypto.randomBytes(SIZE));
  const src = await startFerry(t, ['serve', '--image', sourcePath, '--read-only', '--listen', '127.0.0.1:0']);
  const image = path.join(dir, 'dest.img');
  const destArgs = [
    'dest',
    '--source',
    `nbd://127.0.0.1:${servingPort(src)}/source.img`,
    '--image',
    image,
    '--listen',
    '127.0.0.1:0',
    '--rate',
    '64k', // the migration is still running while the others try
  ];

  const first = await startFerry(t, destArgs);
  const pid = first.child.pid!;
  const client = await NbdClient.connect({ host: '127.0.0.1', port: servingPort(first) }, { exportName: 'dest.img' });
  const data = crypto.randomBytes(64 * 1024);
  await client.write(1 << 20, data, false);
  await client.flush();

  const second = await run(process.execPath, [FERRY, ...destArgs], { timeoutMs: 30_000 });
  t.not(second.code, 0, 'a second destination on the image exits non-zero');
  t.match(second.stderr, new RegExp(`dest\\.img is in use by pid ${pid}\\b`), 'and names the holder');

  const serve = await run(process.execPath, [FERRY, 'serve', '--image', image, '--listen', '127.0.0.1:0'], {
    timeoutMs: 30_000,
  });
  t.not(serve.code, 0, 'a writable serve of the image is refused');
  t.match(serve.stderr, new RegExp(`in use by pid ${pid}\\b`));
  const serveRo = await run(
    process.execPath,
    [FERRY, 'serve', '--image', image, '--read-only', '--listen', '127.0.0.1:0'],
    { timeoutMs: 30_000 },
  );
  t.not(serveRo.code, 0, 'a read-only serve too: the destination writes it');
  t.match(serveRo.stderr, new RegExp(`in use by pid ${pid}\\b`));

  t.same(await client.read(1 << 20, data.length), data, 'the holder still serves its flushed write');
  t.equal(first.child.exitCode, null, 'and is still running');
  await client.close();

  first.child.kill('SIGKILL');
  await first.exited;
  const restarted = await startFerry(t, destArgs);
  const again = await NbdClient.connect(
    { host: '127.0.0.1', port: servingPort(restarted) },
    { exportName: 'dest.img' },
  );
  t.same(await again.read(1 << 20, data.length), data, 'after kill -9 the restart owns the image and the write');
  await again.close();
  await restarted.stop();
});

t.test('a destination cannot take an image a writable serve holds', async (t) => {
  const dir = tempDir(t);
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, Buffer.alloc(SIZE));
  fs.writeFileSync(`${image}.ferry-state`, 'not used'); // it would resume: the lock comes first
  const serve = await startFerry(t, ['serve', '--image', image, '--listen', '127.0.0.1:0']);
  const dest = await run(
    process.execPath,
    [FERRY, 'dest', '--image', image, '--source', 'nbd://127.0.0.1:1/x', '--listen', '127.0.0.1:0'],
    { timeoutMs: 30_000 },
  );
  t.not(dest.code, 0);
  t.match(dest.stderr, new RegExp(`disk\\.img is in use by pid ${serve.child.pid}\\b`));
  t.equal(fs.readFileSync(`${image}.ferry-state`, 'utf8'), 'not used', 'its state untouched');
  await serve.stop();
});

t.test('read-only servers share an image', async (t) => {
  const dir = tempDir(t);
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, Buffer.alloc(SIZE));
  const a = await startFerry(t, ['serve', '--image', image, '--read-only', '--listen', '127.0.0.1:0']);
  const b = await startFerry(t, ['serve', '--image', image, '--read-only', '--listen', '127.0.0.1:0']);
  t.ok(servingPort(a) && servingPort(b), 'both serve');
  await Promise.all([a.stop(), b.stop()]);
});
