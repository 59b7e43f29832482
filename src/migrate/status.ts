/**
 * What a migrating destination reports and what an operator can ask of it.
 * The control socket, `ferry ctl` and the metrics endpoint speak only this.
 */
import type { LinkStats } from '../upstream/upstream';

export type MigrationState = 'migrating' | 'paused' | 'stalled' | 'complete';

/**
 * Who is the authority: the source before cutover ('warming'), the moment
 * between ('cutover'), the destination after it ('post-copy'), and
 * 'complete' once every block is held and the source is disconnected.
 */
export type MigrationPhase = 'warming' | 'cutover' | 'post-copy' | 'complete';

/** The state of the copy, and the link's figures (LinkStats: wire bytes, checksum failures, references, codec). */
export interface MigrationStatus extends LinkStats {
  state: MigrationState;
  phase: MigrationPhase;
  /** How the source reports its writes before cutover: 'stream', 'bitmap' or 'none'. */
  tracking: string;
  /** Why nothing is copied yet (warming without write tracking), or null. */
  warmup: string | null;
  /** Reads before cutover answered from the source and not kept. */
  passThroughReads: number;
  /** Copied blocks made missing again because the source wrote them before cutover. */
  blocksInvalidated: number;
  /** Write reports received from the source. */
  dirtyReports: number;
  /** Where blocks come from (URL, secrets removed). */
  source: string;
  /** Whether the upstream connection is up now. */
  connected: boolean;
  blockSize: number;
  blocksTotal: number;
  blocksHeld: number;
  /** Bytes received from the source (decoded block bytes). */
  bytesFetched: number;
  /** Bytes held without fetching them: the source reads as zeros there (its holes). */
  bytesSkippedAsZero: number;
  /** Bytes copied from the seed image instead of fetched (--seed). */
  bytesSeeded: number;
  /** Blocks fetched because the VM was waiting for them. */
  onDemandFetches: number;
  /** Background copy rate over the last few seconds. */
  backgroundBytesPerSecond: number;
  /** The background copy's current in-flight target (its adaptive window), in wire bytes. */
  backgroundWindowBytes: number;
  /** Wire bytes of background fetches in flight now (image bytes times the recent wire ratio). */
  backgroundInFlightBytes: number;
  /** Latency of on-demand fetches (request to data held), over the most recent ones. */
  onDemandLatencyMs: { p50: number; p99: number; count: number };
  /** The same for on-demand fetches of a single block (a small read that missed). */
  onDemandBlockLatencyMs: { p50: number; p99: number; count: number };
  /** Seconds until every block is held at the current rate; null when unknown. */
  etaSeconds: number | null;
  /** The background copy's rate limit, or null for none. */
  rateLimitBytesPerSecond: number | null;
  reconnects: number;
  fetchErrors: number;
  startedAt: string;
  completedAt: string | null;
}

export interface MigrationControl {
  status(): MigrationStatus;
  /** Stops the background copy; on-demand fetches go on. */
  pause(): void;
  resume(): void;
  /** Caps the background copy; null removes the cap. */
  setRateLimit(bytesPerSecond: number | null): void;
  /** Closes the link to the source for good; fails unless every block is held. */
  detach(): Promise<void>;
  /** Drops and re-opens the upstream connection, optionally at a new URL of the same image. */
  reconnect(url?: string): Promise<void>;
  /** Makes the destination the authority: fences the source and applies its final write set. */
  cutover(): Promise<void>;
  /** Before cutover: stops and removes the image and state; refused after it. */
  abort(): Promise<void>;
}
