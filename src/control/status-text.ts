/** Human-readable renderings of a MigrationStatus for `ferry ctl`. */
import type { MigrationStatus } from '../migrate/status';
import { formatBytes, formatDuration, formatRate } from './byte-rate';

export function heldPercent(s: MigrationStatus): number {
  return s.blocksTotal === 0 ? 100 : (s.blocksHeld / s.blocksTotal) * 100;
}

/** The multi-line summary printed by `ferry ctl status`. */
export function formatStatusSummary(s: MigrationStatus): string {
  const limit = s.rateLimitBytesPerSecond === null ? 'no limit' : `limit ${formatRate(s.rateLimitBytesPerSecond)}`;
  const latency =
    s.onDemandLatencyMs.count === 0
      ? 'no latency samples yet'
      : `latency p50 ${s.onDemandLatencyMs.p50.toFixed(1)} ms, p99 ${s.onDemandLatencyMs.p99.toFixed(1)} ms`;
  const phase =
    s.phase === 'warming'
      ? `warming: the source is the authority (${s.tracking === 'none' ? (s.warmup ?? 'no write tracking') : `write tracking: ${s.tracking}, ${s.blocksInvalidated} copied blocks rewritten at the source`}); ${s.passThroughReads} reads answered by the source`
      : s.phase === 'cutover'
        ? 'cutover: applying the source final write set'
        : s.phase === 'post-copy'
          ? `post-copy: this destination is the authority (${s.blocksInvalidated} blocks written at the source before cutover fetched again)`
          : 'complete';
  const rows: Array<[string, string]> = [
    ['state', s.state],
    ['phase', phase],
    ['source', s.source],
    ['connected', `${s.connected ? 'yes' : 'no'} (reconnects ${s.reconnects}, fetch errors ${s.fetchErrors})`],
    [
      'held',
      `${s.blocksHeld} / ${s.blocksTotal} blocks of ${formatBytes(s.blockSize)} (${heldPercent(s).toFixed(1)}%),` +
        ` ${formatBytes(s.blocksHeld * s.blockSize)} of ${formatBytes(s.blocksTotal * s.blockSize)}`,
    ],
    [
      'fetched',
      `${formatBytes(s.bytesFetched)}, ${formatBytes(s.bytesSkippedAsZero)} skipped (zeros at the source)` +
        (s.bytesSeeded ? `, ${formatBytes(s.bytesSeeded)} from the seed` : ''),
    ],
    [
      'link',
      `${formatBytes(s.bytesOnWire)} on the wire for ${formatBytes(s.bytesBeforeEncoding)} of blocks` +
        (s.bytesOnWire > 0 ? ` (${(s.bytesBeforeEncoding / s.bytesOnWire).toFixed(2)}x)` : '') +
        `, codec ${s.codec}, ${s.referencesUsed} references (${s.referencesRefused} refused),` +
        ` ${s.checksumFailures} checksum failures, ${s.corruptFrames} corrupt frames`,
    ],
    [
      'rate',
      `${formatRate(s.backgroundBytesPerSecond)} background (${limit}),` +
        ` ${formatBytes(s.backgroundInFlightBytes)} in flight of a ${formatBytes(s.backgroundWindowBytes)} window`,
    ],
    ['on-demand', `${s.onDemandFetches} fetches, ${latency}`],
    ['eta', s.state === 'complete' ? `done at ${s.completedAt ?? 'unknown time'}` : formatDuration(s.etaSeconds)],
    ['started', s.startedAt],
  ];
  return rows.map(([k, v]) => `${(k + ':').padEnd(11)}${v}`).join('\n') + '\n';
}

/** One line per interval for `ferry ctl watch` without a terminal. */
export function formatStatusLine(s: MigrationStatus): string {
  return (
    `${s.state} ${s.phase} ${s.blocksHeld}/${s.blocksTotal} blocks (${heldPercent(s).toFixed(1)}%)` +
    ` rate ${formatRate(s.backgroundBytesPerSecond)} eta ${formatDuration(s.etaSeconds)}` +
    ` on-demand ${s.onDemandFetches} p99 ${s.onDemandLatencyMs.p99.toFixed(1)} ms` +
    ` ${s.connected ? 'connected' : 'disconnected'}`
  );
}
