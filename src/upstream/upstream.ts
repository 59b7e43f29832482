/**
 * Where a migrating destination gets the blocks it does not hold. A plain
 * NBD server is one kind; the ferry wire is another. The migrating device
 * only ever sees this interface.
 */
import type { EventEmitter } from 'node:events';
import type { LandedChecksums } from '../store/landed-checksums';

export type FetchPriority = 'urgent' | 'background';

export interface LinkStats {
  /** Bytes received from the source, framing included. */
  bytesOnWire: number;
  /** Block bytes those carried once decoded. */
  bytesBeforeEncoding: number;
  /** Blocks that failed verification and were fetched again. */
  checksumFailures: number;
  /** Frames that failed their CRC or bounds (the connection was dropped and re-opened). */
  corruptFrames: number;
  /** Blocks sent as references to content the destination already held, and those it could not use. */
  referencesUsed: number;
  referencesRefused: number;
  /** Encoding in use (or "none" for a plain NBD source). */
  codec: string;
}

/** A link that has carried nothing yet. */
export function emptyLinkStats(codec = 'none'): LinkStats {
  return {
    bytesOnWire: 0,
    bytesBeforeEncoding: 0,
    checksumFailures: 0,
    corruptFrames: 0,
    referencesUsed: 0,
    referencesRefused: 0,
    codec,
  };
}

/** The destination's own blocks, for upstreams that send references to content it holds. */
export interface LocalBlocks {
  isHeld(block: number): boolean;
  /** Reads the destination's own copy (no fetching). */
  read(offset: number, into: Buffer): Promise<void>;
  /** The checksums blocks landed with, dropped by every change to the image; absent: every reference is hashed. */
  landed?: LandedChecksums;
}

/** Where the source reads as zeros, within [offset, offset+covered) of what was asked. */
export interface ZeroRangeAnswer {
  covered: number;
  /** Ascending, disjoint, inside the covered span. */
  ranges: Array<{ offset: number; length: number }>;
}

/** A byte range of the source image. */
export interface ByteRange {
  offset: number;
  length: number;
}

/**
 * How the source reports the writes it takes before cutover:
 * - 'stream': it streams every write, trim and zero as DIRTY reports while it
 *   runs (ferry source with --nbd-listen) and fences itself at cutover;
 * - 'bitmap': a QEMU dirty bitmap that records every write since before the
 *   first block was copied, read whole at cutover (the source VM is stopped then);
 * - 'none': the source cannot tell; nothing may be copied before cutover.
 */
export type WriteTracking = 'stream' | 'bitmap' | 'none';

/** Writes the source took that the destination may hold stale copies of. */
export interface DirtyReport {
  ranges: ByteRange[];
  /**
   * Called once the destination has made the report durable (the blocks are
   * missing again in its persisted block map); the source may then forget it.
   * An unacknowledged report is sent again (after a reconnect, and in the
   * final write set at cutover).
   */
  ack(): void;
}

export interface Upstream extends EventEmitter {
  /** Size of the source image in bytes. */
  readonly size: number;
  /** A stable identity of the source image, recorded in the block map. */
  readonly identity: string;
  /** The source as shown to operators (no secrets). */
  readonly description: string;
  readonly connected: boolean;
  readonly reconnects: number;
  /**
   * Reads [offset, offset+length) from the source: `offset` is a multiple of
   * the block size and `length` whole blocks (the last may end at the image's
   * end). Waits while disconnected;
   * rejects when the connection drops under the request (the caller retries).
   */
  fetch(offset: number, length: number, priority: FetchPriority): Promise<Buffer>;
  /**
   * Takes back a buffer fetch() resolved, once nothing reads it any more (its
   * blocks are in the image), for a later fetch to reuse: a new one per fetch
   * is garbage the collector lets pile up to tens of MiB.
   */
  recycle?(data: Buffer): void;
  /** Drops the connection and connects again, optionally to a new URL of the same image. */
  reconnect(url?: string): Promise<void>;
  close(): Promise<void>;
  linkStats(): LinkStats;
  /** Bytes its sockets read from the source so far, framing included, counted as they are read: the background copy's delivery rate counts them. */
  bytesRead?(): number;
  /**
   * Asks the source to send background data at no more than `bytesPerSecond`
   * (counted as bytesRead counts), so that data costlier than the copy
   * predicted leaves at the link's rate instead of in one burst. Absent
   * where the source cannot pace (plain NBD); ignored by a source that does not.
   */
  setPacingRate?(bytesPerSecond: number): void;
  /**
   * Which parts of [offset, offset+length) read as zeros at the source (its
   * holes), so they need not be fetched. Resolves null when the source cannot
   * tell; rejects when the link fails (the caller may ask again).
   */
  zeroRanges?(offset: number, length: number): Promise<ZeroRangeAnswer | null>;
  /**
   * The SHA-256 of each of `count` blocks from `offset` (a multiple of the
   * block size), back to back, so blocks can be taken from a seed image
   * instead of fetched. Absent where the source cannot tell (plain NBD, a
   * ferry source that predates it: see `blockHashesProblem`).
   */
  blockHashes?(offset: number, count: number): Promise<Buffer>;
  /** Why blockHashes cannot be asked, or null when it can. */
  blockHashesProblem?(): string | null;
  /** Gives the upstream read access to blocks the destination holds. */
  attachLocal?(local: LocalBlocks): void;
  /**
   * The xxh64 each block of a fetch() result was verified against (0n:
   * unknown), until the result is recycled; absent where the source sends none.
   */
  checksumsOf?(data: Buffer): BigUint64Array | undefined;
  /** How this source reports its writes before cutover (fixed for the upstream's life). */
  readonly tracking: WriteTracking;
  /**
   * The lifetime of the source's write tracking ('stream' only; '' otherwise).
   * When it differs from the one a destination recorded, reports may have been
   * lost (the source restarted): every block copied before cutover is suspect.
   * Valid once connected; 'connected' is emitted after it changes.
   */
  readonly trackingEpoch: string;
  /**
   * Fences the source (it takes no more writes from its VM) and resolves the
   * final write set: every write not yet acknowledged ('stream'), the dirty
   * bitmap's ranges ('bitmap'), or nothing ('none'). Asking again before the
   * report is acknowledged gives the same set (plus nothing: the source is
   * fenced). Waits while disconnected.
   */
  cutover(): Promise<DirtyReport>;
  // Events: 'connected', 'disconnected', 'connect-failed' (err) for a failed or refused reconnect;
  // 'dirty' (report: DirtyReport): writes the source took ('stream');
  // 'cutover' (report: DirtyReport): the source cut over on its own (ferry ctl cutover at the source)
  //   and this is its final write set.
}
