import t from 'tap';
import { QueueFullError, whenQueued } from '../src/pool';

/**
 * A pool whose background queue holds `room` more tasks: as CodecPool, every
 * whenNotFull waiter wakes when a slot frees, and a task asked for while it
 * is full is refused with a QueueFullError.
 */
class FullPool {
  room = 0;
  refusals = 0;
  private waiters: Array<() => void> = [];
  get isFull(): boolean {
    return this.room === 0;
  }
  whenNotFull(): Promise<void> {
    if (!this.isFull) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }
  whenAccepting(): Promise<void> {
    return this.whenNotFull();
  }
  run(): Promise<string> {
    if (this.isFull) {
      this.refusals++;
      return Promise.reject(new QueueFullError('full'));
    }
    this.room--;
    return Promise.resolve('done');
  }
  free(): void {
    this.room++;
    for (const wake of this.waiters.splice(0)) wake();
  }
}

t.test('tasks waiting for a full pool ask again only once it has room: no refusal per waiter per wake', async (t) => {
  const pool = new FullPool();
  const asked = Array.from({ length: 50 }, () => whenQueued(pool, () => pool.run(), false));
  let settled = 0;
  for (const p of asked) void p.then(() => settled++);
  for (let i = 0; i < 50; i++) {
    pool.free();
    // Let every woken waiter look (each await is a turn of the microtask queue).
    for (let k = 0; k < 10; k++) await Promise.resolve();
  }
  t.same(await Promise.all(asked), Array(50).fill('done'), 'every task ran');
  t.equal(settled, 50);
  t.equal(pool.refusals, 0, 'none was refused on the way (each refusal builds an Error)');
});
