/**
 * References to the destination's own blocks over a real wire session: a
 * block whose landed checksum is on record is taken without a hash, and a
 * block the VM changed after it landed (write, write-zeroes, trim, or a write
 * racing the resolve) is never honoured from the record: the image and what
 * the VM reads end up exactly the VM's bytes where it wrote and the source's
 * elsewhere. A restarted destination (a new record) hashes again.
 */
import t, { Test } from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { BlockMap } from '../src/store/block-map';
import { ChecksumGuardDevice } from '../src/store/checksum-guard-device';
import { FileDevice } from '../src/store/file-device';
import { LandedChecksums } from '../src/store/landed-checksums';
import { MigratingDevice } from '../src/migrate/migrating-device';
import type { LocalBlocks } from '../src/upstream/upstream';
import { startWireSession } from './helpers/wire-source';

const BS = 4096;
const BLOCKS = 16;
/** Block 8 repeats block 0: fetched after it in the background, it comes as a reference to block 0. */
const COPY = 8;

function makeImage(): Buffer {
  const image = crypto.randomBytes(BLOCKS * BS);
  image.copy(image, COPY * BS, 0, BS);
  return image;
}

async function setUp(t: Test, image: Buffer) {
  const { dir, source, upstream } = await startWireSession(t, image, BS, 'ferry-landed-ref-');
  const mapPath = path.join(dir, 'state');
  let map = BlockMap.create(mapPath, {
    blockSize: BS,
    imageSize: image.length,
    sourceIdentity: upstream.identity,
    sourceUrl: upstream.description,
    phase: 'post-copy',
    trackingEpoch: '',
    session: 'test',
  });
  const imagePath = path.join(dir, 'dest.img');
  const devices: MigratingDevice[] = [];
  /** A destination process over the image and map: its own record, as after a start or restart. */
  const open = (readHook?: (offset: number) => Promise<void>) => {
    const local = FileDevice.open(imagePath, fs.existsSync(imagePath) ? {} : { createSize: image.length });
    const landed = new LandedChecksums(map.blockCount);
    const guarded = new ChecksumGuardDevice(local, landed, BS);
    const localBlocks: LocalBlocks = {
      isHeld: (b) => map.isHeld(b),
      read: async (offset, into) => {
        await readHook?.(offset);
        await local.read(offset, into);
      },
      landed,
    };
    upstream.attachLocal(localBlocks);
    const device = new MigratingDevice(guarded, map, upstream, { fetchTimeoutMs: 30_000, landed }, source.log);
    devices.push(device);
    return { device, landed };
  };
  /** Stops the destination (its held bits durable) and opens it again, as a restarted process does. */
  const restart = async (device: MigratingDevice) => {
    await device.flush();
    await device.close();
    devices.splice(devices.indexOf(device), 1);
    map.close();
    map = BlockMap.open(mapPath);
    return open();
  };
  // tap runs teardowns last first: the devices close before the session's upstream and source.
  t.teardown(async () => {
    for (const d of devices) await d.close();
    map.close();
  });
  /** Background-fetches block b and lands it, as the background copy does. */
  const copyBlock = async (device: MigratingDevice, b: number) => {
    const run = device.claimBackgroundRun(b, 1, b + 1);
    if (!run) throw new Error(`block ${b} is not missing`);
    await device.fetchBackgroundRun(run);
  };
  const imageBytes = (b: number) => fs.readFileSync(imagePath).subarray(b * BS, (b + 1) * BS);
  const vmRead = async (device: MigratingDevice, b: number) => {
    const into = Buffer.alloc(BS);
    await device.read(b * BS, into);
    return into;
  };
  return { upstream, open, restart, copyBlock, imageBytes, vmRead };
}

t.test('a reference to a block landed and untouched is taken on its record, without a hash', async (t) => {
  const image = makeImage();
  const { upstream, open, copyBlock, imageBytes } = await setUp(t, image);
  const { device, landed } = open();
  await copyBlock(device, 0);
  t.ok(landed.checksumOf(0) !== null, 'block 0 landed with its checksum');
  await copyBlock(device, COPY);
  t.equal(upstream.stats.blocksByEncoding.reference, 1, 'block 8 came as a reference');
  t.equal(upstream.stats.referencesUsed, 1);
  t.same(upstream.referenceChecks, { fromRecord: 1, hashed: 0 }, 'taken on the record');
  t.same(imageBytes(COPY), image.subarray(0, BS));
  t.same(landed.checksumOf(COPY), landed.checksumOf(0), 'the referenced block landed with the same checksum');
});

t.test('references to consecutive blocks with a block of bytes between them land each at its own place', async (t) => {
  // Blocks 8 and 10 repeat blocks 0 and 1; block 9 between them is new. One run of 8–10 comes
  // as a reference, bytes, a reference: the two references name consecutive blocks, but their
  // places in the run are not, and each must be read to its own place.
  const image = crypto.randomBytes(BLOCKS * BS);
  image.copy(image, 8 * BS, 0, BS);
  image.copy(image, 10 * BS, BS, 2 * BS);
  const { upstream, open, imageBytes } = await setUp(t, image);
  const { device } = open();
  const first = device.claimBackgroundRun(0, 2, 2);
  await device.fetchBackgroundRun(first!);
  const run = device.claimBackgroundRun(8, 3, 11);
  t.equal(run?.length, 3, 'blocks 8–10 in one run');
  await device.fetchBackgroundRun(run!);
  t.equal(upstream.stats.blocksByEncoding.reference, 2, 'blocks 8 and 10 came as references');
  for (const b of [8, 9, 10]) t.same(imageBytes(b), image.subarray(b * BS, (b + 1) * BS), `block ${b} is the source's`);
});

const changes: Array<[string, (d: MigratingDevice) => Promise<Buffer>]> = [
  [
    'a VM write',
    async (d) => {
      const mine = crypto.randomBytes(BS);
      await d.write(0, mine, false);
      return mine;
    },
  ],
  [
    'a partial VM write',
    async (d) => {
      const mine = crypto.randomBytes(100);
      await d.write(50, mine, false);
      return mine; // at byte 50 of block 0; the rest of it stays the source's
    },
  ],
  [
    'write-zeroes',
    async (d) => {
      await d.zero(0, BS, { fua: false, noHole: true, fastZero: false });
      return Buffer.alloc(BS);
    },
  ],
  [
    'a trim',
    async (d) => {
      await d.trim(0, BS, false);
      return Buffer.alloc(BS);
    },
  ],
];

for (const [what, change] of changes) {
  t.test(`a reference to a block changed by ${what} after it landed is never honoured from the record`, async (t) => {
    const image = makeImage();
    const { upstream, open, copyBlock, imageBytes, vmRead } = await setUp(t, image);
    const { device } = open();
    await copyBlock(device, 0);
    let expect0 = await change(device);
    if (expect0.length !== BS) {
      const whole = Buffer.from(image.subarray(0, BS));
      expect0.copy(whole, 50);
      expect0 = whole;
    }
    await copyBlock(device, COPY);
    t.equal(upstream.stats.blocksByEncoding.reference, 1, 'block 8 came as a reference to block 0');
    t.equal(upstream.referenceChecks.fromRecord, 0, 'not taken on the record');
    t.equal(upstream.referenceChecks.hashed, 1, 'read back and hashed');
    t.equal(upstream.stats.referencesRefused, 1, "refused: block 0 holds the VM's bytes now");
    t.same(imageBytes(0), expect0, "block 0 is the VM's");
    t.same(imageBytes(COPY), image.subarray(COPY * BS, (COPY + 1) * BS), "block 8 is the source's");
    t.same(await vmRead(device, 0), expect0);
    t.same(await vmRead(device, COPY), image.subarray(COPY * BS, (COPY + 1) * BS));
  });
}

/** A destination whose first read of block 0 (the resolver's, of a referenced block) waits for a VM write of `mine` to it. */
function openRacingWrite(
  open: Awaited<ReturnType<typeof setUp>>['open'],
  mine: Buffer,
): { device: MigratingDevice; raced: boolean } {
  const racing = { raced: false } as { device: MigratingDevice; raced: boolean };
  racing.device = open(async (offset) => {
    if (offset !== 0 || racing.raced) return;
    racing.raced = true;
    await racing.device.write(0, mine, false);
  }).device;
  return racing;
}

t.test('a VM write racing the resolve (issued between the record check and the read) is never missed', async (t) => {
  const image = makeImage();
  const { upstream, open, copyBlock, imageBytes, vmRead } = await setUp(t, image);
  const mine = crypto.randomBytes(BS);
  // The resolver has checked the record for block 0 and asks to read it: the VM writes it first.
  const racing = openRacingWrite(open, mine);
  const { device } = racing;
  await copyBlock(device, 0);
  await copyBlock(device, COPY);
  t.ok(racing.raced, 'the write raced the resolve');
  t.equal(upstream.stats.blocksByEncoding.reference, 1);
  t.equal(upstream.referenceChecks.fromRecord, 0, 'the record was checked, then the change was seen');
  t.equal(upstream.stats.referencesRefused, 1);
  t.same(imageBytes(0), mine);
  t.same(imageBytes(COPY), image.subarray(COPY * BS, (COPY + 1) * BS));
  t.same(await vmRead(device, COPY), image.subarray(COPY * BS, (COPY + 1) * BS));
});

t.test('a VM write still in flight when the resolve reads is seen, and the read bytes are hashed', async (t) => {
  const image = makeImage();
  const { upstream, open, copyBlock, imageBytes } = await setUp(t, image);
  const mine = crypto.randomBytes(BS);
  let device: MigratingDevice | null = null;
  let write: Promise<void> | null = null;
  ({ device } = open((offset) => {
    // Issued, not awaited: the read below may see the old bytes, the new ones, or a mix.
    if (offset === 0 && !write) write = device!.write(0, mine, false);
    return Promise.resolve();
  }));
  await copyBlock(device, 0);
  await copyBlock(device, COPY);
  await write;
  t.equal(upstream.referenceChecks.fromRecord, 0, 'not taken on the record');
  t.equal(upstream.referenceChecks.hashed, 1);
  t.same(imageBytes(0), mine);
  t.same(imageBytes(COPY), image.subarray(COPY * BS, (COPY + 1) * BS), "block 8 is the source's either way");
});

t.test('after a restart the record is empty: the reference is hashed, and honoured when the bytes match', async (t) => {
  const image = makeImage();
  const { upstream, open, restart, copyBlock, imageBytes } = await setUp(t, image);
  const first = open();
  await copyBlock(first.device, 0);
  t.ok(first.landed.checksumOf(0) !== null);
  const second = await restart(first.device); // the source session goes on, and still names block 0
  t.equal(second.landed.checksumOf(0), null);
  await copyBlock(second.device, COPY);
  t.equal(upstream.stats.blocksByEncoding.reference, 1);
  t.same(upstream.referenceChecks, { fromRecord: 0, hashed: 1 });
  t.equal(upstream.stats.referencesUsed, 1);
  t.same(imageBytes(COPY), image.subarray(0, BS));
});

/** Blocks 8–12 all repeat block 0 (a stretch of one block repeated, as a file system's fill is). */
function repeatedImage(): Buffer {
  const image = crypto.randomBytes(BLOCKS * BS);
  for (let b = 8; b <= 12; b++) image.copy(image, b * BS, 0, BS);
  return image;
}

t.test('references in one batch to the same landed block read it once', async (t) => {
  const image = repeatedImage();
  const { upstream, open, copyBlock, imageBytes } = await setUp(t, image);
  const reads: number[] = [];
  const { device } = open(async (offset) => void reads.push(offset));
  await copyBlock(device, 0);
  const run = device.claimBackgroundRun(8, 5, 13);
  t.equal(run?.length, 5, 'blocks 8–12 in one run');
  await device.fetchBackgroundRun(run!);
  const local = upstream.referenceChecks.fromRecord;
  t.ok(local >= 2, `references to block 0 taken on its record: ${local}`);
  t.same(
    reads.filter((o) => o === 0),
    [0],
    'block 0 was read once for all of them',
  );
  for (let b = 8; b <= 12; b++) t.same(imageBytes(b), image.subarray(0, BS), `block ${b} is block 0's bytes`);
});

t.test('a VM write racing the one read of a repeated block: none of its references is taken', async (t) => {
  const image = repeatedImage();
  const { upstream, open, copyBlock, imageBytes, vmRead } = await setUp(t, image);
  const mine = crypto.randomBytes(BS);
  const racing = openRacingWrite(open, mine);
  const { device } = racing;
  await copyBlock(device, 0);
  const run = device.claimBackgroundRun(8, 5, 13);
  await device.fetchBackgroundRun(run!);
  t.ok(racing.raced, 'the write raced the resolve');
  t.equal(upstream.referenceChecks.fromRecord, 0, 'none taken on the record');
  t.ok(upstream.stats.referencesRefused >= 1, `refused: ${upstream.stats.referencesRefused}`);
  t.same(imageBytes(0), mine);
  for (let b = 8; b <= 12; b++) {
    t.same(imageBytes(b), image.subarray(0, BS), `block ${b} is the source's`);
    t.same(await vmRead(device, b), image.subarray(0, BS), `and reads as the source's`);
  }
});
