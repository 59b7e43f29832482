/**
 * Prometheus metrics of `ferry daemon`: every disk's figures (the names a
 * ferry dest exports) labelled by migration and disk, and each migration's
 * state and budget. Read from the daemon's reports once per scrape.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { STATUS_METRICS, type MetricsSource } from '../control/metrics';
import type { MigrationStatus } from '../migrate/status';
import type { MigrationReport } from './migration-status';

const VIEWS: MigrationReport['state'][] = [
  'creating',
  'created',
  'copying',
  'paused',
  'cutting-over',
  'post-copy',
  'complete',
  'aborting',
  'failed',
];

export class DaemonMetrics implements MetricsSource {
  private readonly registry = new Registry();
  private readonly perDisk: Array<{ metric: Gauge | Counter; value: (s: MigrationStatus) => number }>;
  private readonly latency: Gauge;
  private readonly state: Gauge;
  private readonly allocated: Gauge;
  private readonly queued: Gauge;

  constructor(private readonly reports: () => MigrationReport[]) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    const labelNames = ['migration', 'disk'];
    this.perDisk = STATUS_METRICS.map(({ name, help, kind, value }) => ({
      metric:
        kind === 'gauge'
          ? new Gauge({ name, help, labelNames, registers })
          : new Counter({ name, help, labelNames, registers }),
      value,
    }));
    this.latency = new Gauge({
      name: 'ferry_on_demand_latency_ms',
      help: 'On-demand fetch latency (request to data held) over the most recent fetches',
      labelNames: ['migration', 'disk', 'quantile'],
      registers,
    });
    this.state = new Gauge({
      name: 'ferry_migration_state',
      help: 'Migration state: 1 for the current one, 0 for the others',
      labelNames: ['migration', 'state'],
      registers,
    });
    this.allocated = new Gauge({
      name: 'ferry_migration_allocated_rate_bytes_per_second',
      help: 'Background rate the host budget gives the migration now (-1: unpaced, 0: not copying)',
      labelNames: ['migration'],
      registers,
    });
    this.queued = new Gauge({
      name: 'ferry_migration_queued',
      help: 'The migration waits for a copy slot (daemon.max_concurrent_copies)',
      labelNames: ['migration'],
      registers,
    });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  async render(): Promise<string> {
    const reports = this.reports();
    // Migrations come and go: every scrape starts from no series.
    for (const { metric } of this.perDisk) metric.reset();
    for (const g of [this.latency, this.state, this.allocated, this.queued]) g.reset();
    for (const r of reports) {
      const migration = r.name;
      for (const state of VIEWS) this.state.set({ migration, state }, state === r.state ? 1 : 0);
      this.allocated.set({ migration }, r.allocatedRate ?? (r.state === 'copying' ? -1 : 0));
      this.queued.set({ migration }, r.queued ? 1 : 0);
      for (const d of r.disks) {
        const s = d.status;
        if (!s) continue;
        const labels = { migration, disk: d.name };
        for (const { metric, value } of this.perDisk) {
          if (metric instanceof Counter) metric.inc(labels, value(s));
          else metric.set(labels, value(s));
        }
        this.latency.set({ ...labels, quantile: '0.5' }, s.onDemandLatencyMs.p50);
        this.latency.set({ ...labels, quantile: '0.99' }, s.onDemandLatencyMs.p99);
      }
    }
    return this.registry.metrics();
  }
}
