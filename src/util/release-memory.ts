/**
 * Hands memory back after a burst of large buffers is dropped. V8 collects
 * the buffers' external memory when it grows, not when it is let go: after a
 * client that held tens of MiB of unread replies disconnects, an idle daemon
 * would keep them resident until its next burst. A full collection of a
 * daemon's small heap takes milliseconds; it runs at most once per interval.
 */
import v8 from 'node:v8';
import vm from 'node:vm';

const MIN_INTERVAL_MS = 1000;

let collect: (() => void) | null | undefined;
let scheduled: NodeJS.Timeout | null = null;
let lastRun = 0;

function collector(): (() => void) | null {
  if (collect !== undefined) return collect;
  try {
    // The flag exposes gc() to contexts created after it is set: a fresh one hands it over.
    v8.setFlagsFromString('--expose-gc');
    collect = vm.runInNewContext('gc') as () => void;
  } catch {
    collect = null;
  }
  return collect;
}

/** Asks for a collection soon (coalesced: one per interval at most). */
export function releaseDroppedBuffers(): void {
  if (scheduled) return;
  const wait = Math.max(0, lastRun + MIN_INTERVAL_MS - Date.now());
  scheduled = setTimeout(() => {
    scheduled = null;
    lastRun = Date.now();
    collector()?.();
  }, wait);
  scheduled.unref();
}
