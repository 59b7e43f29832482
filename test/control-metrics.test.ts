import http from 'node:http';
import pino from 'pino';
import t from 'tap';
import { MigrationMetrics, startMetricsServer } from '../src/control/metrics';
import { SimulatedMigration } from './helpers/simulated-migration';

const log = pino({ level: 'silent' });

/** Parses Prometheus text into `name{labels}` → value, checking every sample line's shape. */
function parseExposition(text: string): { samples: Map<string, number>; types: Map<string, string> } {
  const samples = new Map<string, number>();
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('# HELP')) continue;
    const type = /^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (type) {
      types.set(type[1], type[2]);
      continue;
    }
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (!sample) throw new Error(`not a Prometheus sample line: ${line}`);
    samples.set(sample[1], Number(sample[2]));
  }
  return { samples, types };
}

function get(url: string): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }));
      })
      .on('error', reject);
  });
}

function migration(): SimulatedMigration {
  return new SimulatedMigration({
    blocksTotal: 1000,
    blocksHeld: 250,
    bytesFetched: 250 * 65536,
    onDemandFetches: 17,
    backgroundBytesPerSecond: 1_250_000,
    backgroundWindowBytes: 3_145_728,
    backgroundInFlightBytes: 2_097_152,
    onDemandLatencyMs: { p50: 12.5, p99: 80, count: 17 },
    onDemandBlockLatencyMs: { p50: 12.5, p99: 80, count: 17 },
    etaSeconds: 39,
    rateLimitBytesPerSecond: 2_000_000,
    reconnects: 2,
    fetchErrors: 3,
    connected: false,
    state: 'stalled',
  });
}

t.test('metrics: every status field is exposed with its value', async (t) => {
  const sim = migration();
  const metrics = new MigrationMetrics(sim);
  const { samples, types } = parseExposition(await metrics.render());
  const expected: Record<string, number> = {
    ferry_blocks_total: 1000,
    ferry_blocks_held: 250,
    ferry_block_size_bytes: 65536,
    ferry_bytes_fetched_total: 250 * 65536,
    ferry_on_demand_fetches_total: 17,
    ferry_background_bytes_per_second: 1_250_000,
    ferry_background_window_bytes: 3_145_728,
    ferry_background_in_flight_bytes: 2_097_152,
    ferry_rate_limit_bytes_per_second: 2_000_000,
    'ferry_on_demand_latency_ms{quantile="0.5"}': 12.5,
    'ferry_on_demand_latency_ms{quantile="0.99"}': 80,
    ferry_eta_seconds: 39,
    ferry_connected: 0,
    ferry_reconnects_total: 2,
    ferry_fetch_errors_total: 3,
    'ferry_state{state="migrating"}': 0,
    'ferry_state{state="paused"}': 0,
    'ferry_state{state="stalled"}': 1,
    'ferry_state{state="complete"}': 0,
  };
  for (const [name, value] of Object.entries(expected)) t.equal(samples.get(name), value, name);
  t.equal(types.get('ferry_bytes_fetched_total'), 'counter');
  t.equal(types.get('ferry_reconnects_total'), 'counter');
  t.equal(types.get('ferry_blocks_held'), 'gauge');
  t.ok(samples.has('process_cpu_user_seconds_total'), 'default process metrics are there');
  t.ok(samples.has('nodejs_heap_size_used_bytes'));
});

t.test('metrics: each scrape reads the status afresh; counters follow the total', async (t) => {
  const sim = migration();
  const metrics = new MigrationMetrics(sim);
  await metrics.render();
  sim.advance(750);
  sim.current.etaSeconds = null;
  sim.current.rateLimitBytesPerSecond = null;
  const { samples } = parseExposition(await metrics.render());
  t.equal(samples.get('ferry_blocks_held'), 1000);
  t.equal(samples.get('ferry_bytes_fetched_total'), 1000 * 65536, 'set to the total, not added twice');
  t.equal(samples.get('ferry_eta_seconds'), -1, 'unknown ETA is -1');
  t.equal(samples.get('ferry_rate_limit_bytes_per_second'), 0, 'no limit is 0');
  t.equal(samples.get('ferry_state{state="complete"}'), 1);
  t.equal(samples.get('ferry_state{state="stalled"}'), 0);
});

t.test('metrics server: GET /metrics, 404 elsewhere, 500 when status fails, closes', async (t) => {
  const sim = migration();
  const server = await startMetricsServer(sim, { host: '127.0.0.1', port: 0 }, log);
  const base = `http://127.0.0.1:${server.address.port}`;
  const ok = await get(`${base}/metrics`);
  t.equal(ok.status, 200);
  t.match(ok.type, /^text\/plain; version=0\.0\.4/);
  t.equal(parseExposition(ok.body).samples.get('ferry_blocks_held'), 250);
  const missing = await get(`${base}/`);
  t.equal(missing.status, 404);
  t.match(missing.body, /metrics are at \/metrics/);
  sim.status = () => {
    throw new Error('status unavailable');
  };
  const failed = await get(`${base}/metrics`);
  t.equal(failed.status, 500);
  t.match(failed.body, /status unavailable/);
  await server.close();
  await t.rejects(get(`${base}/metrics`), { code: 'ECONNREFUSED' });
});
