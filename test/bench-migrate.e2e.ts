/** bench/migrate.ts in quick mode on a tiny image: every scenario present, complete, with plausible figures. */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { findMkfs } from '../bench/migrate-image';
import { tempDir } from './helpers/temp-dir';
import { requireTool } from './helpers/tools';

const BENCH = path.resolve(__dirname, '..', 'bench', 'migrate.js');

interface Scenario {
  name: string;
  kind: string;
  codec?: string;
  complete: boolean;
  switchOffSeconds: number | null;
  wire: { bytesToDest: number; bytesToSource: number };
  linkUtilisation: Array<[number, number]>;
  workload: { bytesPerSecond: number; jobs: unknown[]; timeline: unknown[] } | null;
  onDemand: { p50: number; p99: number; count: number } | null;
  peakRssBytes: number | null;
  verified: { ok: boolean; detail: string } | null;
}

/** The environment without tap's NODE_OPTIONS hooks, so the daemons' RSS and CPU are their own. */
function benchEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  for (const k of Object.keys(env)) if (k.startsWith('_TAPJS') || k.startsWith('TAP_')) delete env[k];
  return env;
}

t.test('bench:migrate --quick with a 32 MiB image', { timeout: 900_000 }, async (t) => {
  if (!requireTool(t, 'fio', 'nbdcopy', 'nbdinfo')) return;
  if (!findMkfs()) {
    t.plan(0, 'skipped: mkfs.ext4 not found (install e2fsprogs)');
    return;
  }
  const dir = tempDir(t);
  const out = path.join(dir, 'out');
  const json = path.join(dir, 'result.json');
  const started = Date.now();
  const { code, stderr } = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
    const child = spawn(
      process.execPath,
      [BENCH, '--quick', '--size-mib', '32', '--runtime', '1', '--codecs', 'lz4,auto', '--out', out, '--json', json],
      { stdio: ['ignore', 'ignore', 'pipe'], env: benchEnv() },
    );
    let err = '';
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    const timer = setTimeout(() => child.kill('SIGINT'), 840_000);
    child.on('close', (c) => {
      clearTimeout(timer);
      resolve({ code: c, stderr: err });
    });
  });
  t.equal(code, 0, `bench exits 0 (stderr tail: ${stderr.slice(-1500)})`);
  t.comment(`bench took ${((Date.now() - started) / 1000).toFixed(0)} s`);
  const result = JSON.parse(fs.readFileSync(json, 'utf8')) as {
    mode: string;
    points: Array<{ bandwidthBitsPerSecond: number; oneWayLatencyMs: number; scenarios: Scenario[] }>;
    targets: Array<{ target: string; pass: boolean }>;
  };
  t.equal(result.mode, 'quick');
  t.equal(result.points.length, 1, 'one link point');
  const p = result.points[0];
  t.equal(p.bandwidthBitsPerSecond, 100e6);
  t.equal(p.oneWayLatencyMs, 25);
  const byKind = (kind: string, codec?: string): Scenario | undefined =>
    p.scenarios.find((s) => s.kind === kind && (codec === undefined || s.codec === codec));
  const report = fs.readFileSync(path.join(out, 'report.md'), 'utf8');
  for (const [kind, codec] of [
    ['local'],
    ['nbdcopy'],
    ['nbd'],
    ['ferry', 'lz4'],
    ['ferry', 'auto'],
    ['remote'],
  ] as Array<[string, string?]>) {
    const s = byKind(kind, codec);
    if (!t.ok(s, `scenario ${kind} ${codec ?? ''} present`)) continue;
    t.ok(s!.complete, `${s!.name} complete`);
    t.ok(report.includes(`| ${s!.name} |`), `${s!.name} in the Markdown report`);
    if (kind !== 'local') t.ok(s!.wire.bytesToDest > 0, `${s!.name} moved bytes over the link`);
    else {
      // Stray packets of the link's earlier connections (a FIN, an ACK) may still cross it; the workload's do not.
      const remote = byKind('remote');
      t.ok(
        remote && s!.wire.bytesToDest * 100 < remote.wire.bytesToDest,
        `local disk uses no link (${s!.wire.bytesToDest} bytes crossed it, remote storage ${remote?.wire.bytesToDest})`,
      );
    }
    if (kind === 'nbdcopy' || kind === 'nbd' || kind === 'ferry') {
      t.ok(
        s!.switchOffSeconds! > 0 && s!.switchOffSeconds! < 100,
        `${s!.name} switch-off time ${s!.switchOffSeconds} s`,
      );
      t.ok(s!.linkUtilisation.length > 0, `${s!.name} link samples`);
      t.ok(
        s!.linkUtilisation.every(([, u]) => u >= 0 && u < 1.5),
        `${s!.name} utilisation within the link rate`,
      );
    }
    if (kind === 'nbd' || kind === 'ferry') {
      // the image holds data: the dest must have fetched at least the used part, and compressed when asked
      t.ok(s!.wire.bytesToDest > 1 << 20, `${s!.name} fetched over 1 MiB`);
      t.ok(s!.peakRssBytes! > 10 << 20 && s!.peakRssBytes! < 2 * 2 ** 30, `${s!.name} peak RSS ${s!.peakRssBytes}`);
      t.ok(s!.onDemand && s!.onDemand.count >= 0 && s!.onDemand.p99 >= s!.onDemand.p50, `${s!.name} on-demand latency`);
      t.equal(s!.verified?.ok, true, `${s!.name} final image verified: ${s!.verified?.detail}`);
      t.match(
        s!.verified?.detail ?? '',
        /plus [1-9]\d* whole 4 KiB blocks written by the workload/,
        'the writes are in it',
      );
    }
    if (kind !== 'nbdcopy') {
      t.ok(s!.workload && s!.workload.bytesPerSecond > 0, `${s!.name} workload throughput`);
      t.equal(s!.workload?.jobs.length, 3, `${s!.name} three workload jobs`);
    }
  }
  const lz4 = byKind('ferry', 'lz4');
  const nbd = byKind('nbd');
  if (lz4 && nbd) t.ok(lz4.wire.bytesToDest < nbd.wire.bytesToDest, 'lz4 puts fewer bytes on the wire than plain NBD');
  t.ok(result.targets.length > 0, 'targets evaluated');
  t.match(report, /## Targets/);
  t.match(report, /PASS|MISS/);
  for (const svg of fs.readdirSync(out).filter((f) => f.endsWith('.svg')))
    t.match(fs.readFileSync(path.join(out, svg), 'utf8'), /^<svg /);
  t.equal(fs.readdirSync(out).filter((f) => f.endsWith('.svg')).length, 2, 'two plots');
});
