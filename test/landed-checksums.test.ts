/**
 * The landed-checksum record and the guard every change to the image passes
 * through: an entry exists only for a block whose one change since it was
 * recorded was its own landing, and any write, zero or trim (started before,
 * during or after) drops it or keeps it from being recorded.
 */
import t from 'tap';
import type { BlockDevice, Extent, ZeroOptions } from '../src/store/block-device';
import { ChecksumGuardDevice } from '../src/store/checksum-guard-device';
import { LANDED_SLOT_BYTES, LandedChecksums } from '../src/store/landed-checksums';

const BS = 4096;

/** An image whose changes complete only when the test releases them. */
class HeldDevice implements BlockDevice {
  readonly size = 64 * BS;
  readonly readOnly = false;
  readonly blockSize = { minimum: 1, preferred: BS, maximum: 1 << 20 };
  readonly canTrim = true;
  readonly canFastZero = true;
  readonly pending: Array<() => void> = [];
  zeroedNow: Array<[number, number]> = [];
  private change(): Promise<void> {
    return new Promise((resolve) => this.pending.push(resolve));
  }
  read(): Promise<void> {
    return Promise.resolve();
  }
  write(): Promise<void> {
    return this.change();
  }
  trim(): Promise<void> {
    return this.change();
  }
  zero(_o: number, _l: number, _opts: ZeroOptions): Promise<void> {
    return this.change();
  }
  zeroNow(offset: number, length: number): void {
    this.zeroedNow.push([offset, length]);
  }
  flush(): Promise<void> {
    return Promise.resolve();
  }
  cache(): Promise<void> {
    return Promise.resolve();
  }
  status(_o: number, length: number): Promise<Extent[]> {
    return Promise.resolve([{ length, flags: 0 }]);
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
  releaseAll(): void {
    for (const r of this.pending.splice(0)) r();
  }
}

function setUp(slots?: number) {
  const record = new LandedChecksums(64, slots);
  const inner = new HeldDevice();
  const image = new ChecksumGuardDevice(inner, record, BS);
  /** Lands blocks [first, first+count) with checksums 100+block, as MigratingDevice.land does. */
  const land = async (first: number, count: number) => {
    const landing = record.landing(first, count);
    const sums = BigUint64Array.from({ length: count }, (_, k) => BigInt(100 + first + k));
    const write = image.write(first * BS, Buffer.alloc(count * BS), false);
    inner.releaseAll();
    await write;
    landing.landed(sums, 0);
  };
  return { record, inner, image, land };
}

t.test('a landing records its checksums; a reference to them needs no hash', async (t) => {
  const { record, land } = setUp();
  await land(3, 4);
  for (let b = 3; b < 7; b++) t.equal(record.checksumOf(b), BigInt(100 + b));
  t.equal(record.checksumOf(2), null);
  const w = record.watch(4, 104n);
  t.ok(w >= 0, 'recorded and nothing changing it');
  t.ok(record.unchanged(4, w));
  t.equal(record.watch(4, 999n), -1, 'another checksum is not vouched for');
  t.equal(record.watch(2, 102n), -1, 'a block never landed is not vouched for');
});

t.test('every kind of change drops the entries it touches, before it is issued', async (t) => {
  const { record, inner, image, land } = setUp();
  const changes: Array<[string, () => Promise<void>]> = [
    ['VM write (partial block)', () => image.write(5 * BS + 100, Buffer.alloc(10), false)],
    ['write-zeroes', () => image.zero(5 * BS, BS, { fua: false, noHole: false, fastZero: false })],
    ['trim', () => image.trim(4 * BS, 2 * BS, false)],
    ['a later landing of the block', () => image.write(5 * BS, Buffer.alloc(BS), false)],
  ];
  for (const [what, change] of changes) {
    await land(3, 4);
    t.equal(record.checksumOf(5), 105n);
    const w = record.watch(5, 105n);
    const done = change();
    t.equal(record.checksumOf(5), null, `${what}: dropped as it is issued`);
    t.equal(record.watch(5, 105n), -1, `${what}: not vouched for while in flight`);
    t.notOk(record.unchanged(5, w), `${what}: a reader that watched before sees the change`);
    inner.releaseAll();
    await done;
    t.equal(record.checksumOf(5), null, `${what}: still dropped once done`);
    t.equal(record.checksumOf(3), 103n, `${what}: blocks it did not touch keep theirs`);
  }
  await land(3, 4);
  image.zeroNow!(6 * BS, BS);
  t.same(inner.zeroedNow, [[6 * BS, BS]]);
  t.equal(record.checksumOf(6), null, 'a zero done at once drops it too');
  t.equal(record.checksumOf(5), 105n);
});

t.test('a failed change drops the entries as well', async (t) => {
  const record = new LandedChecksums(64);
  const failing = new HeldDevice();
  failing.write = () => Promise.reject(new Error('EIO'));
  const image = new ChecksumGuardDevice(failing, record, BS);
  const landing = record.landing(1, 1);
  await t.rejects(image.write(BS, Buffer.alloc(BS), false));
  landing.landed(BigUint64Array.of(7n), 0);
  t.equal(record.checksumOf(1), null, 'a landing whose write failed records nothing');
  const ok = new HeldDevice();
  const record2 = new LandedChecksums(64);
  const image2 = new ChecksumGuardDevice(ok, record2, BS);
  const landing2 = record2.landing(1, 1);
  const write = image2.write(BS, Buffer.alloc(BS), false);
  ok.releaseAll();
  await write;
  landing2.landed(BigUint64Array.of(7n), 0);
  const w = record2.watch(1, 7n);
  t.ok(w >= 0);
  ok.write = () => Promise.reject(new Error('EIO'));
  await t.rejects(image2.write(BS, Buffer.alloc(1), false));
  t.equal(record2.checksumOf(1), null, 'a failed VM write drops the entry');
  t.notOk(record2.unchanged(1, w));
});

t.test('a change that overlaps a landing in time keeps it from being recorded', async (t) => {
  // Started before the landing and still in flight when it ends.
  {
    const { record, inner, image } = setUp();
    const vm = image.write(2 * BS, Buffer.alloc(BS), false);
    const landing = record.landing(2, 1);
    const own = image.write(2 * BS, Buffer.alloc(BS), false);
    inner.pending.pop()!(); // only the landing's own write completes
    await own;
    landing.landed(BigUint64Array.of(9n), 0);
    t.equal(record.checksumOf(2), null, 'a VM write still in flight: nothing recorded');
    inner.releaseAll();
    await vm;
    t.equal(record.checksumOf(2), null);
  }
  // Started during the landing's write, done before it.
  {
    const { record, inner, image } = setUp();
    const landing = record.landing(2, 1);
    const own = image.write(2 * BS, Buffer.alloc(BS), false);
    const vm = image.trim(2 * BS, BS, false);
    inner.pending.pop()!();
    await vm;
    inner.releaseAll();
    await own;
    landing.landed(BigUint64Array.of(9n), 0);
    t.equal(record.checksumOf(2), null, 'a trim during the landing: nothing recorded');
  }
  // Started and done before the landing began: the landing's bytes are the last, and are recorded.
  {
    const { record, inner, image, land } = setUp();
    const vm = image.write(2 * BS, Buffer.alloc(BS), false);
    inner.releaseAll();
    await vm;
    await land(2, 1);
    t.equal(record.checksumOf(2), 102n);
  }
});

t.test('a checksum of zero is never recorded; out-of-range blocks are never vouched for', async (t) => {
  const { record, land } = setUp();
  const landing = record.landing(0, 1);
  landing.landed(BigUint64Array.of(0n), 0);
  t.equal(record.checksumOf(0), null);
  await land(0, 1);
  t.equal(record.watch(0, 0n), -1);
  t.equal(record.watch(-1, 1n), -1);
  t.equal(record.watch(64, 1n), -1);
  t.notOk(record.unchanged(0, -1));
});

t.test('bounded: blocks sharing a slot displace each other, never answer for each other', async (t) => {
  const { record, image, inner, land } = setUp(8);
  t.equal(record.slots, 8);
  t.equal(record.bytes, 8 * LANDED_SLOT_BYTES);
  await land(1, 1);
  await land(9, 1); // the same slot
  t.equal(record.checksumOf(1), null, 'displaced');
  t.equal(record.watch(1, 109n), -1, "block 9's checksum does not answer for block 1");
  t.equal(record.checksumOf(9), 109n);
  const w = record.watch(9, 109n);
  const change = image.write(1 * BS, Buffer.alloc(BS), false); // a change to block 1 moves the shared slot
  t.notOk(record.unchanged(9, w), 'a neighbour in the slot costs the entry, never correctness');
  inner.releaseAll();
  await change;
  // A landing wider than the table: every block's checksum is right for the block the slot names.
  await land(0, 20);
  for (let b = 0; b < 20; b++) {
    const sum = record.checksumOf(b);
    if (sum !== null) t.equal(sum, BigInt(100 + b));
  }
  t.equal(new LandedChecksums(1 << 30).slots, 1 << 18, 'a large image gets the default bound');
  t.equal(new LandedChecksums(10).slots, 10, 'a small one a slot per block');
});

t.test('a new record (a restart) vouches for nothing', async (t) => {
  const { land } = setUp();
  await land(0, 8);
  const fresh = new LandedChecksums(64);
  for (let b = 0; b < 8; b++) t.equal(fresh.watch(b, BigInt(100 + b)), -1);
});
