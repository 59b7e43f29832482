import t from 'tap';
import { WindowedExtreme } from '../src/util/windowed-extreme';

/** The filter it stands in for: a list pruned of values older than the span at each record, scanned at each look. */
class PrunedList {
  private readonly list: Array<[number, number]> = [];
  constructor(
    private readonly kind: 'min' | 'max',
    private readonly spanMs: number,
  ) {}
  record(time: number, value: number): void {
    while (this.list.length && this.list[0][0] < time - this.spanMs) this.list.shift();
    this.list.push([time, value]);
  }
  get value(): number | null {
    if (!this.list.length) return null;
    const values = this.list.map(([, v]) => v);
    return this.kind === 'min' ? Math.min(...values) : Math.max(...values);
  }
}

/** A small deterministic generator, so a failure replays. */
function lcg(seed: number): () => number {
  let x = seed;
  return () => {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    return x / 2 ** 31;
  };
}

t.test('nothing recorded: no value', async (t) => {
  t.equal(new WindowedExtreme('min', 100).value, null);
  t.equal(new WindowedExtreme('max', 100).value, null);
});

t.test('a value leaves when one is recorded more than the span after it, not before', async (t) => {
  const min = new WindowedExtreme('min', 100);
  min.record(0, 5);
  min.record(50, 9);
  t.equal(min.value, 5);
  min.record(100, 7); // 0 is exactly the span before: still in
  t.equal(min.value, 5);
  min.record(101, 8);
  t.equal(min.value, 7);
  min.record(300, 20); // everything else is older than the span
  t.equal(min.value, 20);
});

t.test('a newer value at least as good replaces an older one, which never comes back', async (t) => {
  const max = new WindowedExtreme('max', 100);
  max.record(0, 3);
  max.record(10, 1);
  max.record(20, 3); // ties the first and outlives it
  max.record(115, 0); // the first has left; the tie keeps 3
  t.equal(max.value, 3);
  max.record(125, 0); // the second 3 has left, and 1 before it
  t.equal(max.value, 0);
});

for (const kind of ['min', 'max'] as const)
  t.test(`${kind}: the same answers as a pruned list over random records`, async (t) => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const random = lcg(seed);
      const span = 50 + Math.floor(random() * 200);
      const fast = new WindowedExtreme(kind, span);
      const slow = new PrunedList(kind, span);
      let time = 0;
      let mismatches = 0;
      for (let i = 0; i < 3000; i++) {
        // Bursts at one instant, small steps and gaps longer than the span; few distinct values, so ties.
        const r = random();
        time += r < 0.2 ? 0 : r < 0.97 ? random() * 20 : span + random() * span;
        const value = Math.floor(random() * 12) + (random() < 0.5 ? 0.5 : 0);
        fast.record(time, value);
        slow.record(time, value);
        if (fast.value !== slow.value) mismatches++;
      }
      t.equal(mismatches, 0, `seed ${seed}, span ${span}`);
    }
  });
