/** What a ferry-wire upstream counts, and how it reads as the link's figures. */
import type { LinkStats } from './upstream';

export interface WireStats {
  bytesOnWire: number;
  bytesBeforeEncoding: number;
  checksumFailures: number;
  corruptFrames: number;
  referencesUsed: number;
  referencesRefused: number;
  blocksByEncoding: Record<string, number>;
  codec: string;
}

export function emptyWireStats(): WireStats {
  return {
    bytesOnWire: 0,
    bytesBeforeEncoding: 0,
    checksumFailures: 0,
    corruptFrames: 0,
    referencesUsed: 0,
    referencesRefused: 0,
    blocksByEncoding: {},
    codec: '',
  };
}

export function wireLinkStats(stats: WireStats): LinkStats {
  // The codec is the compressing encoding most blocks arrived in; raw alone means none.
  const counts = Object.entries(stats.blocksByEncoding).filter(([name]) => name === 'lz4' || name === 'deflate');
  counts.sort((a, b) => b[1] - a[1]);
  return {
    bytesOnWire: stats.bytesOnWire,
    bytesBeforeEncoding: stats.bytesBeforeEncoding,
    checksumFailures: stats.checksumFailures,
    corruptFrames: stats.corruptFrames,
    referencesUsed: stats.referencesUsed,
    referencesRefused: stats.referencesRefused,
    codec: counts[0]?.[0] ?? (stats.blocksByEncoding.raw ? 'none' : stats.codec),
  };
}
