/**
 * Runs a pool task, waiting for the pool's signal while its bounded queue is
 * full instead of failing. Every waiter wakes when a queued task starts and
 * one of them gets the room: a background task looks before it asks again,
 * since a refusal builds an Error (its stack) each time (a tenth of a
 * destination's main thread while a stretch of references arrived faster
 * than it decoded). An urgent task always asks: a small one may run inline.
 */
import type { CodecPool } from './codec-pool';
import { QueueFullError } from './errors';

export async function whenQueued<T>(
  pool: Pick<CodecPool, 'isFull' | 'whenNotFull' | 'whenAccepting'>,
  task: () => Promise<T>,
  urgent: boolean,
): Promise<T> {
  for (;;) {
    if (!urgent && pool.isFull) {
      await pool.whenNotFull();
      continue;
    }
    try {
      return await task();
    } catch (e) {
      if (!(e instanceof QueueFullError)) throw e;
      await pool.whenAccepting(urgent);
    }
  }
}
