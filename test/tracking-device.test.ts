import t from 'tap';
import pino from 'pino';
import type { BlockDevice } from '../src/store/block-device';
import { BlockDeviceError } from '../src/store/block-device';
import { TrackingDevice } from '../src/store/tracking-device';

/** A device whose writes complete when the test says so. */
function heldDevice(): { device: BlockDevice; release: () => void; started: Promise<void> } {
  let release!: () => void;
  let started!: () => void;
  const startedP = new Promise<void>((r) => (started = r));
  const done = new Promise<void>((r) => (release = r));
  const device = {
    size: 1 << 20,
    readOnly: false,
    blockSize: { minimum: 1, preferred: 4096, maximum: 1 << 20 },
    canTrim: true,
    canFastZero: true,
    read: async () => undefined,
    write: async () => {
      started();
      await done;
    },
    flush: async () => undefined,
    trim: async () => undefined,
    zero: async () => undefined,
    cache: async () => undefined,
    status: async (_o: number, length: number) => [{ length, flags: 0 }],
    close: async () => undefined,
  } satisfies BlockDevice;
  return { device, release, started: startedP };
}

t.test(
  'the fence waits for a write in progress, which is reported before the fence completes; later writes get EPERM',
  async (t) => {
    const { device, release, started } = heldDevice();
    const tracking = new TrackingDevice(device, pino({ level: 'silent' }));
    const marked: Array<[number, number]> = [];
    tracking.addSink({ markDirty: (o, l) => marked.push([o, l]) });
    const write = tracking.write(8192, Buffer.alloc(100), false);
    await started;
    let fenced = false;
    const fence = tracking.fence().then(() => (fenced = true));
    await new Promise((r) => setImmediate(r));
    t.notOk(fenced, 'not fenced while the write is in progress');
    t.same(marked, [], 'a write is reported only once it completed');
    release();
    await write;
    await fence;
    t.same(marked, [[8192, 100]], 'the write was reported before the fence completed');
    for (const op of [
      () => tracking.write(0, Buffer.alloc(1), false),
      () => tracking.trim(0, 4096, false),
      () => tracking.zero(0, 4096, { fua: false, noHole: false, fastZero: false }),
    ]) {
      const err = await op().then(
        () => null,
        (e: unknown) => e,
      );
      t.ok(err instanceof BlockDeviceError && err.errno === 'EPERM', `refused with EPERM (${String(err)})`);
    }
    t.equal(tracking.refusedWrites, 3);
    t.same(marked, [[8192, 100]], 'refused writes are not reported');
    tracking.unfence();
    await tracking.trim(0, 4096, false);
    t.same(marked.at(-1), [0, 4096], 'unfenced: taken and reported again');
  },
);
