/**
 * Prometheus metrics for a migrating destination, read from `MigrationControl.status()`
 * once per scrape so every value in one scrape comes from the same snapshot.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { MigrationControl, MigrationState, MigrationStatus } from '../migrate/status';

const STATES: MigrationState[] = ['migrating', 'paused', 'stalled', 'complete'];

/** One line per plain metric: adding a status field to the metrics is adding a line here. */
export const STATUS_METRICS: Array<{
  name: string;
  help: string;
  kind: 'gauge' | 'counter';
  value: (s: MigrationStatus) => number;
}> = [
  { name: 'ferry_blocks_total', help: 'Blocks in the image', kind: 'gauge', value: (s) => s.blocksTotal },
  { name: 'ferry_blocks_held', help: 'Blocks held locally', kind: 'gauge', value: (s) => s.blocksHeld },
  { name: 'ferry_block_size_bytes', help: 'Block size in bytes', kind: 'gauge', value: (s) => s.blockSize },
  {
    name: 'ferry_bytes_fetched_total',
    help: 'Decoded block bytes received from the source',
    kind: 'counter',
    value: (s) => s.bytesFetched,
  },
  {
    name: 'ferry_bytes_skipped_as_zero_total',
    help: 'Bytes held without fetching them: the source reads as zeros there',
    kind: 'counter',
    value: (s) => s.bytesSkippedAsZero,
  },
  {
    name: 'ferry_bytes_seeded_total',
    help: 'Bytes copied from the seed image instead of fetched',
    kind: 'counter',
    value: (s) => s.bytesSeeded,
  },
  {
    name: 'ferry_on_demand_fetches_total',
    help: 'Blocks fetched because the VM was waiting for them',
    kind: 'counter',
    value: (s) => s.onDemandFetches,
  },
  {
    name: 'ferry_background_bytes_per_second',
    help: 'Background copy rate over the last few seconds',
    kind: 'gauge',
    value: (s) => s.backgroundBytesPerSecond,
  },
  {
    name: 'ferry_background_window_bytes',
    help: "The background copy's in-flight target (adaptive window), wire bytes",
    kind: 'gauge',
    value: (s) => s.backgroundWindowBytes,
  },
  {
    name: 'ferry_background_in_flight_bytes',
    help: 'Wire bytes of background fetches in flight',
    kind: 'gauge',
    value: (s) => s.backgroundInFlightBytes,
  },
  {
    name: 'ferry_rate_limit_bytes_per_second',
    help: 'Background copy rate limit; 0 when there is none',
    kind: 'gauge',
    value: (s) => s.rateLimitBytesPerSecond ?? 0,
  },
  {
    name: 'ferry_eta_seconds',
    help: 'Seconds until every block is held at the current rate; -1 when unknown',
    kind: 'gauge',
    value: (s) => s.etaSeconds ?? -1,
  },
  { name: 'ferry_connected', help: '1 when the upstream connection is up', kind: 'gauge', value: (s) => +s.connected },
  {
    name: 'ferry_wire_bytes_total',
    help: 'Bytes received from the source, framing included',
    kind: 'counter',
    value: (s) => s.bytesOnWire,
  },
  {
    name: 'ferry_wire_decoded_bytes_total',
    help: 'Block bytes the wire bytes decoded to',
    kind: 'counter',
    value: (s) => s.bytesBeforeEncoding,
  },
  {
    name: 'ferry_checksum_failures_total',
    help: 'Blocks that failed verification and were fetched again',
    kind: 'counter',
    value: (s) => s.checksumFailures,
  },
  {
    name: 'ferry_corrupt_frames_total',
    help: 'Wire frames that failed their CRC (connection re-opened)',
    kind: 'counter',
    value: (s) => s.corruptFrames,
  },
  {
    name: 'ferry_reconnects_total',
    help: 'Upstream reconnections',
    kind: 'counter',
    value: (s) => s.reconnects,
  },
  {
    name: 'ferry_fetch_errors_total',
    help: 'Fetches that failed and were retried',
    kind: 'counter',
    value: (s) => s.fetchErrors,
  },
];

export class MigrationMetrics {
  readonly registry = new Registry();
  private readonly plain: Array<{ metric: Gauge | Counter; value: (s: MigrationStatus) => number }>;
  private readonly latency: Gauge<'quantile'>;
  private readonly state: Gauge<'state'>;

  constructor(private readonly control: MigrationControl) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    this.plain = STATUS_METRICS.map(({ name, help, kind, value }) => ({
      metric: kind === 'gauge' ? new Gauge({ name, help, registers }) : new Counter({ name, help, registers }),
      value,
    }));
    this.latency = new Gauge({
      name: 'ferry_on_demand_latency_ms',
      help: 'On-demand fetch latency (request to data held) over the most recent fetches',
      labelNames: ['quantile'],
      registers,
    });
    this.state = new Gauge({
      name: 'ferry_state',
      help: 'Migration state: 1 for the current one, 0 for the others',
      labelNames: ['state'],
      registers,
    });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The Prometheus text exposition of the current status. */
  async render(): Promise<string> {
    const s = this.control.status();
    for (const { metric, value } of this.plain) {
      if (metric instanceof Counter) {
        // Counters mirror a running total kept by the migration, so set rather than add.
        metric.reset();
        metric.inc(value(s));
      } else {
        metric.set(value(s));
      }
    }
    this.latency.set({ quantile: '0.5' }, s.onDemandLatencyMs.p50);
    this.latency.set({ quantile: '0.99' }, s.onDemandLatencyMs.p99);
    for (const state of STATES) this.state.set({ state }, state === s.state ? 1 : 0);
    return this.registry.metrics();
  }
}

/** Whatever renders a Prometheus text exposition (`ferry daemon` labels its metrics by migration and disk). */
export interface MetricsSource {
  readonly contentType: string;
  render(): Promise<string>;
}

export interface MetricsServer {
  readonly address: { host: string; port: number };
  close(): Promise<void>;
}

/** Serves GET /metrics on `host:port` (port 0 picks a free one). */
export async function startMetricsServer(
  control: MigrationControl | MetricsSource,
  listen: { host: string; port: number },
  log: Logger,
): Promise<MetricsServer> {
  const metrics = 'render' in control ? control : new MigrationMetrics(control);
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end(`not found: ${path} (metrics are at /metrics)\n`);
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res
        .writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' })
        .end(`method ${req.method} not allowed\n`);
      return;
    }
    metrics.render().then(
      (text) => res.writeHead(200, { 'content-type': metrics.contentType }).end(req.method === 'HEAD' ? '' : text),
      (err: unknown) => {
        log.error({ err }, 'metrics scrape failed');
        res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics unavailable: ${(err as Error).message}\n`);
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = server.address() as AddressInfo;
  const address = { host: bound.address, port: bound.port };
  log.info({ address }, 'metrics listening');
  if (!['127.0.0.1', '::1'].includes(address.host) && !address.host.startsWith('127.'))
    log.warn({ address }, 'metrics are reachable beyond this host (give a bare PORT for 127.0.0.1)');
  return {
    address,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
