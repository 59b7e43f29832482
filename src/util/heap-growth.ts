/**
 * Keeps V8's heaps near what they hold in this process. Two of V8's
 * defaults let a daemon's heap grow well past its live objects, and the
 * pages stay committed:
 *
 * - The young generation doubles (up to 2 × 16 MiB) whenever much of it
 *   survives a scavenge, which a stream of batches in flight always does:
 *   10–15 MiB of a daemon's resident memory at the same throughput.
 * - The old generation is collected once it has grown by a factor V8 picks
 *   between 1.1 and 4 (most for a small heap that collects fast): objects a
 *   round trip outlives (requests, promises, batches) are promoted and die
 *   there, and a destination's main heap reached 29 MiB with 13 MiB live.
 *   At 1.5 it stays near 20 MiB; a full collection of such a heap is a few
 *   milliseconds, most of it marking on V8's helper threads.
 *
 * Figures: docs/benchmarks.md, "Memory". V8's flags are the process's; Node
 * sets them again when a worker thread starts, so the codec pool calls
 * `reapplyHeapLimits` once each of its workers is online.
 */
import v8 from 'node:v8';

let wanted = false;

function apply(): void {
  v8.setFlagsFromString('--semi-space-growth-factor=1');
  v8.setFlagsFromString('--heap-growing-percent=50');
}

/** For daemons: call before the heap grows (at start-up). */
export function keepHeapsSmall(): void {
  wanted = true;
  apply();
}

/** Restores the limits after a worker thread started, if the process asked for them. */
export function reapplyHeapLimits(): void {
  if (wanted) apply();
}
