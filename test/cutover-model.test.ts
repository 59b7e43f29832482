/**
 * The cutover against a reference model. A source VM writes while the
 * destination warms up (background copy, zero scan, reads from its own VM
 * before cutover); write reports, fetched data and zero answers arrive in
 * random orders; the cutover comes from the destination's operator, its VM's
 * first write, or the source's operator; then the destination's VM writes.
 * Every read must return the model's bytes (the latest acknowledged write,
 * wherever it was made), and the final image must equal the model.
 * Replay a failure with FERRY_SEED=<seed>.
 */
import t, { type Test } from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { creatingPath, Migration, type MigrationOptions } from '../src/migrate/migration';
import type { WriteTracking } from '../src/upstream/upstream';
import { TrackingSource } from './helpers/tracking-source';
import { ImageLockedError, lockImage } from '../src/store/image-lock';
import { tempDir } from './helpers/temp-dir';

const log = pino({ level: 'silent' });
const BS = 4096;
const BLOCKS = 48;

/** A small seeded generator (mulberry32), so a failing run can be replayed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

/** A destination migrating in `dir` from `source`, with small batches so the copy interleaves. */
function migrationOptions(dir: string, source: TrackingSource): MigrationOptions {
  return {
    imagePath: path.join(dir, 'img'),
    statePath: path.join(dir, 'state'),
    sourceUrl: 'tracking://source',
    blockSize: BS,
    fetchTimeoutMs: 30_000,
    persistIntervalMs: 50,
    rateLimit: null,
    copy: { batchBlocks: 4, windowBytes: 8 * BS, storeErrorBackoffMs: 100 },
    openUpstream: async () => source,
  };
}

type Trigger = 'ctl' | 'vm-write' | 'source';

async function runModel(
  t: Test,
  seed: number,
  tracking: WriteTracking,
  trigger: Trigger,
): Promise<{ refetched: number }> {
  const random = rng(seed);
  const int = (n: number): number => Math.floor(random() * n);
  const size = BLOCKS * BS + 1000; // a short last block
  const initial = Buffer.alloc(size);
  for (let b = 0; b < BLOCKS; b++) if (b % 3 !== 0) crypto.randomFillSync(initial, b * BS, BS);
  // One report in ten is slow: it arrives after the cutover whose final set carried it.
  const source = new TrackingSource(
    Buffer.from(initial),
    () => int(4),
    tracking,
    () => (random() < 0.1 ? 30 + int(30) : int(4)),
  );
  const model = Buffer.from(initial);
  const dir = tempDir(t);
  const migration = await Migration.open(migrationOptions(dir, source), log);
  t.teardown(() => migration.close());
  const device = migration.device;
  migration.start();
  const completed = new Promise<void>((resolve) => {
    const poll = (): void => {
      if (migration.phase === 'complete') resolve();
      else setImmediate(poll);
    };
    poll();
  });

  const randomRange = (): { offset: number; length: number } => {
    const offset = int(size - 1);
    const whole = random() < 0.5;
    if (whole) {
      const first = Math.floor(offset / BS);
      const count = 1 + int(3);
      const o = first * BS;
      return { offset: o, length: Math.min(count * BS, size - o) };
    }
    return { offset, length: 1 + int(Math.min(3 * BS, size - offset - 1)) };
  };
  const check = async (when: string): Promise<boolean> => {
    const { offset, length } = randomRange();
    const got = Buffer.alloc(length);
    await device.read(offset, got);
    const want = model.subarray(offset, offset + length);
    if (!got.equals(want)) {
      t.fail(`seed ${seed}: read ${offset}+${length} ${when} returned stale bytes`);
      return false;
    }
    return true;
  };
  /** Lets fetches, reports and landings interleave with what comes next. */
  const letRun = async (): Promise<void> => {
    for (let i = int(6); i > 0; i--) await new Promise((r) => setImmediate(r));
  };

  // Before cutover: the source's VM writes, this side's VM only reads.
  let ok = true;
  for (let step = 0; step < 120 && ok; step++) {
    const r = random();
    if (r < 0.45) {
      const { offset, length } = randomRange();
      const data = random() < 0.2 ? Buffer.alloc(length) : crypto.randomBytes(length);
      source.vmWrite(offset, data);
      data.copy(model, offset);
    } else if (r < 0.75) ok = await check('before cutover');
    await letRun();
  }
  t.equal(migration.phase, 'warming', `seed ${seed}: still warming before the trigger`);

  // The switch-over: the source VM stops; one trigger makes this side the authority.
  if (trigger === 'ctl') await migration.cutover();
  else if (trigger === 'source') source.cutoverHere();
  const firstWrite = randomRange();
  const data = crypto.randomBytes(firstWrite.length);
  await device.write(firstWrite.offset, data, false); // waits for the cutover in every case
  data.copy(model, firstWrite.offset);
  t.equal(device.phase, 'post-copy', `seed ${seed}: post-copy after ${trigger}`);
  t.throws(() => source.vmWrite(0, Buffer.alloc(1)), /EPERM/, 'the source is fenced');

  // After cutover: this side's VM reads and writes; the copy finishes.
  for (let step = 0; step < 80 && ok; step++) {
    // Halfway, let every late report from before the cutover arrive: it must not undo this side's writes.
    if (step === 40) await source.reportsDelivered();
    const r = random();
    if (r < 0.4) {
      const { offset, length } = randomRange();
      if (random() < 0.2) {
        await device.zero(offset, length, { fua: false, noHole: false, fastZero: false });
        model.fill(0, offset, offset + length);
      } else {
        const bytes = crypto.randomBytes(length);
        await device.write(offset, bytes, random() < 0.1);
        bytes.copy(model, offset);
      }
    } else if (r < 0.8) ok = await check('after cutover');
    await letRun();
  }
  await completed;
  const image = fs.readFileSync(path.join(dir, 'img'));
  t.ok(image.equals(model), `seed ${seed}: final image equals the model (${tracking}, ${trigger})`);
  return { refetched: device.counters.blocksInvalidated };
}

const seeds = process.env.FERRY_SEED
  ? [Number(process.env.FERRY_SEED)]
  : Array.from({ length: 6 }, () => crypto.randomInt(1, 2 ** 31));

for (const tracking of ['stream', 'bitmap', 'none'] as const) {
  for (const trigger of ['ctl', 'vm-write', 'source'] as const) {
    if (trigger === 'source' && tracking !== 'stream') continue; // only a ferry source pushes its cutover
    t.test(`${tracking} source, cutover by ${trigger}`, async (t) => {
      let refetched = 0;
      for (const seed of seeds) {
        t.comment(`seed ${seed}`);
        refetched += (await runModel(t, seed, tracking, trigger)).refetched;
      }
      if (tracking === 'stream')
        t.ok(refetched > 0, `copied blocks the source rewrote were fetched again (${refetched})`);
    });
  }
}

t.test('without write tracking nothing is copied before cutover', async (t) => {
  const content = crypto.randomBytes(16 * BS);
  const source = new TrackingSource(Buffer.from(content), () => 0, 'none');
  const dir = tempDir(t);
  const migration = await Migration.open(migrationOptions(dir, source), log);
  t.teardown(() => migration.close());
  migration.start();
  const got = Buffer.alloc(BS);
  await migration.device.read(0, got); // QEMU's early sector-0 read
  t.ok(got.equals(content.subarray(0, BS)));
  t.equal(migration.device.map.heldCount, 0, 'the read kept nothing');
  t.equal(source.fetches, 1, 'only the read reached the source');
  const status = migration.status();
  t.equal(status.phase, 'warming');
  t.match(status.warmup, /nothing is copied before cutover/);
  t.equal(status.passThroughReads, 1);
  await t.rejects(migration.detach(), /cannot detach/);
});

t.test('abort before cutover removes image and state; after cutover it is refused', async (t) => {
  const content = crypto.randomBytes(8 * BS);
  const source = new TrackingSource(Buffer.from(content), () => 0, 'stream');
  const dir = tempDir(t);
  const options = migrationOptions(dir, source);
  const first = await Migration.open(options, log);
  first.start();
  await first.abort();
  t.notOk(fs.existsSync(options.imagePath), 'image removed');
  t.notOk(fs.existsSync(options.statePath), 'state removed');
  t.notOk(source.fenced, 'the source is untouched');

  const second = await Migration.open(options, log);
  t.teardown(() => second.close());
  second.start();
  await second.cutover();
  await t.rejects(second.abort(), /cannot abort: the cutover has happened/);
  t.ok(fs.existsSync(options.imagePath));
});

t.test('abort removes the image and state while it still holds their locks', async (t) => {
  const source = new TrackingSource(crypto.randomBytes(8 * BS), () => 0, 'stream');
  const options = migrationOptions(tempDir(t), source);
  const migration = await Migration.open(options, log);
  migration.start();
  // Another process's lock attempt at the moment each file is removed: it must still be refused.
  const attempts: string[] = [];
  const rmSync = fs.rmSync;
  fs.rmSync = ((target: fs.PathLike, opts?: fs.RmOptions) => {
    const file = String(target);
    if (file === options.imagePath || file === creatingPath(options.statePath)) {
      try {
        lockImage(file, 'exclusive')();
        attempts.push(`${path.basename(file)}: lock taken`);
      } catch (e) {
        attempts.push(`${path.basename(file)}: ${e instanceof ImageLockedError ? 'refused' : String(e)}`);
      }
    }
    rmSync(target, opts);
  }) as typeof fs.rmSync;
  t.teardown(() => void (fs.rmSync = rmSync));
  await migration.abort();
  fs.rmSync = rmSync;
  t.same(
    attempts.sort(),
    ['img: refused', 'state.creating: refused'],
    'both files were locked when removed (the state under its abort record name)',
  );
  t.notOk(fs.existsSync(options.imagePath));
  t.notOk(fs.existsSync(options.statePath));
});

t.test('an abort killed between its steps is finished by the next start, never kept as a migration', async (t) => {
  const content = crypto.randomBytes(8 * BS);
  const options = migrationOptions(tempDir(t), new TrackingSource(Buffer.from(content), () => 0, 'stream'));
  const migration = await Migration.open(options, log);
  migration.start();
  while (migration.device.map.heldCount < 8) await new Promise((r) => setImmediate(r));
  // The process dies when the abort is about to remove the image: its state is already renamed.
  const rmSync = fs.rmSync;
  fs.rmSync = ((target: fs.PathLike, opts?: fs.RmOptions) => {
    if (String(target) === options.imagePath) throw new Error('killed');
    rmSync(target, opts);
  }) as typeof fs.rmSync;
  t.teardown(() => void (fs.rmSync = rmSync));
  await t.rejects(migration.abort(), /killed/);
  fs.rmSync = rmSync;
  t.ok(fs.existsSync(options.imagePath), 'the image is still there');
  t.notOk(fs.existsSync(options.statePath), 'no migration state: the aborted migration cannot be resumed');
  t.ok(fs.existsSync(creatingPath(options.statePath)), 'the record says the image is to be removed');

  // The next start removes the image and starts afresh: nothing of the aborted copy is served.
  const source = new TrackingSource(Buffer.from(content), () => 0, 'stream');
  const again = await Migration.open({ ...options, openUpstream: async () => source }, log);
  t.teardown(() => again.close());
  t.equal(again.device.map.heldCount, 0, 'a fresh migration: no block held');
  t.notOk(fs.existsSync(creatingPath(options.statePath)), 'the record is gone');
});

t.test('a restart under other write tracking makes every copied block missing again', async (t) => {
  const content = crypto.randomBytes(32 * BS);
  const dir = tempDir(t);
  const options = (source: TrackingSource): MigrationOptions => migrationOptions(dir, source);
  const bitmap = new TrackingSource(Buffer.from(content), () => 0, 'bitmap');
  bitmap.trackingEpoch = 'bitmap:first';
  const warm = await Migration.open(options(bitmap), log);
  warm.start();
  while (warm.device.map.heldCount < 32) await new Promise((r) => setImmediate(r));
  await warm.close();

  // Restarted without the bitmap: nothing can say which copied blocks the source VM rewrote since.
  const untracked = new TrackingSource(Buffer.from(content), () => 0, 'none');
  const again = await Migration.open(options(untracked), log);
  t.teardown(() => again.close());
  while (again.device.map.heldCount > 0 || again.device.map.trackingEpoch !== '')
    await new Promise((r) => setImmediate(r));
  t.equal(again.device.map.heldCount, 0, 'every copied block is missing again');
  t.equal(again.device.map.trackingEpoch, '', 'the new tracking is recorded');
  t.equal(again.status().blocksInvalidated, 32);
});

t.test(
  'a cutover waits for tracking checks still queued: a write the restarted source never reported is not served stale',
  async (t) => {
    const content = crypto.randomBytes(8 * BS);
    const source = new TrackingSource(Buffer.from(content), () => 0, 'stream');
    // No periodic persist: the only flushes are the ones this test stalls or lets through.
    const options = { ...migrationOptions(tempDir(t), source), persistIntervalMs: 3_600_000 };
    const migration = await Migration.open(options, log);
    t.teardown(() => migration.close());
    const device = migration.device;
    const turns = async (until: () => boolean): Promise<void> => {
      while (!until()) await new Promise((r) => setImmediate(r));
    };
    migration.start();
    await turns(() => device.map.heldCount === 8);

    // The source restarts under new tracking; the check that causes waits in a slow flush.
    let releaseFlush!: () => void;
    const slow = new Promise<void>((r) => (releaseFlush = r));
    const flush = device.flush.bind(device);
    let stalled = 0;
    device.flush = async () => {
      if (stalled++ === 0) await slow;
      return flush();
    };
    source.trackingEpoch = 'epoch-2';
    source.emit('connected');
    await turns(() => stalled === 1); // every block made missing, the check in its flush
    await turns(() => device.map.heldCount === 8); // copied again from the restarted source
    // Its VM writes block 0; it dies before reporting it and comes back under tracking that never knew it.
    content.fill(0x3c, 0, BS);
    content.copy(source.content, 0, 0, BS);
    source.trackingEpoch = 'epoch-3';
    source.emit('connected');

    let cutOver = false;
    const cutover = migration.cutover().then(() => (cutOver = true));
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    t.notOk(cutOver, 'the cutover waits for the queued check');
    releaseFlush();
    await cutover;
    t.equal(device.phase, 'post-copy');
    const got = Buffer.alloc(BS);
    await device.read(0, got);
    t.ok(got.equals(content.subarray(0, BS)), 'block 0 is read as the source VM last wrote it');
  },
);
