/**
 * What `ferry ctl status NAME` and `list` answer: a migration's state, each
 * disk's status, and the totals over its disks (bytes, rate, ETA). Pure.
 */
import type { MigrationStatus } from '../migrate/status';
import { view, type DiskFacts, type MigrationView } from './lifecycle';
import type { MigrationRecord } from './migration-spec';

export interface DiskReport {
  name: string;
  export: string;
  image: string;
  /** The disk's own status; null while it is not open (being created, or failed to open). */
  status: MigrationStatus | null;
}

export interface MigrationReport {
  name: string;
  state: MigrationView;
  stage: MigrationRecord['stage'];
  paused: boolean;
  /** Waiting for a copy slot (daemon.max_concurrent_copies). */
  queued: boolean;
  /** The migration's own cap (bytes/s), null for none. */
  rate: number | null;
  weight: number;
  /** The background rate the host budget gives it now (bytes/s), null for unpaced. */
  allocatedRate: number | null;
  error: string | null;
  createdAt: string;
  cutoverAt: string | null;
  total: {
    bytesTotal: number;
    bytesHeld: number;
    percent: number;
    backgroundBytesPerSecond: number;
    onDemandFetches: number;
    /** Seconds until every disk holds every block at the current rate; null when unknown. */
    etaSeconds: number | null;
  };
  disks: DiskReport[];
}

export function diskFacts(disks: DiskReport[]): DiskFacts & { phases: string[] } {
  const open = disks.map((d) => d.status).filter((s): s is MigrationStatus => s !== null);
  const allOpen = open.length === disks.length;
  return {
    complete: allOpen && open.every((s) => s.phase === 'complete'),
    pastWarming: open.some((s) => s.phase !== 'warming'),
    blocksHeld: open.reduce((n, s) => n + s.blocksHeld, 0),
    blocksTotal: open.reduce((n, s) => n + s.blocksTotal, 0),
    phases: open.map((s) => s.phase),
  };
}

export function migrationReport(
  record: MigrationRecord,
  disks: DiskReport[],
  extra: { queued: boolean; allocatedRate: number | null; error: string | null },
): MigrationReport {
  const facts = diskFacts(disks);
  const open = disks.map((d) => d.status).filter((s): s is MigrationStatus => s !== null);
  const bytesTotal = open.reduce((n, s) => n + s.blocksTotal * s.blockSize, 0);
  const bytesHeld = open.reduce((n, s) => n + s.blocksHeld * s.blockSize, 0);
  const rate = open.reduce((n, s) => n + s.backgroundBytesPerSecond, 0);
  const remaining = bytesTotal - bytesHeld;
  return {
    name: record.spec.name,
    state: view(record, { ...facts, failed: extra.error !== null }),
    stage: record.stage,
    paused: record.paused,
    queued: extra.queued,
    rate: record.spec.rate || null,
    weight: record.spec.weight,
    allocatedRate: extra.allocatedRate,
    error: extra.error,
    createdAt: record.createdAt,
    cutoverAt: record.cutoverAt,
    total: {
      bytesTotal,
      bytesHeld,
      percent: bytesTotal === 0 ? 0 : Math.floor((bytesHeld / bytesTotal) * 10000) / 100,
      backgroundBytesPerSecond: rate,
      onDemandFetches: open.reduce((n, s) => n + s.onDemandFetches, 0),
      etaSeconds:
        open.length < disks.length ? null : remaining === 0 ? 0 : rate > 0 ? Math.round(remaining / rate) : null,
    },
    disks,
  };
}
