/**
 * Keeps V8's young generation at its initial size in this process. V8
 * doubles it (up to 2 × 16 MiB) whenever much of it survives a scavenge,
 * which a stream of batches in flight always does, and the space stays
 * committed: 10–15 MiB of a daemon's resident memory at the same throughput
 * (docs/benchmarks.md, "Memory"). V8's flags are the process's; Node sets
 * them again when a worker thread starts, so the codec pool calls
 * `reapplyYoungGenerationLimit` once each of its workers is online.
 */
import v8 from 'node:v8';

let wanted = false;

function apply(): void {
  v8.setFlagsFromString('--semi-space-growth-factor=1');
}

/** For daemons: call before the heap grows (at start-up). */
export function keepYoungGenerationSmall(): void {
  wanted = true;
  apply();
}

/** Restores the limit after a worker thread started, if the process asked for it. */
export function reapplyYoungGenerationLimit(): void {
  if (wanted) apply();
}
