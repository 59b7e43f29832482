/** Memory is bounded by the bitmap (32 MiB per TiB at 4 KiB blocks), not by the image. */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { startFerry, servingPort } from './helpers/ferry-daemon';
import { tempDir } from './helpers/temp-dir';
import { residentBytes } from './helpers/ferry-serve';
import { NbdClient } from '../src/nbd/client';

t.test('a 1 TiB migration runs in bounded memory', async (t) => {
  const dir = tempDir(t, 'ferry-tib-');
  const source = path.join(dir, 'big.img');
  fs.closeSync(fs.openSync(source, 'w'));
  fs.truncateSync(source, 2 ** 40); // sparse
  const src = await startFerry(t, ['serve', '--image', source, '--read-only', '--listen', '127.0.0.1:0']);
  const dest = await startFerry(t, [
    ...[
      'dest',
      '--cutover-at-start',
      '--source',
      `nbd://127.0.0.1:${servingPort(src)}/big.img`,
      '--image',
      path.join(dir, 'dest.img'),
    ],
    ...['--listen', '127.0.0.1:0'],
  ]);
  const vm = await NbdClient.connect({ host: '127.0.0.1', port: servingPort(dest) }, { exportName: 'dest.img' });
  t.equal(vm.size, 2 ** 40);
  let peak = 0;
  const started = Date.now();
  while (Date.now() - started < 4000) {
    // Reads all over the image while the background copy runs flat out.
    const offset = Math.floor(Math.random() * (2 ** 40 / 4096 - 16)) * 4096;
    t.ok((await vm.read(offset, 65536)).equals(Buffer.alloc(65536)), `read at ${offset}`);
    peak = Math.max(peak, residentBytes(dest.child.pid!));
  }
  await vm.close();
  t.ok(fs.statSync(path.join(dir, 'dest.img.ferry-state')).size <= 33 << 20, 'the state file is about 32 MiB');
  t.ok(peak < 200 << 20, `destination RSS peak ${(peak / 2 ** 20).toFixed(0)} MiB < 200 MiB`);
  t.equal(await dest.stop(), 0);
});
