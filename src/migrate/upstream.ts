/**
 * Where a migrating destination gets the blocks it does not hold. A plain
 * NBD server is one kind; the ferry wire is another. The migrating device
 * only ever sees this interface.
 */
import type { EventEmitter } from 'node:events';

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
}

/** Where the source reads as zeros, within [offset, offset+covered) of what was asked. */
export interface ZeroRangeAnswer {
  covered: number;
  /** Ascending, disjoint, inside the covered span. */
  ranges: Array<{ offset: number; length: number }>;
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
   * Reads [offset, offset+length) from the source. Waits while disconnected;
   * rejects when the connection drops under the request (the caller retries).
   */
  fetch(offset: number, length: number, priority: FetchPriority): Promise<Buffer>;
  /** Drops the connection and connects again, optionally to a new URL of the same image. */
  reconnect(url?: string): Promise<void>;
  close(): Promise<void>;
  linkStats(): LinkStats;
  /**
   * Which parts of [offset, offset+length) read as zeros at the source (its
   * holes), so they need not be fetched. Resolves null when the source cannot
   * tell; rejects when the link fails (the caller may ask again).
   */
  zeroRanges?(offset: number, length: number): Promise<ZeroRangeAnswer | null>;
  /** Gives the upstream read access to blocks the destination holds. */
  attachLocal?(local: LocalBlocks): void;
  // Events: 'connected', 'disconnected', 'connect-failed' (err) for a failed or refused reconnect.
}
