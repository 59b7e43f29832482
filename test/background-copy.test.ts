/**
 * The background copy's window counts wire bytes: runs the source sends as
 * references or zero blocks cost almost nothing on the link, so more of them
 * may be in flight, while image bytes in flight stay under their own ceiling
 * (each is a buffer at the destination until it lands).
 */
import t, { Test } from 'tap';
import { EventEmitter } from 'node:events';
import pino from 'pino';
import { BackgroundCopy } from '../src/migrate/background-copy';
import type { MigratingDevice } from '../src/migrate/migrating-device';
import type { Transit } from '../src/migrate/block-states';
import type { LinkCounters } from '../src/migrate/wire-ratio';
import { HostWindow, type HostWindowMember } from '../src/migrate/host-window';

const BS = 4096;
const BATCH = 16;

/** A device whose fetches settle when the test says, with link counters the test sets. */
class FakeDevice extends EventEmitter {
  map = { blockCount: 1 << 20, blockSize: BS, allHeld: false };
  phase = 'post-copy';
  next = 0;
  pending: Array<{ blocks: number; resolve: () => void }> = [];
  link: LinkCounters = { bytesOnWire: 0, bytesBeforeEncoding: 0 };
  onClaim: (() => void) | null = null;
  urgentBytesInFlight = 0;

  claimBackgroundRun(from: number, maxBlocks: number, limit: number): Transit[] | null {
    const first = Math.max(from, this.next);
    if (first >= limit) return null;
    const n = Math.min(maxBlocks, limit - first);
    this.next = first + n;
    const run = Array.from({ length: n }, (_, i) => ({ block: first + i }) as Transit);
    queueMicrotask(() => this.onClaim?.());
    return run;
  }

  fetchBackgroundRun(run: Transit[]): Promise<void> {
    return new Promise((resolve) => this.pending.push({ blocks: run.length, resolve }));
  }

  /** Completes every fetch in flight; each cost `ratio` wire bytes per image byte. */
  completeAll(ratio: number): void {
    for (const p of this.pending.splice(0)) {
      this.link.bytesBeforeEncoding += p.blocks * BS;
      this.link.bytesOnWire += Math.round(p.blocks * BS * ratio);
      p.resolve();
    }
  }
}

function setUp(
  t: Test,
  windowBytes: number,
  more: { pace?: (bytesPerSecond: number) => void; hostWindow?: HostWindowMember } = {},
): { device: FakeDevice; copy: BackgroundCopy } {
  const device = new FakeDevice();
  const copy = new BackgroundCopy(
    device as unknown as MigratingDevice,
    // A clock at a thousandth of real time: the window's first latency probe, due a second after
    // the copy starts, falls outside these tests however slow the machine is.
    {
      batchBlocks: BATCH,
      windowBytes,
      storeErrorBackoffMs: 100,
      now: () => performance.now() / 1000,
      hostWindow: more.hostWindow,
    },
    null,
    pino({ level: 'silent' }),
    () => device.link,
    () => null,
    more.pace,
  );
  t.teardown(async () => {
    const stopping = copy.stop();
    device.completeAll(1);
    await stopping;
    device.completeAll(1);
    await copy.settle();
  });
  return { device, copy };
}

/** Resolves at the next claim after which the copy has no room for another run (it waits for a completion). */
function whenFull(device: FakeDevice, copy: BackgroundCopy): Promise<void> {
  return new Promise((resolve) => {
    device.onClaim = () => {
      if (copy.hasRoom()) return;
      device.onClaim = null;
      resolve();
    };
  });
}

t.test('runs sent as references fill the wire window with more image bytes than raw ones', async (t) => {
  const { device, copy } = setUp(t, 64 << 20);
  const started = whenFull(device, copy);
  copy.start();
  await started;
  const rawRuns = device.pending.length;
  t.ok(copy.wireBytesInFlight >= copy.windowBytes, 'raw: stops once the wire window is full');
  t.equal(copy.bytesInFlight, copy.wireBytesInFlight, 'raw: wire bytes are image bytes');

  // The source answers with references: 1 wire byte per 64 image bytes.
  for (let round = 0; round < 3; round++) {
    const full = whenFull(device, copy);
    device.completeAll(1 / 64);
    await full;
  }
  t.ok(copy.bytesInFlight > copy.windowBytes, `image bytes in flight ${copy.bytesInFlight} exceed the wire window`);
  t.ok(
    copy.wireBytesInFlight < copy.windowBytes + BATCH * BS,
    `wire bytes in flight ${copy.wireBytesInFlight} stay within the window ${copy.windowBytes} and one run`,
  );
  t.ok(device.pending.length > rawRuns, `more runs in flight (${device.pending.length} > ${rawRuns})`);
});

t.test('image bytes in flight stay under the ceiling however cheap the wire bytes are', async (t) => {
  const ceiling = 8 * BATCH * BS;
  const { device, copy } = setUp(t, ceiling);
  const started = whenFull(device, copy);
  copy.start();
  await started;
  for (let round = 0; round < 4; round++) {
    const full = whenFull(device, copy);
    device.completeAll(1 / 256);
    await full;
    t.ok(copy.bytesInFlight <= ceiling, `round ${round}: ${copy.bytesInFlight} ≤ ${ceiling}`);
  }
});

t.test('on-demand fetches on their way count in the window: the copy makes room for them', async (t) => {
  const { device, copy } = setUp(t, 64 << 20);
  copy.setLimit(BATCH); // one run to copy: it goes, and the window has room for one more
  copy.start();
  t.equal(device.pending.length, 1, 'one run on its way');
  t.equal(copy.windowBytes, 2 * BATCH * BS, 'in a window of two');
  t.ok(copy.hasRoom(), 'room for a second run');
  // A VM reads what is not here yet: a little more than a run of on-demand bytes on their way.
  device.urgentBytesInFlight = BATCH * BS + 1;
  t.notOk(copy.hasRoom(), 'the on-demand fetch on the link takes that room');
  device.urgentBytesInFlight = BATCH * BS - 4096;
  t.notOk(copy.hasRoom(), 'and so does a smaller one, with less than a run left');
  device.urgentBytesInFlight = 0;
  t.ok(copy.hasRoom(), 'once it arrived the room is back');
});

t.test('the copy asks its source to pace background data at its delivery rate times the gain', async (t) => {
  const asked: number[] = [];
  const { device, copy } = setUp(t, 64 << 20, { pace: (rate) => asked.push(rate) });
  t.equal(copy.pacedBytesPerSecond, 0, 'nothing asked before a delivery');
  const started = whenFull(device, copy);
  copy.start();
  await started;
  t.same(asked, [], 'nor before the first run arrives');
  const full = whenFull(device, copy);
  device.completeAll(1);
  await full;
  t.same(asked, [], 'nor in start-up (its rates are a cold connection’s)');
  // Start-up ends after three round trips whose rate did not grow by a quarter (the same rate here).
  for (let round = 0; round < 40 && asked.length === 0; round++) {
    const next = whenFull(device, copy);
    device.completeAll(1);
    await next;
  }
  t.ok(asked.length > 0, 'asked once start-up is over');
  t.ok(
    asked.every((rate) => rate > 0),
    `at a rate (${asked.join(', ')} bytes/s)`,
  );
  t.equal(asked[asked.length - 1], copy.pacedBytesPerSecond, 'the last one asked is the pace now');
});

t.test('a copy in a shared window asks no pace: the shared window paces its copies', async (t) => {
  const asked: number[] = [];
  const host = new HostWindow({ initialBytes: 4 * BATCH * BS, floorBytes: BATCH * BS, ceilingBytes: 64 << 20 });
  const { device, copy } = setUp(t, 64 << 20, { pace: (rate) => asked.push(rate), hostWindow: host.join(1) });
  copy.start();
  for (let round = 0; round < 3; round++) {
    await new Promise<void>((resolve) => {
      device.onClaim = () => {
        device.onClaim = null;
        resolve();
      };
    });
    device.completeAll(1);
  }
  t.same(asked, []);
  t.equal(copy.pacedBytesPerSecond, 0);
});
