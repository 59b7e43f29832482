/**
 * The pieces of the QEMU guest tests that need no QEMU: the initramfs archive
 * and the check of a final image against the guest's table of writes (which
 * must catch a lost write, a stale one and a stray one).
 */
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { runOk } from './helpers/run';
import { patternBytes, tempDir } from './helpers/temp-dir';
import { requireTool } from './helpers/tools';
import { buildCpio } from './vm/helpers/cpio';
import { checkImage, md5, parseDump, RECORD_BYTES } from './vm/helpers/guest-records';

t.test('the initramfs archive lists as cpio newc, with its device node and symlink', async (t) => {
  if (!requireTool(t, 'busybox')) return;
  const dir = tempDir(t);
  const archive = path.join(dir, 'initramfs.cpio');
  fs.writeFileSync(
    archive,
    buildCpio([
      { kind: 'dir', path: 'bin' },
      { kind: 'dir', path: 'dev' },
      { kind: 'char', path: 'dev/console', major: 5, minor: 1 },
      { kind: 'file', path: 'bin/busybox', data: Buffer.from('odd length!'), mode: 0o755 },
      { kind: 'symlink', path: 'bin/sh', target: 'busybox' },
      { kind: 'file', path: 'init', data: Buffer.from('#!/bin/sh\n'), mode: 0o755 },
    ]),
  );
  const listing = await runOk('busybox', ['cpio', '-tv', '-F', archive]);
  t.match(listing, /^crw------- .*dev\/console$/m);
  t.match(listing, /^lrwxrwxrwx .*bin\/sh -> busybox$/m);
  t.match(listing, /^-rwxr-xr-x .* 11 .*bin\/busybox$/m);
  t.match(listing, /^-rwxr-xr-x .*init$/m);
  const out = path.join(dir, 'out');
  fs.mkdirSync(out);
  await runOk('busybox', ['sh', '-c', `cd ${out} && busybox cpio -i -d -F ${archive} bin/busybox init`]);
  t.equal(fs.readFileSync(path.join(out, 'bin', 'busybox'), 'utf8'), 'odd length!', 'file bytes survive the padding');
});

function record(slot: number, seq: number): Buffer {
  const b = Buffer.alloc(RECORD_BYTES, seq & 0xff);
  b.write(`FERRY-REC slot=${String(slot).padStart(8, '0')} seq=${String(seq).padStart(8, '0')}\n`, 'latin1');
  return b;
}

t.test('an image is checked against the guest table: lost, stale and stray writes are all caught', async (t) => {
  const initial = patternBytes(16 * RECORD_BYTES, 5);
  const image = Buffer.from(initial);
  const newer = record(3, 9);
  const older = record(3, 4);
  record(7, 2).copy(image, 7 * RECORD_BYTES);
  newer.copy(image, 3 * RECORD_BYTES);
  const table = parseDump([`FERRY REC 3 9 ${md5(newer)}`, `FERRY REC 7 2 ${md5(record(7, 2))}`]);

  t.same(checkImage(image, initial, table), { recordsMatched: 2, lostWrites: [], strayChanges: [] }, 'all there');

  const stale = Buffer.from(image);
  older.copy(stale, 3 * RECORD_BYTES);
  t.same(checkImage(stale, initial, table).lostWrites, [{ slot: 3, seq: 9, found: 'record slot=3 seq=4' }]);

  const lost = Buffer.from(image);
  initial.copy(lost, 7 * RECORD_BYTES, 7 * RECORD_BYTES, 8 * RECORD_BYTES);
  t.equal(checkImage(lost, initial, table).lostWrites.length, 1, 'a slot back at its initial bytes is a lost write');

  const stray = Buffer.from(image);
  stray[12 * RECORD_BYTES + 100] ^= 1;
  t.same(checkImage(stray, initial, table).strayChanges, [12], 'one flipped bit outside the table');
});

t.test('the guest dump is parsed strictly', async (t) => {
  t.throws(() => parseDump(['FERRY REC 1 2 nothex']), /not a guest record line/);
  const sum = 'a'.repeat(32);
  t.throws(() => parseDump([`FERRY REC 1 2 ${sum}`, `FERRY REC 1 3 ${sum}`]), /slot 1 appears twice/);
});
