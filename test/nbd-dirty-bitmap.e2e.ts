/**
 * A plain NBD source with a QEMU dirty bitmap: qemu-nbd exports a qcow2
 * whose persistent bitmap is enabled, so it records the writes made through
 * that same qemu-nbd while it runs; qemu-storage-daemon exports a bitmap
 * added over QMP while another export of the same disk takes the writes.
 * cutover() returns exactly the ranges written.
 */
import t from 'tap';
import path from 'node:path';
import pino from 'pino';
import { NbdUpstream, DEFAULT_NBD_UPSTREAM_OPTIONS } from '../src/upstream/nbd-upstream';
import { requireTool } from './helpers/tools';
import { tempDir } from './helpers/temp-dir';
import { run, runOk } from './helpers/run';
import { startQemuNbd } from './helpers/qemu-nbd';
import { startStorageDaemon } from './helpers/qemu-storage-daemon';
import { NbdClient } from '../src/nbd/client';
import { parseNbdUrl } from '../src/nbd/url';
import fs from 'node:fs';
import type { ByteRange } from '../src/upstream/upstream';

const log = pino({ level: 'silent' });
const GiB = 1 << 30;
const MiB = 1 << 20;
/** Larger than one block-status request (1 GiB), so cutover() reads the bitmap in several. */
const SIZE = 3 * GiB;

async function qcow2WithBitmap(dir: string, bitmap: string): Promise<{ image: string; granularity: number }> {
  const image = path.join(dir, 'source.qcow2');
  await runOk('qemu-img', ['create', '-f', 'qcow2', image, String(SIZE)]);
  // Written before the bitmap exists: not dirty.
  await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 1M', '-c', `write -P 0x12 ${2 * GiB} 1M`, image]);
  await runOk('qemu-img', ['bitmap', '--add', '--enable', image, bitmap]);
  const info = JSON.parse(await runOk('qemu-img', ['info', '--output=json', image])) as {
    'format-specific': { data: { bitmaps: Array<{ name: string; granularity: number }> } };
  };
  const granularity = info['format-specific'].data.bitmaps.find((b) => b.name === bitmap)!.granularity;
  return { image, granularity };
}

/** The ranges a bitmap of `granularity` marks for these writes, merged where they touch. */
function granules(writes: ByteRange[], granularity: number): ByteRange[] {
  const dirty = new Set<number>();
  for (const w of writes) {
    for (let g = Math.floor(w.offset / granularity); g * granularity < w.offset + w.length; g++) dirty.add(g);
  }
  const out: ByteRange[] = [];
  for (const g of [...dirty].sort((a, b) => a - b)) {
    const last = out[out.length - 1];
    if (last && last.offset + last.length === g * granularity) last.length += granularity;
    else out.push({ offset: g * granularity, length: granularity });
  }
  return out;
}

t.test('writes made while qemu-nbd exports an enabled bitmap are the cutover set, and nothing else', async (t) => {
  if (!requireTool(t, 'qemu-img', 'qemu-nbd', 'qemu-io')) return;
  const dir = tempDir(t, 'ferry-bitmap-');
  const { image, granularity } = await qcow2WithBitmap(dir, 'mig0');
  // -e 4: ferry's two connections and a writer; the export is writable (QEMU refuses an enabled bitmap on a read-only one).
  const nbd = await startQemuNbd(t, dir, image, ['-f', 'qcow2', '-t', '-e', '4', '-B', 'mig0']);
  const upstream = await NbdUpstream.open(nbd.url(), log, { ...DEFAULT_NBD_UPSTREAM_OPTIONS, dirtyBitmap: 'mig0' });
  t.teardown(() => upstream.close());
  t.equal(upstream.tracking, 'bitmap');
  t.equal(upstream.size, SIZE);

  const before = await upstream.cutover();
  t.same(before.ranges, [], 'nothing written since the bitmap was added');

  const writes: ByteRange[] = [
    { offset: 4 * MiB, length: 64 << 10 },
    { offset: 10 * MiB + 4096, length: 4096 }, // inside one granule
    { offset: GiB - 32768, length: 65536 }, // across the first request boundary: one merged range
    { offset: 2 * GiB + 512 * 1024, length: 3 * MiB }, // over data written before the bitmap
    { offset: SIZE - 4096, length: 4096 }, // the last byte of the image
  ];
  const io = await run(
    'qemu-io',
    ['-f', 'raw', ...writes.flatMap((w, i) => ['-c', `write -P ${0x40 + i} ${w.offset} ${w.length}`]), nbd.url()],
    { timeoutMs: 60_000 },
  );
  t.equal(io.code, 0, `qemu-io wrote through the export: ${io.stderr}`);
  const zero = await run('qemu-io', ['-f', 'raw', '-c', `write -z ${20 * MiB} ${MiB}`, nbd.url()]);
  t.equal(zero.code, 0, 'a zero write through the export');
  writes.push({ offset: 20 * MiB, length: MiB });

  const expected = granules(writes, granularity);
  const report = await upstream.cutover();
  t.same(report.ranges, expected, `the dirty ranges at the bitmap's granularity (${granularity})`);
  report.ack();
  t.same((await upstream.cutover()).ranges, expected, 'asking again gives the same set');
  t.equal(
    report.ranges.find((r) => r.offset < GiB && r.offset + r.length > GiB)?.length,
    2 * granularity,
    'the write across a request boundary is one range',
  );
});

t.test('qemu-storage-daemon: a QMP bitmap records writes made through another export of the disk', async (t) => {
  if (!requireTool(t, 'qemu-storage-daemon')) return;
  const dir = tempDir(t, 'ferry-bitmap-');
  const image = path.join(dir, 'disk.raw');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, 256 * MiB);
  const qsd = await startStorageDaemon(t, dir, image);
  await qsd.qmp('block-dirty-bitmap-add', { node: 'disk0', name: 'mig0' });
  await t.rejects(
    qsd.qmp('block-export-add', { type: 'nbd', id: 'ro', 'node-name': 'disk0', name: 'ro', bitmaps: ['mig0'] }),
    /Enabled bitmap 'mig0' incompatible with readonly export/,
    'QEMU exports an enabled bitmap only on a writable export',
  );
  const ferryExport = { type: 'nbd', id: 'ferry', 'node-name': 'disk0', name: 'disk', writable: true };
  await qsd.qmp('block-export-add', { ...ferryExport, bitmaps: ['mig0'] });
  await qsd.qmp('block-export-add', { type: 'nbd', id: 'vm', 'node-name': 'disk0', name: 'vm', writable: true });
  const upstream = await NbdUpstream.open(qsd.url('disk'), log, {
    ...DEFAULT_NBD_UPSTREAM_OPTIONS,
    dirtyBitmap: 'mig0',
  });
  t.teardown(() => upstream.close());
  t.same((await upstream.cutover()).ranges, []);

  const vm = await NbdClient.connect(parseNbdUrl(qsd.url('vm')).address, { exportName: 'vm' });
  const writes: ByteRange[] = [
    { offset: 0, length: 4096 },
    { offset: 100 * MiB + 123 * 512, length: 200 * 1024 },
    { offset: 256 * MiB - 512, length: 512 },
  ];
  for (const w of writes) await vm.write(w.offset, Buffer.alloc(w.length, 0x5e));
  await vm.zero(50 * MiB, MiB); // (a trim would be ignored: the node has the default discard=ignore)
  writes.push({ offset: 50 * MiB, length: MiB });
  await vm.flush();
  await vm.close();
  const granularity = 65536; // block-dirty-bitmap-add's default for a raw file
  t.same(
    (await upstream.cutover()).ranges,
    granules(writes, granularity),
    'the writes and the zero write, nothing else',
  );
});

t.test('a source without the bitmap, or with it read-only, is refused with the reason', async (t) => {
  if (!requireTool(t, 'qemu-img', 'qemu-nbd', 'qemu-io')) return;
  const dir = tempDir(t, 'ferry-bitmap-');
  const { image } = await qcow2WithBitmap(dir, 'mig0');
  const nbd = await startQemuNbd(t, dir, image, ['-f', 'qcow2', '-t', '-e', '4', '-B', 'mig0']);
  await t.rejects(
    NbdUpstream.open(nbd.url(), log, { ...DEFAULT_NBD_UPSTREAM_OPTIONS, dirtyBitmap: 'other' }),
    /does not offer the dirty bitmap "other" \(NBD meta context qemu:dirty-bitmap:other\)/,
  );
  // A disabled bitmap is the only kind QEMU exports read-only; it records nothing.
  const frozen = path.join(dir, 'frozen.qcow2');
  await runOk('qemu-img', ['create', '-f', 'qcow2', frozen, String(64 * MiB)]);
  await runOk('qemu-img', ['bitmap', '--add', '--disable', frozen, 'mig0']);
  const readOnly = await startQemuNbd(t, dir, frozen, ['-f', 'qcow2', '-r', '-t', '-e', '4', '-B', 'mig0']);
  await t.rejects(
    NbdUpstream.open(readOnly.url(), log, { ...DEFAULT_NBD_UPSTREAM_OPTIONS, dirtyBitmap: 'mig0' }),
    /exports the dirty bitmap "mig0" read-only, where QEMU exports only a disabled bitmap/,
  );
  const plain = await NbdUpstream.open(nbd.url(), log);
  t.equal(plain.tracking, 'none', 'without --dirty-bitmap the source reports no writes');
  t.same((await plain.cutover()).ranges, []);
  await plain.close();
});

t.test('ferry dest wires --dirty-bitmap to a plain NBD source only', async (t) => {
  const FERRY = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');
  const ferry = (args: string[]) => run(process.execPath, [FERRY, ...args], { timeoutMs: 30_000 });
  const dir = tempDir(t, 'ferry-bitmap-');
  const wire = await ferry([
    'dest',
    ...['--source', 'ferry://127.0.0.1:1/disk', '--insecure'],
    ...['--image', path.join(dir, 'w.img'), '--dirty-bitmap', 'mig0'],
  ]);
  t.equal(wire.code, 2);
  t.match(wire.stderr, /--dirty-bitmap \(dest\.dirty_bitmap\) is for a plain NBD source/);

  if (!requireTool(t, 'qemu-img', 'qemu-nbd', 'qemu-io')) return;
  const { image } = await qcow2WithBitmap(dir, 'mig0');
  const nbd = await startQemuNbd(t, dir, image, ['-f', 'qcow2', '-t', '-e', '4', '-B', 'mig0']);
  const missing = await ferry([
    'dest',
    '--source',
    nbd.url(),
    '--image',
    path.join(dir, 'd.img'),
    '--dirty-bitmap',
    'nope',
  ]);
  t.equal(missing.code, 1, 'a source without the bitmap is a runtime failure');
  t.match(missing.stderr, /does not offer the dirty bitmap "nope"/);
});
