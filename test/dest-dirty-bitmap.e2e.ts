/**
 * A destination migrating from qemu-nbd with a dirty bitmap: it copies while
 * the source VM runs, the VM then overwrites blocks already copied, and at
 * cutover the bitmap sends exactly those to be fetched again. The final
 * image is the source as last written.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';
import pino from 'pino';
import { Migration } from '../src/migrate/migration';
import { NbdUpstream, DEFAULT_NBD_UPSTREAM_OPTIONS } from '../src/upstream/nbd-upstream';
import { NbdClient } from '../src/nbd/client';
import { parseNbdUrl } from '../src/nbd/url';
import { requireTool } from './helpers/tools';
import { patternBytes, tempDir } from './helpers/temp-dir';
import { runOk } from './helpers/run';
import { startQemuNbd } from './helpers/qemu-nbd';

const log = pino({ level: 'silent' });
const SIZE = 16 << 20;
const BS = 4096;

t.test('blocks the source VM overwrote after they were copied are fetched again at cutover', async (t) => {
  if (!requireTool(t, 'qemu-img', 'qemu-nbd')) return;
  const dir = tempDir(t, 'ferry-dest-bitmap-');
  const raw = path.join(dir, 'source.raw');
  const model = patternBytes(SIZE, 21);
  fs.writeFileSync(raw, model);
  const qcow2 = path.join(dir, 'source.qcow2');
  await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
  await runOk('qemu-img', ['bitmap', '--add', '--enable', qcow2, 'mig0']);
  const nbd = await startQemuNbd(t, dir, qcow2, ['-f', 'qcow2', '-t', '-e', '4', '-B', 'mig0']);

  const image = path.join(dir, 'dest.img');
  const migration = await Migration.open(
    {
      imagePath: image,
      statePath: `${image}.ferry-state`,
      sourceUrl: nbd.url(),
      blockSize: BS,
      fetchTimeoutMs: 30_000,
      persistIntervalMs: 50,
      rateLimit: null,
      copy: { batchBlocks: 64, windowBytes: 4 << 20, storeErrorBackoffMs: 100 },
      openUpstream: (url) => NbdUpstream.open(url, log, { ...DEFAULT_NBD_UPSTREAM_OPTIONS, dirtyBitmap: 'mig0' }),
    },
    log,
  );
  t.teardown(() => migration.close());
  const device = migration.device;
  const copied = once(device, 'all-held');
  migration.start();
  await copied;
  t.equal(migration.phase, 'warming', 'every block copied while the source is still the authority');

  // The source VM writes through qemu-nbd: whole blocks, a partial one, a zero range, the last block.
  const vm = await NbdClient.connect(parseNbdUrl(nbd.url()).address);
  const writes: Array<{ offset: number; data: Buffer }> = [
    { offset: 0, data: Buffer.alloc(BS, 0x61) },
    { offset: 5 * BS + 100, data: Buffer.alloc(300, 0x62) },
    { offset: (1 << 20) - BS, data: Buffer.alloc(3 * BS, 0x63) },
    { offset: SIZE - BS, data: Buffer.alloc(BS, 0x64) },
  ];
  for (const w of writes) {
    await vm.write(w.offset, w.data);
    w.data.copy(model, w.offset);
  }
  await vm.zero(8 << 20, 256 << 10);
  model.fill(0, 8 << 20, (8 << 20) + (256 << 10));
  await vm.flush();
  await vm.close();

  const before = Buffer.alloc(BS);
  await device.read(0, before);
  t.ok(before.equals(model.subarray(0, BS)), 'before cutover a read passes through to the source');

  const refetched = once(device, 'all-held');
  await migration.cutover();
  t.not(migration.phase, 'warming', 'cut over');
  await refetched;
  // The bitmap's 64 KiB granules: one at 0 (two writes), two around 1 MiB, the last one, four zeroed.
  t.equal(migration.status().blocksInvalidated, 8 * (65536 / BS), 'exactly the dirty granules are fetched again');
  await migration.close();
  t.ok(fs.readFileSync(image).equals(model), 'the destination image is the source as last written');
});
