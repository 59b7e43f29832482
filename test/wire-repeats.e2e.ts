/**
 * Images full of repeated blocks, migrated over the ferry wire: the source
 * sends most of them as references to blocks the destination already holds,
 * and every block must still land at its own place. One image is generated
 * with repeats in every arrangement a batch can hold (runs of consecutive
 * targets, runs broken by a block of bytes, targets out of order, zeros
 * between); the other is the kind of disk the bench found a misplaced block
 * on: an ext4 file system large enough to hold backup copies of its metadata.
 */
import t, { Test } from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { startFerry, servingPort, ctlStatus } from './helpers/ferry-daemon';
import { tempDir, patternBytes } from './helpers/temp-dir';
import { seededRandom } from './helpers/seeded-random';
import { buildExt4Image, findMkfs } from '../bench/migrate-image';

const BS = 4096;
const MiB = 1 << 20;

/**
 * `size` bytes: the first quarter distinct blocks (the targets), the rest
 * arrangements of copies of them. Each arrangement is a few blocks long, so a
 * batch of the copy holds many of them side by side.
 */
function imageOfRepeats(size: number, seed: number): Buffer {
  const image = Buffer.alloc(size);
  const blocks = size / BS;
  const library = blocks / 4;
  patternBytes(library * BS, seed).copy(image);
  const rnd = seededRandom(seed);
  const pick = (n: number): number => Math.floor(rnd() * n);
  const copy = (from: number, to: number): void => void image.copy(image, to * BS, from * BS, from * BS + BS);
  const unique = (to: number): void => void crypto.randomFillSync(image, to * BS, BS);
  let at = library;
  while (at < blocks) {
    const room = blocks - at;
    const target = pick(library - 16);
    switch (pick(7)) {
      case 0: {
        // a run of consecutive targets
        const n = Math.min(2 + pick(14), room);
        for (let k = 0; k < n; k++) copy(target + k, at + k);
        at += n;
        break;
      }
      case 1: // ref T, bytes, ref T+1: the arrangement that once overwrote the bytes
        copy(target, at);
        if (room > 1) unique(at + 1);
        if (room > 2) copy(target + 1, at + 2);
        at += Math.min(3, room);
        break;
      case 2: // targets out of order: T+1, T, T+3, T+2
        for (const [k, d] of [1, 0, 3, 2].entries()) if (k < room) copy(target + d, at + k);
        at += Math.min(4, room);
        break;
      case 3: // consecutive targets with a zero block between
        copy(target, at);
        if (room > 2) copy(target + 1, at + 2);
        at += Math.min(3, room);
        break;
      case 4: // the same target twice in a row, then its neighbour
        for (const [k, d] of [0, 0, 1].entries()) if (k < room) copy(target + d, at + k);
        at += Math.min(3, room);
        break;
      case 5: // a copy of a block copied earlier in the second part (a reference to a reference)
        copy(library + pick(at - library || 1), at);
        at += 1;
        break;
      default: // distinct bytes
        for (let k = 0; k < Math.min(1 + pick(4), room); k++) unique(at + k);
        at += Math.min(1 + pick(4), room);
    }
  }
  return image;
}

/** The first block at which two images differ, or -1. */
function firstDifference(a: Buffer, b: Buffer): number {
  for (let at = 0; at < a.length; at += BS) if (a.compare(b, at, at + BS, at, at + BS) !== 0) return at / BS;
  return a.length === b.length ? -1 : a.length / BS;
}

/** Serves `image` from a ferry source and migrates it to a destination; the destination's image when complete. */
async function migrate(
  t: Test,
  dir: string,
  image: string,
  codec: string,
): Promise<{ landed: Buffer; referencesUsed: number }> {
  const src = await startFerry(t, [
    ...['source', '--image', image, '--listen', '127.0.0.1:0', '--insecure', '--codec', codec],
  ]);
  const control = path.join(dir, `ctl-${codec}.sock`);
  const dest = path.join(dir, `dest-${codec}.img`);
  const d = await startFerry(t, [
    ...['dest', '--cutover-at-start', '--source', `ferry://127.0.0.1:${servingPort(src)}/${path.basename(image)}`],
    ...['--image', dest, '--listen', '127.0.0.1:0', '--control', control, '--insecure'],
  ]);
  await d.waitForLog('migration complete: every block held, source disconnected', 600_000);
  const s = await ctlStatus(control);
  t.equal(await d.stop(), 0, 'the destination exits cleanly');
  await src.stop();
  return { landed: fs.readFileSync(dest), referencesUsed: s.referencesUsed as number };
}

t.test('repeats in every arrangement land each at its own place', async (t) => {
  const dir = tempDir(t, 'ferry-repeats-');
  const seed = 20261201;
  const source = imageOfRepeats(48 * MiB, seed);
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, source);
  for (const codec of ['none', 'lz4']) {
    const { landed, referencesUsed } = await migrate(t, dir, image, codec);
    t.ok(referencesUsed > 1000, `${codec}: the source sent references (${referencesUsed})`);
    t.equal(
      firstDifference(landed, source),
      -1,
      `${codec}: the destination holds exactly the source image (seed ${seed})`,
    );
  }
});

t.test('an ext4 image with backup metadata lands exactly', async (t) => {
  if (!findMkfs()) {
    t.plan(0, 'skipped: mkfs.ext4 not found (install e2fsprogs)');
    return;
  }
  const dir = tempDir(t, 'ferry-repeats-');
  // 512 MiB: four block groups, backup superblocks and group descriptors in two of them.
  const disk = buildExt4Image(dir, path.join(dir, 'disk.img'), 512 * MiB, 0.3);
  t.comment(disk.description);
  const source = fs.readFileSync(disk.path);
  const { landed, referencesUsed } = await migrate(t, dir, disk.path, 'lz4');
  t.ok(referencesUsed > 0, `the source sent references (${referencesUsed})`);
  t.equal(firstDifference(landed, source), -1, 'the destination holds exactly the source image');
});
