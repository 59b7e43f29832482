import t, { Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import pino from 'pino';
import { FileDevice } from '../src/store/file-device';
import { BlockMap } from '../src/store/block-map';
import { MigratingDevice } from '../src/migrate/migrating-device';
import { BackgroundCopy } from '../src/migrate/background-copy';
import { ZeroScan } from '../src/migrate/zero-scan';
import type { ZeroRangeAnswer } from '../src/upstream/upstream';
import { FakeUpstream } from './helpers/fake-upstream';
import { requireFileOps } from './helpers/tools';

const log = pino({ level: 'silent' });
const BS = 4096;

/** A FakeUpstream that reports its all-zero blocks as zero ranges, a few ranges per answer. */
class HoleyUpstream extends FakeUpstream {
  zeroQueries = 0;
  answer: 'ranges' | 'null' | 'fail' = 'ranges';

  async zeroRanges(offset: number, length: number): Promise<ZeroRangeAnswer | null> {
    this.zeroQueries++;
    if (this.answer === 'null') return null;
    if (this.answer === 'fail') throw new Error('link down');
    const ranges: ZeroRangeAnswer['ranges'] = [];
    let at = offset;
    const end = offset + length;
    // At most three ranges per answer: the scan must ask again from where the answer ends.
    while (at < end && ranges.length < 3) {
      const n = Math.min(BS, end - at);
      if (this.content.subarray(at, at + n).every((b) => b === 0)) {
        const last = ranges[ranges.length - 1];
        if (last && last.offset + last.length === at) last.length += n;
        else ranges.push({ offset: at, length: n });
      }
      at += n;
    }
    return { covered: at - offset, ranges };
  }
}

/** Data in runs with zero stretches between them, and a short tail block of data. */
function makeSource(blocks: number): Buffer {
  const b = Buffer.alloc(blocks * BS + 1000);
  for (let i = 0; i < blocks; i++) if (i % 16 < 5) crypto.randomFillSync(b, i * BS, BS);
  crypto.randomFillSync(b, blocks * BS, 1000);
  return b;
}

function setup(t: Test, source: Buffer, upstream: FakeUpstream) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-zs-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const imagePath = path.join(dir, 'img');
  const local = FileDevice.open(imagePath, { createSize: source.length });
  const map = BlockMap.create(path.join(dir, 'state'), {
    blockSize: BS,
    imageSize: source.length,
    sourceIdentity: upstream.identity,
    sourceUrl: upstream.description,
    phase: 'post-copy',
    trackingEpoch: '',
    session: 'test',
  });
  const device = new MigratingDevice(local, map, upstream, { fetchTimeoutMs: 10_000 }, log);
  const copy = new BackgroundCopy(device, { batchBlocks: 8, windowBytes: 64 * BS, storeErrorBackoffMs: 10 }, null, log);
  const scan = new ZeroScan(device, upstream, log, { spanBytes: 32 * BS, parallel: 2, maxFailures: 3, retryMs: 5 });
  copy.setLimit(0);
  scan.on('progress', (blocks: number) => copy.setLimit(blocks));
  t.teardown(async () => {
    scan.stop();
    await copy.stop();
    await scan.settle();
    map.close();
    await device.close();
  });
  return { device, map, copy, scan, imagePath };
}

async function untilHeld(device: MigratingDevice): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!device.map.allHeld && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
}

t.test('holes at the source are held without fetching; the image ends equal to the source', async (t) => {
  if (!requireFileOps(t)) return; // holding a hole punches one in the image
  const blocks = 256;
  const source = makeSource(blocks);
  const upstream = new HoleyUpstream(source, () => 2);
  const { device, copy, scan, imagePath } = setup(t, source, upstream);
  // Stale bytes where the source has a hole (as after a crash between landing and the map):
  // they must not survive as the block's content.
  const stale = Buffer.alloc(BS, 0xee);
  const fd = fs.openSync(imagePath, 'r+');
  fs.writeSync(fd, stale, 0, BS, 7 * BS); // block 7 is a hole at the source
  fs.closeSync(fd);
  // A VM write into a hole before the scan reaches it wins over the source's zeros.
  const written = Buffer.alloc(BS, 0x5a);
  await device.write(200 * BS, written, false); // block 200: 200 % 16 = 8, a hole
  scan.start();
  copy.start();
  await untilHeld(device);
  t.ok(device.map.allHeld, 'every block held');
  const holeBlocks = Array.from({ length: blocks }, (_, i) => i).filter((i) => i % 16 >= 5);
  t.equal(device.counters.zeroBlocksSkipped, holeBlocks.length - 1, 'every hole but the written one skipped');
  for (const c of upstream.fetchCalls) {
    for (let b = c.offset / BS; b < (c.offset + c.length) / BS; b++)
      t.ok(b % 16 < 5 || b >= blocks, `fetched block ${b} holds data`);
  }
  t.ok(upstream.zeroQueries > 256 / 32, `answers of three ranges were continued (${upstream.zeroQueries} queries)`);
  await device.flush();
  const expected = Buffer.from(source);
  written.copy(expected, 200 * BS);
  t.ok(fs.readFileSync(imagePath).equals(expected), 'image = source + the VM write; stale bytes zeroed');
});

t.test('a source that cannot tell: the scan ends and every block is copied', async (t) => {
  const source = makeSource(64);
  const upstream = new HoleyUpstream(source);
  upstream.answer = 'null';
  const { device, copy, scan, imagePath } = setup(t, source, upstream);
  scan.start();
  copy.start();
  await untilHeld(device);
  t.ok(device.map.allHeld);
  t.equal(device.counters.zeroBlocksSkipped, 0);
  t.ok(scan.done, 'the scan ended');
  await device.flush();
  t.ok(fs.readFileSync(imagePath).equals(source));
});

t.test('a scan that keeps failing gives up and lets the copy take everything', async (t) => {
  const source = makeSource(64);
  const upstream = new HoleyUpstream(source);
  upstream.answer = 'fail';
  const { device, copy, scan, imagePath } = setup(t, source, upstream);
  scan.start();
  copy.start();
  await untilHeld(device);
  t.ok(device.map.allHeld);
  t.ok(upstream.zeroQueries >= 3 && upstream.zeroQueries <= 6, `gave up after ${upstream.zeroQueries} failures`);
  await device.flush();
  t.ok(fs.readFileSync(imagePath).equals(source));
});
