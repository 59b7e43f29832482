/**
 * A sparse source image: the destination asks where the source reads as
 * zeros (base:allocation over plain NBD, ZERO_QUERY over the ferry wire) and
 * holds those blocks without fetching them, as nbdcopy skips holes.
 */
import t, { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { startFerry, servingPort, ctlStatus } from './helpers/ferry-daemon';
import { startNbdkit } from './helpers/nbdkit';
import { tempDir } from './helpers/temp-dir';
import { requireFileOps, requireTool } from './helpers/tools';

const SIZE = 64 << 20;
const DATA = [
  [0, 256 << 10],
  [(10 << 20) + 4096, 1 << 20],
  [SIZE - (512 << 10), 512 << 10],
] as const;

/** A sparse file with three data extents; returns its content. */
function sparseImage(file: string): Buffer {
  const content = Buffer.alloc(SIZE);
  const fd = fs.openSync(file, 'w');
  fs.ftruncateSync(fd, SIZE);
  for (const [offset, length] of DATA) {
    crypto.randomFillSync(content, offset, length);
    fs.writeSync(fd, content, offset, length, offset);
  }
  fs.closeSync(fd);
  return content;
}

async function migrateSparse(t: Test, kind: 'nbd' | 'ferry', skip = true) {
  const dir = tempDir(t, 'ferry-holes-');
  const sourcePath = path.join(dir, 'disk.img');
  const content = sparseImage(sourcePath);
  const source =
    kind === 'nbd'
      ? await startFerry(t, ['serve', '--image', sourcePath, '--listen', '127.0.0.1:0', '--read-only'])
      : await startFerry(t, ['source', '--image', sourcePath, '--listen', '127.0.0.1:0', '--insecure']);
  const destImage = path.join(dir, 'dest.img');
  const control = path.join(dir, 'ctl.sock');
  const config = path.join(dir, 'ferry.toml');
  fs.writeFileSync(config, `[copy]\nskip_zero_ranges = ${skip}\n`);
  const dest = await startFerry(t, [
    ...[
      'dest',
      '--cutover-at-start',
      '--source',
      `${kind}://127.0.0.1:${servingPort(source)}/disk.img`,
      '--image',
      destImage,
    ],
    ...['--listen', '127.0.0.1:0', '--control', control, '--config', config],
    ...(kind === 'ferry' ? ['--insecure'] : []),
  ]);
  await dest.waitForLog('migration complete: every block held, source disconnected', 60_000);
  const s = await ctlStatus(control);
  t.equal(await dest.stop(), 0);
  t.ok(fs.readFileSync(destImage).equals(content), `${kind}: final image equals the source`);
  return { s, destImage };
}

const dataBytes = DATA.reduce((n, [, l]) => n + l, 0);

for (const kind of ['nbd', 'ferry'] as const) {
  t.test(`${kind}: the source's holes are held without fetching them`, async (t) => {
    if (!requireFileOps(t)) return; // ferry serve and source find holes with SEEK_HOLE
    const { s, destImage } = await migrateSparse(t, kind);
    // Blocks straddling a data extent's edge are fetched whole: allow one block either side of each.
    t.ok(
      s.bytesFetched <= dataBytes + 2 * DATA.length * s.blockSize,
      `fetched ${s.bytesFetched} bytes for ${dataBytes} of data`,
    );
    t.equal(s.bytesSkippedAsZero + s.bytesFetched, SIZE, 'every byte either fetched or skipped as zero');
    const allocated = fs.statSync(destImage).blocks * 512;
    t.ok(allocated < 4 * dataBytes, `the destination stays sparse (${allocated} bytes allocated)`);
  });
}

t.test('skip_zero_ranges = false fetches every block', async (t) => {
  const { s } = await migrateSparse(t, 'ferry', false);
  t.equal(s.bytesSkippedAsZero, 0);
  t.equal(s.bytesFetched, SIZE);
});

/** nbdkit's file plugin as the source, with or without structured replies (no base:allocation without them). */
async function fromNbdkit(t: Test, structured: boolean) {
  const dir = tempDir(t, 'ferry-holes-nbdkit-');
  const sourcePath = path.join(dir, 'disk.img');
  const content = sparseImage(sourcePath);
  const port = await startNbdkit(t, [...(structured ? [] : ['--no-sr']), 'file', sourcePath]);
  const destImage = path.join(dir, 'dest.img');
  const control = path.join(dir, 'ctl.sock');
  const dest = await startFerry(t, [
    ...['dest', '--cutover-at-start', '--source', `nbd://127.0.0.1:${port}/`, '--image', destImage],
    ...['--listen', '127.0.0.1:0', '--control', control],
  ]);
  await dest.waitForLog('migration complete: every block held, source disconnected', 60_000);
  const s = await ctlStatus(control);
  t.equal(await dest.stop(), 0);
  t.ok(fs.readFileSync(destImage).equals(content), 'final image equals the source');
  return { s, log: dest.stderr() };
}

t.test('nbdkit: holes reported by base:allocation are not fetched', async (t) => {
  if (!requireTool(t, 'nbdkit', 'nbdinfo') || !requireFileOps(t)) return;
  const { s } = await fromNbdkit(t, true);
  t.ok(s.bytesFetched <= dataBytes + 2 * DATA.length * s.blockSize, `fetched ${s.bytesFetched} for ${dataBytes}`);
  t.equal(s.bytesSkippedAsZero + s.bytesFetched, SIZE);
});

t.test('nbdkit without structured replies: no block status, every block is copied', async (t) => {
  if (!requireTool(t, 'nbdkit', 'nbdinfo')) return;
  const { s, log } = await fromNbdkit(t, false);
  t.equal(s.bytesSkippedAsZero, 0);
  t.equal(s.bytesFetched, SIZE);
  t.match(log, /"reason":"the source cannot report zero ranges".*not skipping source holes/, 'the log says why');
});
