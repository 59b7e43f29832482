import t from 'tap';
import crypto from 'node:crypto';
import { BlockBitmap } from '../src/util/block-bitmap';
import { DirtyTracker } from '../src/wire/dirty-tracker';

/** The set blocks of a bitmap, the slow and obvious way. */
function slowRuns(bits: boolean[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let i = 0; i < bits.length; i++) {
    if (!bits[i]) continue;
    let j = i;
    while (j < bits.length && bits[j]) j++;
    out.push([i, j - i]);
    i = j;
  }
  return out;
}

t.test('BlockBitmap agrees with a plain array under random sets and clears', async (t) => {
  for (const blocks of [1, 31, 32, 33, 1000, 40_000]) {
    const map = new BlockBitmap(blocks);
    const model: boolean[] = new Array(blocks).fill(false);
    for (let op = 0; op < 300; op++) {
      const first = crypto.randomInt(blocks);
      const n = 1 + crypto.randomInt(Math.min(blocks - first, op % 7 === 0 ? 5000 : 40));
      const value = crypto.randomInt(3) > 0;
      if (value) map.set(first, n);
      else map.clear(first, n);
      for (let b = first; b < first + n; b++) model[b] = value;
    }
    t.same(map.runs(), slowRuns(model), `runs of ${blocks} blocks`);
    t.equal(map.count, model.filter(Boolean).length, `count of ${blocks} blocks`);
    t.same(map.clone().runs(), map.runs(), 'a clone has the same bits');
  }
  const sparse = new BlockBitmap(1 << 22);
  sparse.set((1 << 22) - 1, 1);
  sparse.set(5, 1);
  t.same(sparse.runs(), [
    [5, 1],
    [(1 << 22) - 1, 1],
  ]);
  sparse.clear(0, 1 << 22);
  t.same(sparse.runs(), [], 'cleared');
  t.equal(sparse.nextSet(0), -1);
});

t.test(
  'DirtyTracker reports written blocks once, re-sends the unacknowledged, and keeps them in the final set',
  async (t) => {
    const bs = 4096;
    const tracker = new DirtyTracker(10 * bs + 100, bs); // a short last block
    tracker.mark(100, 1); // block 0
    tracker.mark(2 * bs, 2 * bs); // blocks 2, 3
    tracker.mark(10 * bs + 50, 10); // the short last block
    const first = tracker.takeReport()!;
    t.same(first.ranges, [
      { offset: 0, length: bs },
      { offset: 2 * bs, length: 2 * bs },
      { offset: 10 * bs, length: 100 },
    ]);
    t.equal(tracker.takeReport(), null, 'nothing new to report');
    tracker.mark(5 * bs, 1);
    const second = tracker.takeReport()!;
    t.same(second.ranges, [{ offset: 5 * bs, length: bs }]);
    t.ok(second.seq > first.seq);
    t.ok(tracker.ack(second.seq));
    t.notOk(tracker.ack(second.seq), 'an ack counts once');
    t.same(tracker.finalSet(), first.ranges, 'the final set is what is not acknowledged');
    t.same(tracker.finalSet(), first.ranges, 'and asking does not change it');
    tracker.requeueUnacked();
    t.notOk(tracker.ack(first.seq), 'a re-queued report is no longer acknowledgeable');
    const again = tracker.takeReport()!;
    t.same(again.ranges, first.ranges, 'sent again');
    t.ok(again.seq > second.seq, 'under a new number');
    tracker.mark(0, 1); // written again after it was sent
    t.ok(tracker.ack(again.seq));
    t.same(tracker.finalSet(), [{ offset: 0, length: bs }], 'an acknowledged block written again stays dirty');
  },
);

t.test('a tracker does not grow with the number of writes: reports wait once the window is full', async (t) => {
  const bs = 4096;
  const blocks = 1 << 16;
  const tracker = new DirtyTracker(blocks * bs, bs, { maxUnacked: 4, maxRanges: 64 });
  for (let i = 0; i < 200_000; i++) {
    tracker.mark(crypto.randomInt(blocks) * bs, 1 + crypto.randomInt(3 * bs));
    if (i % 100 === 0) tracker.takeReport();
  }
  t.equal(tracker.unackedReports, 4, 'no more than the window in flight');
  t.ok(tracker.unackedRanges <= 4 * 64, `${tracker.unackedRanges} ranges held in reports`);
  t.ok(tracker.pendingBlocks <= blocks, 'the rest is bits in a fixed bitmap');
  t.equal(tracker.takeReport(), null, 'nothing is sent until something is acknowledged');
});
