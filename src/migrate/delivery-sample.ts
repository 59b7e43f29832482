/**
 * One delivery-rate sample of a background run: the bytes the upstream's
 * sockets read while the run was on its way, over the time between the two
 * reads that bound them. Both ends are read times, not the times the copy
 * looked: a process busy for a while reads what arrived meanwhile in one go,
 * and a count taken at the send during such a while misses bytes that had
 * arrived already, which the arrival then counts as if they had come during
 * the flight (a loaded destination measured twice the link that way, and a
 * window twice the product queued until the router dropped). Counting from
 * the last read before the send, over the time since that read, the busy
 * time is on both sides of the ratio.
 */

import type { ReceivedBytes } from '../upstream/upstream';

/** A read older than this before a send means the link was idle: nothing was waiting to be read. */
export const IDLE_READ_MS = 250;

/** Where a run's sample starts: the count at the send, dated by its last read (or by the send, after idleness). */
export function sampleStart(atSend: ReceivedBytes, sentAt: number, baseLatencyMs: number): ReceivedBytes {
  const idle = sentAt - atSend.at > Math.max(2 * baseLatencyMs, IDLE_READ_MS);
  return { bytes: atSend.bytes, at: idle ? sentAt : Math.min(atSend.at, sentAt) };
}

/**
 * The bytes and the interval of the sample that ends with the count `now`, or null when the counts
 * cannot be compared (a new upstream started its own, or nothing was read since the start).
 */
export function sampleOf(start: ReceivedBytes, now: ReceivedBytes): { bytes: number; intervalMs: number } | null {
  const bytes = now.bytes - start.bytes;
  const intervalMs = now.at - start.at;
  if (bytes <= 0 || intervalMs <= 0) return null;
  return { bytes, intervalMs };
}
