/**
 * Prometheus metrics of `ferry daemon`: every disk's figures (the names a
 * ferry dest exports) labelled by migration and disk, each migration's
 * state and budget, and every source export's figures labelled by export.
 * Read from the daemon's reports once per scrape.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { STATUS_METRICS, type MetricsSource } from '../control/metrics';
import type { MigrationStatus } from '../migrate/status';
import type { MigrationReport } from './migration-status';
import type { SourcesReport } from './daemon-sources';
import type { SourceImageStatus } from '../wire/source-image';

/** Per source export, labelled by export. */
const SOURCE_METRICS: Array<{
  name: string;
  help: string;
  kind: 'gauge' | 'counter';
  value: (s: SourceImageStatus) => number;
}> = [
  {
    name: 'ferry_source_bytes_sent_total',
    help: 'Wire bytes sent to destinations',
    kind: 'counter',
    value: (s) => s.bytesSent,
  },
  {
    name: 'ferry_source_bytes_read_total',
    help: 'Image bytes read for destinations',
    kind: 'counter',
    value: (s) => s.bytesRead,
  },
  { name: 'ferry_source_batches_total', help: 'Batches sent', kind: 'counter', value: (s) => s.batches },
  {
    name: 'ferry_source_references_total',
    help: 'Blocks sent as references to blocks sent before',
    kind: 'counter',
    value: (s) => s.references,
  },
  {
    name: 'ferry_source_wire_connections',
    help: 'Destination connections open',
    kind: 'gauge',
    value: (s) => s.wireConnections,
  },
  {
    name: 'ferry_source_destinations_connected',
    help: 'Destination sessions with a connection open',
    kind: 'gauge',
    value: (s) => s.destinationsConnected,
  },
  {
    name: 'ferry_source_sessions',
    help: 'Destination sessions kept (connected or not)',
    kind: 'gauge',
    value: (s) => s.sessions.length,
  },
  {
    name: 'ferry_source_fenced',
    help: '1 when the export takes no more writes from its VM (cut over)',
    kind: 'gauge',
    value: (s) => (s.fenced ? 1 : 0),
  },
  {
    name: 'ferry_source_refused_writes_total',
    help: 'VM writes refused because the export was fenced',
    kind: 'counter',
    value: (s) => s.refusedWrites,
  },
  {
    name: 'ferry_source_pending_dirty_blocks',
    help: 'Blocks written by the VM not yet reported, over every session',
    kind: 'gauge',
    value: (s) => s.sessions.reduce((n, x) => n + x.pendingBlocks, 0),
  },
];

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
  private readonly perExport: Array<{ metric: Gauge | Counter; value: (s: SourceImageStatus) => number }>;
  private readonly sourceAuthFailures: Counter;
  private readonly exportOpen: Gauge;
  private readonly exportOpenFailures: Gauge;

  constructor(
    private readonly reports: () => MigrationReport[],
    private readonly sources: () => SourcesReport = () => ({
      listen: null,
      totals: null,
      exports: [],
      failed: [],
      removalRefused: [],
    }),
  ) {
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
    this.perExport = SOURCE_METRICS.map(({ name, help, kind, value }) => ({
      metric:
        kind === 'gauge'
          ? new Gauge({ name, help, labelNames: ['export'], registers })
          : new Counter({ name, help, labelNames: ['export'], registers }),
      value,
    }));
    this.exportOpen = new Gauge({
      name: 'ferry_source_export_open',
      help: '1 when a declared source export is open and served, 0 while its image cannot be opened (retried)',
      labelNames: ['export'],
      registers,
    });
    this.exportOpenFailures = new Gauge({
      name: 'ferry_source_export_open_failures',
      help: 'Failed attempts in a row to open a declared source export (0 once it is open)',
      labelNames: ['export'],
      registers,
    });
    this.sourceAuthFailures = new Counter({
      name: 'ferry_source_auth_failures_total',
      help: 'Connections to the source listener refused at authentication',
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
    const sources = this.sources();
    for (const { metric } of this.perExport) metric.reset();
    this.sourceAuthFailures.reset();
    this.exportOpen.reset();
    this.exportOpenFailures.reset();
    for (const e of sources.exports) {
      this.exportOpen.set({ export: e.export }, 1);
      this.exportOpenFailures.set({ export: e.export }, 0);
    }
    for (const f of sources.failed) {
      this.exportOpen.set({ export: f.export }, 0);
      this.exportOpenFailures.set({ export: f.export }, f.attempts);
    }
    for (const e of sources.exports)
      for (const { metric, value } of this.perExport) {
        if (metric instanceof Counter) metric.inc({ export: e.export }, value(e));
        else metric.set({ export: e.export }, value(e));
      }
    if (sources.totals) this.sourceAuthFailures.inc(sources.totals.authFailures);
    return this.registry.metrics();
  }
}
