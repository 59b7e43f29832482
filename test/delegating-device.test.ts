/**
 * A layer over a device answers for the device in every call and property
 * it does not change, as the device answers now (not as it did when the
 * layer was made), and offers zeroNow only where the layer defines it: the
 * tracking source never, the checksum guard exactly when its device has it.
 */
import t from 'tap';
import pino from 'pino';
import type { BlockDevice, Extent, ZeroOptions } from '../src/store/block-device';
import { ChecksumGuardDevice } from '../src/store/checksum-guard-device';
import { DelegatingDevice } from '../src/store/delegating-device';
import { LandedChecksums } from '../src/store/landed-checksums';
import { TrackingDevice } from '../src/store/tracking-device';

const BS = 4096;

/** A device that records each call with its arguments and whose properties the test may change. */
class RecordingDevice implements BlockDevice {
  size = 64 * BS;
  readOnly = false;
  blockSize = { minimum: 1, preferred: BS, maximum: 1 << 20 };
  canTrim = true;
  canFastZero = false;
  readonly calls: unknown[][] = [];
  readonly extents: Extent[] = [{ length: 7, flags: 3 }];
  async read(offset: number, into: Buffer): Promise<void> {
    this.calls.push(['read', offset, into]);
    into.fill(0xab);
  }
  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.calls.push(['write', offset, data, fua]);
  }
  async flush(): Promise<void> {
    this.calls.push(['flush']);
  }
  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    this.calls.push(['trim', offset, length, fua]);
  }
  async zero(offset: number, length: number, options: ZeroOptions): Promise<void> {
    this.calls.push(['zero', offset, length, options]);
  }
  async cache(offset: number, length: number): Promise<void> {
    this.calls.push(['cache', offset, length]);
  }
  async status(offset: number, length: number): Promise<Extent[]> {
    this.calls.push(['status', offset, length]);
    return this.extents;
  }
  async close(): Promise<void> {
    this.calls.push(['close']);
  }
}

/** The same, with a zeroNow. */
class ZeroNowDevice extends RecordingDevice {
  zeroNow(offset: number, length: number): void {
    this.calls.push(['zeroNow', offset, length]);
  }
}

class PlainLayer extends DelegatingDevice {}

const layers: Array<[string, (inner: BlockDevice) => BlockDevice]> = [
  ['a layer that changes nothing', (inner) => new PlainLayer(inner)],
  ['the tracking source', (inner) => new TrackingDevice(inner, pino({ level: 'silent' }))],
  ['the checksum guard', (inner) => new ChecksumGuardDevice(inner, new LandedChecksums(64), BS)],
];

for (const [name, layer] of layers) {
  t.test(`${name} passes every call through with its arguments and result`, async (t) => {
    const inner = new RecordingDevice();
    const device = layer(inner);
    const into = Buffer.alloc(10);
    const data = Buffer.alloc(5, 1);
    const zeroOptions = { fua: true, noHole: true, fastZero: false };
    await device.read(BS, into);
    t.same(into, Buffer.alloc(10, 0xab), 'read fills the caller’s buffer');
    await device.write(2 * BS, data, true);
    await device.trim(3 * BS, BS, false);
    await device.zero(4 * BS, 2 * BS, zeroOptions);
    await device.flush();
    await device.cache(5 * BS, BS);
    t.equal(await device.status(6 * BS, 7), inner.extents, 'status answers with the device’s extents');
    await device.close();
    t.same(inner.calls, [
      ['read', BS, into],
      ['write', 2 * BS, data, true],
      ['trim', 3 * BS, BS, false],
      ['zero', 4 * BS, 2 * BS, zeroOptions],
      ['flush'],
      ['cache', 5 * BS, BS],
      ['status', 6 * BS, 7],
      ['close'],
    ]);
    t.equal(inner.calls[0][2], into, 'the same buffer, not a copy');
    t.equal(inner.calls[1][2], data);
  });

  t.test(`${name} reports the device’s properties as they are now`, async (t) => {
    const inner = new RecordingDevice();
    const device = layer(inner);
    t.equal(device.size, 64 * BS);
    t.equal(device.blockSize, inner.blockSize);
    t.equal(device.canTrim, true);
    t.equal(device.canFastZero, false);
    t.equal(device.readOnly, false);
    inner.size = 128 * BS;
    inner.blockSize = { minimum: 512, preferred: 2 * BS, maximum: 1 << 16 };
    inner.canTrim = false;
    inner.canFastZero = true;
    t.equal(device.size, 128 * BS);
    t.equal(device.blockSize, inner.blockSize);
    t.equal(device.canTrim, false);
    t.equal(device.canFastZero, true);
  });
}

t.test('readOnly: the tracking source is always writable, the others say what the device says', async (t) => {
  const inner = new RecordingDevice();
  const tracking = new TrackingDevice(inner, pino({ level: 'silent' }));
  const plain = new PlainLayer(inner);
  const guard = new ChecksumGuardDevice(inner, new LandedChecksums(64), BS);
  inner.readOnly = true;
  t.equal(tracking.readOnly, false);
  t.equal(plain.readOnly, true);
  t.equal(guard.readOnly, true);
  t.throws(() => new TrackingDevice(inner, pino({ level: 'silent' })), /needs a writable image/);
});

t.test('zeroNow is offered only where the layer defines it', async (t) => {
  for (const inner of [new RecordingDevice(), new ZeroNowDevice()]) {
    const plain: BlockDevice = new PlainLayer(inner);
    const tracking: BlockDevice = new TrackingDevice(inner, pino({ level: 'silent' }));
    t.equal(plain.zeroNow, undefined, 'not passed through by a layer that changes nothing');
    t.equal(tracking.zeroNow, undefined, 'the tracking source has none');
  }
  t.equal(new ChecksumGuardDevice(new RecordingDevice(), new LandedChecksums(64), BS).zeroNow, undefined);
  const inner = new ZeroNowDevice();
  const guard = new ChecksumGuardDevice(inner, new LandedChecksums(64), BS);
  t.type(guard.zeroNow, 'function', 'the guard has one where its device does');
  guard.zeroNow!(BS, BS);
  t.same(inner.calls, [['zeroNow', BS, BS]]);
});
