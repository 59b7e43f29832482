/** ferry serve driven by libnbd's tools: nbdinfo and nbdcopy, over TCP and a Unix socket. */
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { startFerryServe } from './helpers/ferry-serve';
import { run, runOk } from './helpers/run';
import { tempDir, writePatternFile } from './helpers/temp-dir';
import { requireFileOps, requireTool } from './helpers/tools';
import { fileOps } from '../src/store/fileops';

const MiB = 1 << 20;

interface NbdinfoExport {
  'export-name': string;
  'export-size': number;
  is_read_only: boolean;
  can_multi_conn: boolean;
  can_trim: boolean;
  can_fua: boolean;
  can_flush: boolean;
  can_zero: boolean;
  can_fast_zero: boolean;
  can_cache: boolean;
  can_df: boolean;
  contexts: string[];
  block_size_maximum: number;
}

function sparseImage(dir: string, name: string, size: number): string {
  const image = path.join(dir, name);
  fs.writeFileSync(image, '');
  fs.truncateSync(image, size);
  return image;
}

t.test('nbdinfo --json reports the export and its capabilities', async (t) => {
  if (!requireTool(t, 'nbdinfo')) return;
  const image = sparseImage(tempDir(t), 'vm.img', 16 * MiB);
  const ferry = await startFerryServe(t, ['--image', image, '--export', 'vm-disk']);
  const info = JSON.parse(await runOk('nbdinfo', ['--json', ferry.uri('vm-disk')])) as {
    protocol: string;
    structured: boolean;
    exports: NbdinfoExport[];
  };
  t.equal(info.protocol, 'newstyle-fixed');
  t.equal(info.structured, true);
  t.equal(info.exports.length, 1);
  const e = info.exports[0];
  t.equal(e['export-name'], 'vm-disk');
  t.equal(e['export-size'], 16 * MiB);
  const native = fileOps !== null; // TRIM and fast zeroing are offered only with the native addon
  t.match(e, {
    is_read_only: false,
    can_multi_conn: true,
    can_trim: native,
    can_fua: true,
    can_flush: true,
    can_zero: true,
    can_fast_zero: native,
    can_cache: true,
    can_df: true,
  });
  t.same(e.contexts, ['base:allocation']);
  t.ok(e.block_size_maximum >= 32 * MiB, 'maximum block size allows 32 MiB requests');

  const defaultExport = await runOk('nbdinfo', ['--size', ferry.uri('')]);
  t.equal(defaultExport.trim(), String(16 * MiB), 'the empty name selects the default export');
});

t.test('nbdinfo --list names the one export', async (t) => {
  if (!requireTool(t, 'nbdinfo')) return;
  const image = sparseImage(tempDir(t), 'listed.img', 4 * MiB);
  const ferry = await startFerryServe(t, ['--image', image]);
  const list = JSON.parse(await runOk('nbdinfo', ['--list', '--json', ferry.uri()])) as { exports: NbdinfoExport[] };
  t.same(
    list.exports.map((e) => e['export-name']),
    ['listed.img'],
  );
  t.equal(list.exports[0]['export-size'], 4 * MiB);
});

t.test('nbdinfo of an unknown export fails', async (t) => {
  if (!requireTool(t, 'nbdinfo')) return;
  const image = sparseImage(tempDir(t), 'known.img', MiB);
  const ferry = await startFerryServe(t, ['--image', image]);
  const result = await run('nbdinfo', [ferry.uri('nosuch')]);
  t.not(result.code, 0, 'nbdinfo exits non-zero');
  t.match(result.stderr, /nosuch/, 'the error names the export');
  t.equal((await run('nbdinfo', ['--size', ferry.uri('known.img')])).code, 0, 'the server still serves');
});

t.test('nbdinfo --map: holes after trim and zero, data after a write', async (t) => {
  if (!requireFileOps(t)) return;
  if (!requireTool(t, 'nbdinfo', 'qemu-io')) return;
  const dir = tempDir(t);
  const image = path.join(dir, 'map.img');
  writePatternFile(image, 8 * MiB, 5); // fully allocated
  const ferry = await startFerryServe(t, ['--image', image]);
  const map = async (): Promise<Array<{ offset: number; length: number; type: number }>> =>
    JSON.parse(await runOk('nbdinfo', ['--map', '--json', ferry.uri()])) as Array<{
      offset: number;
      length: number;
      type: number;
    }>;
  const before = await map();
  t.same(before, [{ offset: 0, length: 8 * MiB, type: 0, description: 'data' }], 'all data at first');

  // -u lets the zeroing unmap (no NO_HOLE flag); plain -z must stay allocated
  await runOk('qemu-io', [
    '-f',
    'raw',
    '-c',
    'discard 1M 2M',
    '-c',
    'write -z -u 5M 1M',
    '-c',
    'write -z 7M 64k',
    ferry.uri(),
  ]);
  const after = await map();
  const typeAt = (offset: number, extents = after): number | undefined =>
    extents.find((e) => e.offset <= offset && offset < e.offset + e.length)?.type;
  t.equal(typeAt(0), 0, 'untouched start is data');
  t.equal(typeAt(1 * MiB), 3, 'trimmed range is a hole reading as zero');
  t.equal(typeAt(3 * MiB - 1), 3);
  t.equal(typeAt(5 * MiB + 4096), 3, 'zeroed range is a hole reading as zero');
  t.equal(typeAt(4 * MiB), 0, 'between them: data');
  // ZERO_RANGE may leave unwritten extents that SEEK_DATA reports as holes, so
  // allocation is checked on the file: only the trimmed and unmapped 3 MiB went.
  // (ext4 may add a block of extent tree; a punched 64k would take it under 5 MiB.)
  const allocated = fs.statSync(image).blocks * 512;
  t.ok(allocated >= 5 * MiB && allocated < 5 * MiB + 64 * 1024, `NO_HOLE zeroing kept its blocks (${allocated})`);
  t.equal(
    after.reduce((sum, e) => sum + e.length, 0),
    8 * MiB,
    'extents cover the export',
  );

  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 64k', ferry.uri()]);
  const rewritten = await map();
  t.equal(typeAt(1 * MiB, rewritten), 0, 'written block is data again');
  t.equal(typeAt(1 * MiB + 64 * 1024, rewritten), 3, 'the rest of the trimmed range is still a hole');
});

t.test('nbdcopy file → nbd → file, one and four connections', async (t) => {
  if (!requireTool(t, 'nbdcopy')) return;
  const dir = tempDir(t);
  const source = path.join(dir, 'source.img');
  const size = 32 * MiB;
  const content = writePatternFile(source, size, 11);
  for (const connections of [1, 4]) {
    const image = sparseImage(dir, `target-${connections}.img`, size);
    const back = path.join(dir, `back-${connections}.img`);
    const ferry = await startFerryServe(t, ['--image', image]);
    await runOk('nbdcopy', [`--connections=${connections}`, source, ferry.uri()]);
    t.ok(fs.readFileSync(image).equals(content), `file → nbd (${connections} connections) wrote the content`);
    await runOk('nbdcopy', [`--connections=${connections}`, ferry.uri(), back]);
    t.ok(fs.readFileSync(back).equals(content), `nbd → file (${connections} connections) read the content`);
    t.equal(await ferry.stop(), 0);
  }
});

t.test('--socket: nbdinfo over a Unix socket', async (t) => {
  if (!requireTool(t, 'nbdinfo')) return;
  const dir = tempDir(t);
  const image = sparseImage(dir, 'unix.img', 3 * MiB);
  const socket = path.join(dir, 'ferry.sock');
  const ferry = await startFerryServe(t, ['--image', image, '--socket', socket]);
  t.ok(fs.statSync(socket).isSocket(), 'the socket exists');
  const size = await runOk('nbdinfo', ['--size', `nbd+unix:///?socket=${socket}`]);
  t.equal(size.trim(), String(3 * MiB));
  const named = await runOk('nbdinfo', ['--size', `nbd+unix:///unix.img?socket=${socket}`]);
  t.equal(named.trim(), String(3 * MiB));
  t.equal(await ferry.stop(), 0);
});
