/**
 * How one fetch becomes FETCH requests: the blocks still wanted, in runs,
 * each cut at the largest FETCH sent; and the flags of each attempt.
 */
import type { FetchPriority } from './upstream';
import { blockRuns } from '../util/block-runs';
import { FetchFlag } from '../wire/protocol';

/** Largest FETCH sent (the source accepts up to 16 MiB). */
export const MAX_FETCH = 8 << 20;

export interface FetchPiece {
  offset: number;
  length: number;
}

/**
 * The requests for blocks `todo` (indexes relative to the fetch's first
 * block) of the fetch [offset, offset+length): one per run, cut at maxFetch.
 */
export function fetchPieces(
  offset: number,
  length: number,
  todo: number[],
  blockSize: number,
  maxFetch = MAX_FETCH,
): FetchPiece[] {
  const firstBlock = offset / blockSize;
  const perFetch = Math.max(1, Math.floor(maxFetch / blockSize));
  const pieces: FetchPiece[] = [];
  for (const [start, n] of blockRuns(todo)) {
    for (let piece = 0; piece < n; piece += perFetch) {
      const runOffset = (firstBlock + start + piece) * blockSize;
      const runLength = Math.min(Math.min(perFetch, n - piece) * blockSize, offset + length - runOffset);
      pieces.push({ offset: runOffset, length: runLength });
    }
  }
  return pieces;
}

/**
 * Flags of a FETCH. A retry asks for bytes (a reference it got may be what
 * failed). So does an urgent fetch: a reference may point to a block the
 * destination does not hold yet (still on its way in a background batch),
 * and refusing it costs a second round trip while a VM waits; the few bytes
 * a reference saves are nothing next to that.
 */
export function fetchFlags(priority: FetchPriority, attempt = 0): number {
  return priority === 'urgent' || attempt > 0 ? FetchFlag.NoReferences : 0;
}
