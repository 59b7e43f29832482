/**
 * A MigrationControl with no disk behind it: its status is whatever the caller sets.
 * It lets the control socket, `ferry ctl` and the metrics be exercised without a source.
 */
import type { MigrationControl, MigrationStatus } from '../../src/migrate/status';

export function initialStatus(overrides: Partial<MigrationStatus> = {}): MigrationStatus {
  return {
    state: 'migrating',
    phase: 'post-copy',
    tracking: 'none',
    warmup: null,
    passThroughReads: 0,
    blocksInvalidated: 0,
    dirtyReports: 0,
    source: 'nbd://source.example:10809/disk',
    connected: true,
    blockSize: 65536,
    blocksTotal: 1024,
    blocksHeld: 0,
    bytesFetched: 0,
    bytesSkippedAsZero: 0,
    bytesSeeded: 0,
    onDemandFetches: 0,
    backgroundBytesPerSecond: 0,
    backgroundWindowBytes: 0,
    backgroundInFlightBytes: 0,
    onDemandLatencyMs: { p50: 0, p99: 0, count: 0 },
    onDemandBlockLatencyMs: { p50: 0, p99: 0, count: 0 },
    etaSeconds: null,
    rateLimitBytesPerSecond: null,
    reconnects: 0,
    fetchErrors: 0,
    bytesOnWire: 0,
    bytesBeforeEncoding: 0,
    checksumFailures: 0,
    corruptFrames: 0,
    referencesUsed: 0,
    referencesRefused: 0,
    codec: 'none',
    startedAt: new Date(0).toISOString(),
    completedAt: null,
    ...overrides,
  };
}

export class SimulatedMigration implements MigrationControl {
  /** Every call the control received, in order, for tests to check. */
  readonly calls: string[] = [];
  current: MigrationStatus;

  constructor(overrides: Partial<MigrationStatus> = {}) {
    this.current = initialStatus(overrides);
  }

  status(): MigrationStatus {
    return structuredClone(this.current);
  }

  pause(): void {
    this.calls.push('pause');
    if (this.current.state !== 'complete') this.current.state = 'paused';
  }

  resume(): void {
    this.calls.push('resume');
    if (this.current.state === 'paused') this.current.state = 'migrating';
  }

  setRateLimit(bytesPerSecond: number | null): void {
    this.calls.push(`rate ${bytesPerSecond}`);
    this.current.rateLimitBytesPerSecond = bytesPerSecond;
  }

  async detach(): Promise<void> {
    this.calls.push('detach');
    const s = this.current;
    if (s.blocksHeld < s.blocksTotal)
      throw new Error(`cannot detach: ${s.blocksTotal - s.blocksHeld} of ${s.blocksTotal} blocks are not held yet`);
    s.connected = false;
  }

  async reconnect(url?: string): Promise<void> {
    this.calls.push(`reconnect ${url ?? ''}`.trim());
    if (url !== undefined && !/^(nbd|ferry):\/\//.test(url))
      throw new Error(`reconnect: url must start with nbd:// or ferry:// (got "${url}")`);
    if (url) this.current.source = url;
    this.current.reconnects++;
    this.current.connected = true;
  }

  async cutover(): Promise<void> {
    this.calls.push('cutover');
    if (this.current.phase === 'warming') this.current.phase = 'post-copy';
  }

  async abort(): Promise<void> {
    this.calls.push('abort');
    if (this.current.phase !== 'warming') throw new Error('cannot abort: the cutover has happened');
  }

  /** Moves the migration on by `blocks`, completing it when every block is held. */
  advance(blocks: number): void {
    const s = this.current;
    s.blocksHeld = Math.min(s.blocksTotal, s.blocksHeld + blocks);
    s.bytesFetched += blocks * s.blockSize;
    if (s.blocksHeld === s.blocksTotal) {
      s.state = 'complete';
      s.phase = 'complete';
      s.etaSeconds = 0;
      s.completedAt = new Date().toISOString();
    }
  }
}
