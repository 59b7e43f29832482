import t, { Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import pino from 'pino';
import { FileDevice } from '../src/store/file-device';
import type { BlockDevice, ZeroOptions } from '../src/store/block-device';
import { DelegatingDevice } from '../src/store/delegating-device';
import { BlockMap } from '../src/store/block-map';
import { MigratingDevice } from '../src/migrate/migrating-device';
import { BackgroundCopy } from '../src/migrate/background-copy';
import { FakeUpstream } from './helpers/fake-upstream';
import { requireFileOps } from './helpers/tools';
import { until } from './helpers/until';

const log = pino({ level: 'silent' });
const BS = 4096;

function tempDir(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-md-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A source image: random blocks, zero blocks, and a short tail block. */
function makeSource(blocks: number, tail = 1000): Buffer {
  const b = Buffer.alloc(blocks * BS + tail);
  for (let i = 0; i < blocks; i++) if (i % 5 !== 0) crypto.randomFillSync(b, i * BS, BS);
  crypto.randomFillSync(b, blocks * BS, tail);
  return b;
}

function setup(
  t: Test,
  source: Buffer,
  upstream: FakeUpstream,
  fetchTimeoutMs = 10_000,
  phase: 'warming' | 'post-copy' = 'post-copy',
  wrap: (file: BlockDevice) => BlockDevice = (file) => file,
) {
  const dir = tempDir(t);
  const local = wrap(FileDevice.open(path.join(dir, 'img'), { createSize: source.length }));
  const map = BlockMap.create(path.join(dir, 'state'), {
    blockSize: BS,
    imageSize: source.length,
    sourceIdentity: upstream.identity,
    sourceUrl: upstream.description,
    phase,
    trackingEpoch: '',
    session: 'test',
  });
  const device = new MigratingDevice(local, map, upstream, { fetchTimeoutMs }, log);
  t.teardown(async () => {
    map.close();
    await device.close();
  });
  return { dir, device, map, imagePath: path.join(dir, 'img') };
}

/** A destination before cutover: the source is still the authority. */
function warmingDevice(t: Test, source: Buffer, upstream: FakeUpstream, wrap?: (file: BlockDevice) => BlockDevice) {
  return setup(t, source, upstream, 10_000, 'warming', wrap);
}

t.test('concurrent reads of a missing block cause one fetch', async (t) => {
  const source = makeSource(16);
  const upstream = new FakeUpstream(source, () => 20);
  const { device } = setup(t, source, upstream);
  const reads = Array.from({ length: 20 }, () => {
    const b = Buffer.alloc(100);
    return device.read(3 * BS + 50, b).then(() => b);
  });
  for (const b of await Promise.all(reads)) t.same(b, source.subarray(3 * BS + 50, 3 * BS + 150));
  t.equal(upstream.fetchCalls.length, 1, 'one fetch for twenty readers');
  t.equal(device.counters.onDemandFetches, 1);
  t.ok(device.map.isHeld(3));
});

t.test('a whole-block write during a fetch wins over the fetched copy', async (t) => {
  const source = makeSource(8);
  const upstream = new FakeUpstream(source);
  const { device } = setup(t, source, upstream);
  const release = upstream.holdFetches();
  const reader = Buffer.alloc(BS);
  const read = device.read(2 * BS, reader); // starts the fetch, held until released
  await until(() => upstream.fetchCalls.length === 1, 'the fetch has started');
  const mine = Buffer.alloc(BS, 0xab);
  await device.write(2 * BS, mine, false);
  await read;
  t.equal(upstream.fetchesReturned, 0, 'the write and the read finished while the fetch was out');
  release();
  await until(() => upstream.fetchesReturned === 1, 'the fetch has returned');
  const after = Buffer.alloc(BS);
  await device.read(2 * BS, after);
  t.same(after, mine, 'the late fetch was discarded');
  t.ok(reader.equals(mine) || reader.equals(source.subarray(2 * BS, 3 * BS)), 'the concurrent read saw old or new');
});

t.test('a whole-block write after cutover wins over a copy the final write set made stale', async (t) => {
  const source = makeSource(8);
  const upstream = new FakeUpstream(source);
  // The source VM wrote block 2 while the background copy had it in flight; the final set carries that write.
  upstream.finalSet = [{ offset: 2 * BS + 100, length: 10 }];
  const { device, map } = warmingDevice(t, source, upstream);
  const release = upstream.holdFetches();
  const copying = device.fetchBackgroundRun(device.claimBackgroundRun(2, 1)!);
  await until(() => upstream.fetchCalls.length === 1, 'the copy of block 2 is in flight');
  source.fill(0x5a, 2 * BS + 100, 2 * BS + 110);

  const mine = Buffer.alloc(BS, 0xab);
  await device.write(2 * BS, mine, false); // cuts over, then writes the block whole
  t.equal(device.phase, 'post-copy');
  t.ok(map.isHeld(2), 'the written block is held: nothing may fetch it again');
  release();
  await copying;
  t.equal(device.counters.discardedFetches, 1, 'the copy in flight was discarded');
  const after = Buffer.alloc(BS);
  await device.read(2 * BS, after);
  t.ok(after.equals(mine), 'the VM write is read back, not the source bytes');
  t.equal(upstream.fetchCalls.length, 1, 'nothing fetched block 2 again');
});

t.test('a read after cutover of a block the final write set made stale does not wait for the stale copy', async (t) => {
  const source = makeSource(8);
  let releaseBackground!: () => void;
  const backgroundGate = new Promise<void>((r) => (releaseBackground = r));
  const upstream = new (class extends FakeUpstream {
    override async fetch(offset: number, length: number, priority: 'urgent' | 'background'): Promise<Buffer> {
      if (priority === 'background') await backgroundGate; // the copy is queued behind the whole window
      return super.fetch(offset, length, priority);
    }
  })(source);
  upstream.finalSet = [{ offset: 3 * BS, length: 1 }];
  const { device, map } = warmingDevice(t, source, upstream);
  const copying = device.fetchBackgroundRun(device.claimBackgroundRun(3, 1)!);
  source.fill(0x77, 3 * BS, 3 * BS + 1); // the source VM's last write, carried by the final set
  await device.cutover();
  const got = Buffer.alloc(BS);
  await device.read(3 * BS, got);
  t.ok(got.equals(source.subarray(3 * BS, 4 * BS)), 'the read returns the source bytes after its last write');
  t.ok(map.isHeld(3), 'and keeps them');
  releaseBackground();
  await copying;
  t.equal(device.counters.discardedFetches, 1, 'the stale copy arrived after and was discarded');
  await device.read(3 * BS, got);
  t.ok(got.equals(source.subarray(3 * BS, 4 * BS)));
});

t.test('a read before cutover hands the fetched buffer back once its bytes are copied out', async (t) => {
  const source = makeSource(8);
  const upstream = new FakeUpstream(source);
  const { device, map } = warmingDevice(t, source, upstream);
  const got = Buffer.alloc(100);
  await device.read(2 * BS + 10, got);
  t.ok(
    got.equals(source.subarray(2 * BS + 10, 2 * BS + 110)),
    'the bytes read are the source bytes (not the scribbled buffer)',
  );
  t.equal(upstream.recycled, 1, 'the buffer went back to the upstream');
  t.equal(map.heldCount, 0, 'and nothing was kept');
});

t.test(
  'a tracking restart before anything is copied still voids the seed hashes and zero answers on their way',
  async (t) => {
    // The hash query is answered; then the source VM writes block 1 and the source dies before its
    // report arrives; it comes back under a new tracking epoch, which knows nothing of that write.
    const source = crypto.randomBytes(4 * BS);
    const seed = Buffer.from(source);
    const upstream = new FakeUpstream(source);
    const { device, map } = warmingDevice(t, source, upstream);
    const watch = device.watchZeroQuery();
    source.fill(0x11, BS, 2 * BS);
    t.equal(await device.invalidateAll(), 0, 'nothing was held');
    const held = await device.holdSeedBlocks(0, seed, [0, 1, 2, 3], watch);
    device.endZeroQuery(watch);
    t.equal(held, 0, 'no block is held on hashes from before the restart');
    t.notOk(map.isHeld(1), 'block 1 is not held with the bytes from before the lost write');
  },
);

t.test('a hole run after an await skips blocks the source wrote during that await', async (t) => {
  const source = Buffer.alloc(8 * BS); // all zeros when the zero query was answered
  const upstream = new FakeUpstream(source);
  /** No zeroNow (a delegating layer offers none): every hole is punched with an await; during the first, the source writes block 6. */
  class AwaitedZero extends DelegatingDevice {
    private first = true;
    override async zero(offset: number, length: number, options: ZeroOptions): Promise<void> {
      await this.inner.zero(offset, length, options);
      if (!this.first) return;
      this.first = false;
      source.fill(0x22, 6 * BS, 7 * BS);
      upstream.emit('dirty', { ranges: [{ offset: 6 * BS, length: BS }], ack: () => undefined });
    }
  }
  const { device, map } = warmingDevice(t, source, upstream, (file) => new AwaitedZero(file));
  // Block 3 is being fetched, so the slice is punched in two runs: blocks 0–2, then 4–7.
  const fetching = device.states.startFetch(3, false);
  const watch = device.watchZeroQuery();
  await device.holdZeroRun(0, 8, watch);
  device.endZeroQuery(watch);
  device.states.fetchFailed(fetching);
  t.ok(map.isHeld(5) && map.isHeld(7), 'the other blocks of the second run are holes');
  t.notOk(map.isHeld(6), 'block 6, written during the first punch, is not held as zeros');
});

t.test(
  'seeded blocks: a VM write during the copy wins; a source write reported meanwhile leaves them missing',
  async (t) => {
    const source = makeSource(8, 0);
    const upstream = new FakeUpstream(source);
    const { device, map } = setup(t, source, upstream);
    const seed = Buffer.from(source.subarray(0, 4 * BS));
    // Block 1 is written by the source while the hash query is out; block 2 by the VM while the seed is copied.
    const watch = device.watchZeroQuery();
    (device as unknown as { invalidateRanges(r: Array<{ offset: number; length: number }>): number }).invalidateRanges([
      { offset: BS, length: 10 },
    ]);
    const vmData = crypto.randomBytes(BS);
    const seeding = device.holdSeedBlocks(0, seed, [0, 1, 2, 3], watch);
    t.equal(device.states.state(2), 'claimed', 'the seed claims the blocks it copies');
    const vmWrite = device.write(2 * BS, vmData, false);
    t.equal(await seeding, 3, 'blocks 0, 2 and 3 held from the seed');
    device.endZeroQuery(watch);
    await vmWrite;
    t.notOk(map.isHeld(1), 'the block the source wrote meanwhile stays missing');
    const block = Buffer.alloc(BS);
    await device.read(2 * BS, block);
    t.ok(block.equals(vmData), 'the VM write landed over the seeded copy');
    await device.read(1 * BS, block);
    t.ok(block.equals(source.subarray(BS, 2 * BS)), 'the missing block is fetched from the source');
    t.equal(device.counters.seededBlocks, 3);
  },
);

t.test('a partial write to a missing block fetches it first; trim and zero need no fetch', async (t) => {
  const source = makeSource(8);
  const upstream = new FakeUpstream(source);
  const { device } = setup(t, source, upstream);
  await device.write(BS + 10, Buffer.from('hello'), false);
  t.equal(upstream.fetchCalls.length, 1);
  const got = Buffer.alloc(BS);
  await device.read(BS, got);
  const expected = Buffer.from(source.subarray(BS, 2 * BS));
  expected.write('hello', 10);
  t.same(got, expected);
  await device.zero(4 * BS, 2 * BS, { fua: false, noHole: false, fastZero: false });
  await device.trim(6 * BS, BS, false);
  t.equal(upstream.fetchCalls.length, 1, 'no fetch for whole-block zero and trim');
  const z = Buffer.alloc(3 * BS, 1);
  await device.read(4 * BS, z);
  t.ok(z.equals(Buffer.alloc(3 * BS)), 'zeroed and trimmed blocks read as zeros');
});

t.test('reads wait for a source that is down, then fail with EIO only after the limit', async (t) => {
  const source = makeSource(8);
  const upstream = new FakeUpstream(source);
  const { device } = setup(t, source, upstream, 300);
  upstream.setConnected(false);
  const b = Buffer.alloc(10);
  const started = Date.now();
  const err = await device.read(0, b).then(
    () => null,
    (e: { errno?: string }) => e,
  );
  t.equal(err?.errno, 'EIO', 'EIO after the wait limit');
  t.ok(Date.now() - started >= 290, 'waited for the limit');
  const waitingBefore = upstream.fetchesWaitingForSource; // the timed-out read's fetch still waits
  const later = device.read(BS, b);
  await until(() => upstream.fetchesWaitingForSource > waitingBefore, 'the read waits for the source');
  upstream.setConnected(true);
  await later;
  t.same(b, source.subarray(BS, BS + 10), 'succeeds once the source is back');
});

t.test('model: random interleavings of VM requests with a background copy and random fetch delays', async (t) => {
  if (!requireFileOps(t)) return; // the model reads trimmed blocks as zeros: TRIM needs the addon
  let checkedReads = 0;
  for (let round = 0; round < 8; round++) {
    const blocks = 48;
    const source = makeSource(blocks, round % 2 ? 0 : 777);
    const upstream = new FakeUpstream(source, () => Math.floor(Math.random() * 4), round % 3 === 0 ? 10 : 0);
    const { device, imagePath } = setup(t, source, upstream);
    const copy = new BackgroundCopy(
      device,
      { batchBlocks: 4, windowBytes: 4 * 4 * BS, storeErrorBackoffMs: 10 },
      200_000,
      log,
    );
    copy.start();
    const model = Buffer.from(source);
    const size = source.length;
    const busy = new Set<number>(); // blocks touched by in-flight requests
    const inFlight = new Set<Promise<void>>();
    const blocksOf = (o: number, l: number): number[] => {
      const out = [];
      for (let b = Math.floor(o / BS); b <= Math.floor((o + l - 1) / BS); b++) out.push(b);
      return out;
    };
    for (let i = 0; i < 500; i++) {
      const kind = Math.random();
      let offset: number;
      let length: number;
      if (Math.random() < 0.4) {
        offset = Math.floor(Math.random() * (size / BS)) * BS;
        length = Math.min(BS * (1 + Math.floor(Math.random() * 3)), size - offset);
      } else {
        offset = Math.floor(Math.random() * (size - 1));
        length = 1 + Math.floor(Math.random() * Math.min(3 * BS, size - offset - 1));
      }
      const touched = blocksOf(offset, length);
      // Requests on distinct blocks run concurrently; the model stays exact.
      while (touched.some((b) => busy.has(b))) await Promise.race(inFlight);
      touched.forEach((b) => busy.add(b));
      let op: Promise<void>;
      if (kind < 0.4) {
        const expected = Buffer.from(model.subarray(offset, offset + length));
        const into = Buffer.alloc(length);
        op = device.read(offset, into).then(() => {
          if (!into.equals(expected)) t.fail(`round ${round} read ${offset}+${length} differs from the model`);
          checkedReads++;
        });
      } else if (kind < 0.75) {
        const data = crypto.randomBytes(length);
        data.copy(model, offset);
        op = device.write(offset, data, Math.random() < 0.1);
      } else if (kind < 0.85) {
        model.fill(0, offset, offset + length);
        op = device.zero(offset, length, { fua: false, noHole: Math.random() < 0.5, fastZero: false });
      } else if (kind < 0.95) {
        // trim only zeroes the whole blocks inside the range
        const start = Math.ceil(offset / BS) * BS;
        const end = offset + length === size ? size : Math.floor((offset + length) / BS) * BS;
        if (end > start) model.fill(0, start, end);
        op = device.trim(offset, length, false);
      } else op = device.flush();
      const tracked: Promise<void> = op.finally(() => {
        touched.forEach((b) => busy.delete(b));
        inFlight.delete(tracked);
      });
      inFlight.add(tracked);
      if (inFlight.size >= 8) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    // Let the background copy finish, then check the whole image.
    const deadline = Date.now() + 10_000;
    while (!device.map.allHeld && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    await copy.stop();
    t.ok(device.map.allHeld, `round ${round}: every block held`);
    await device.flush();
    t.ok(fs.readFileSync(imagePath).equals(model), `round ${round}: image equals source plus writes`);
  }
  t.ok(checkedReads > 1000, `checked ${checkedReads} reads`);
});

t.test('a source that fails every fetch at once does not freeze the event loop', async (t) => {
  const source = makeSource(64);
  const upstream = new FakeUpstream(source, () => 0, 1); // every fetch fails immediately
  const { device } = setup(t, source, upstream, 500);
  const copy = new BackgroundCopy(device, { batchBlocks: 4, windowBytes: 16 * BS, storeErrorBackoffMs: 10 }, null, log);
  copy.start();
  let ticks = 0;
  const timer = setInterval(() => ticks++, 20);
  const err = await device.read(0, Buffer.alloc(10)).then(
    () => null,
    (e: { errno?: string }) => e,
  );
  clearInterval(timer);
  await copy.stop();
  t.equal(err?.errno, 'EIO', 'the read fails after the limit');
  // A frozen loop would tick once at most; a loaded machine may delay ticks but not stop them.
  t.ok(ticks >= 3, `timers kept running meanwhile (${ticks} ticks of 20 ms in 500 ms)`);
  t.ok(upstream.fetchCalls.length < 500, `fetches were paced (${upstream.fetchCalls.length} in 500 ms)`);
});

/** A device of `size` bytes past its cutover with every block still missing, over a file image; the source is never asked. */
function emptyAfterCutover(t: Test, size: number) {
  const upstream = new FakeUpstream(Buffer.alloc(0));
  Object.defineProperty(upstream, 'size', { value: size });
  const dir = tempDir(t);
  const local = FileDevice.open(path.join(dir, 'img'), { createSize: size });
  const map = BlockMap.create(path.join(dir, 'state'), {
    blockSize: BS,
    imageSize: size,
    sourceIdentity: upstream.identity,
    sourceUrl: upstream.description,
    phase: 'post-copy',
    trackingEpoch: '',
    session: 'test',
  });
  const device = new MigratingDevice(local, map, upstream, { fetchTimeoutMs: 10_000 }, log);
  t.teardown(async () => {
    map.close();
    await device.close();
  });
  return { upstream, local, map, device };
}

t.test(
  'a WRITE_ZEROES that must keep its blocks allocated (NO_HOLE) claims one slice of blocks at a time',
  async (t) => {
    const size = 256 << 20;
    const { upstream, local, map, device } = emptyAfterCutover(t, size);
    let maxInTransit = 0;
    let zeroCalls = 0;
    const zeroLocally = local.zero.bind(local);
    local.zero = (offset, length, options) => {
      zeroCalls++;
      maxInTransit = Math.max(maxInTransit, device.inTransit); // the claims held while the image is zeroed
      return zeroLocally(offset, length, options);
    };
    await device.zero(0, size, { fua: false, noHole: true, fastZero: false });
    t.equal(zeroCalls, size / (1024 * BS), 'the image was zeroed slice by slice');
    t.ok(
      maxInTransit > 0 && maxInTransit <= 1024,
      `every block of a slice claimed, one slice at a time (${maxInTransit})`,
    );
    t.equal(device.inTransit, 0, 'every claim released');
    t.ok(map.allHeld, 'every block held as zeros');
    const sample = Buffer.alloc(BS, 1);
    await device.read(size - BS, sample);
    t.ok(sample.equals(Buffer.alloc(BS)), 'the last block reads as zeros');
    t.equal(upstream.fetchCalls.length, 0, 'nothing fetched');
  },
);

t.test('a 4 GiB WRITE_ZEROES and TRIM hold a bounded number of records at a time and let other work run', async (t) => {
  const size = 4 * 1024 ** 3;
  const { upstream, local, map, device } = emptyAfterCutover(t, size);
  let maxInTransit = 0;
  let zeroedAtOnce = 0;
  let zeroedInPool = 0;
  let maxAtOnce = 0;
  const zeroLocally = local.zero.bind(local);
  local.zero = (offset, length, options) => {
    maxInTransit = Math.max(maxInTransit, device.inTransit); // the claims held while the image is zeroed
    maxAtOnce = Math.max(maxAtOnce, length);
    zeroedInPool += length;
    return zeroLocally(offset, length, options);
  };
  const zeroNow = local.zeroNow.bind(local);
  local.zeroNow = (offset, length) => {
    maxAtOnce = Math.max(maxAtOnce, length);
    zeroedAtOnce += length;
    zeroNow(offset, length);
  };
  for (const op of ['zero', 'trim'] as const) {
    maxInTransit = 0;
    maxAtOnce = 0;
    let turns = 0;
    let running = true;
    const watch = (): void => {
      maxInTransit = Math.max(maxInTransit, device.inTransit);
      turns++;
      if (running) setImmediate(watch);
    };
    setImmediate(watch);
    const heapBefore = process.memoryUsage().heapUsed;
    if (op === 'zero') await device.zero(0, size, { fua: false, noHole: false, fastZero: false });
    else await device.trim(0, size, false);
    running = false;
    const heapGrowth = process.memoryUsage().heapUsed - heapBefore;
    // Missing blocks are punched and held with no await in between, held ones zeroed in the thread
    // pool: neither needs a claim (the NO_HOLE test above takes them).
    t.equal(maxInTransit, 0, `${op}: no block claimed`);
    if (op === 'zero') t.equal(zeroedAtOnce, size, 'missing blocks nobody worked on were zeroed and held at once');
    else t.equal(zeroedInPool, size, 'held blocks were zeroed off the event loop');
    t.ok(maxAtOnce <= 1024 * BS, `${op}: one slice zeroed at a time (${maxAtOnce} bytes)`);
    t.ok(turns >= 32, `${op}: other work ran between slices (${turns} turns)`);
    t.ok(heapGrowth < 16 << 20, `${op}: heap grew ${Math.round(heapGrowth / 1048576)} MiB`);
    if (op === 'zero') t.ok(map.allHeld, 'every block held as zeros');
  }
  const sample = Buffer.alloc(BS);
  await device.read(size - BS, sample);
  t.ok(sample.equals(Buffer.alloc(BS)));
  t.equal(upstream.fetchCalls.length, 0, 'nothing fetched');
});
