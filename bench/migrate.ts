// npm run bench:migrate [-- --quick] [--json FILE] [--out DIR] [--size-mib N] [--runtime SECONDS]
//                           [--codecs lz4,auto,...] [--scenarios nbdcopy,nbd,ferry,remote,local] [--links 100M/25,1G/5]
//                           [--queue-batches N] [--workers-nice N]
// Live migration of a VM disk over an emulated WAN, against the alternatives:
// (a) nbdcopy of the whole export, (b) ferry dest over plain NBD, (c) ferry dest
// over the ferry wire per codec, (d) the VM on remote storage, (e) local disk.
// A VM-like fio workload runs against the destination during each migration.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FioJob, fioArgs } from './nbd-fio';
import { freePort } from './nbd-servers';
import { buildExt4Image, DiskImage } from './migrate-image';
import { FERRY_BIN, killAll, Proc, rssBytes, run, spawnOn } from './migrate-procs';
import { timeSeriesSvg } from './migrate-svg';
import { openWanLink } from './wan/index';
import type { LinkFidelity, WanLink, WanLinkOptions } from './wan/wan-link';

const args = process.argv.slice(2);
const flag = (name: string): string | undefined => {
  const at = args.indexOf(name);
  return at >= 0 ? args[at + 1] : undefined;
};
if (args.includes('--help') || args.includes('-h')) {
  process.stdout.write(
    'usage: node build/bench/migrate.js [--quick] [--json FILE] [--out DIR] [--size-mib N] [--runtime SECONDS]\n' +
      '         [--codecs none,lz4,deflate,auto] [--scenarios nbdcopy,nbd,ferry,remote,local] [--links 100M/25,1G/5]\n' +
      '         [--queue-batches N] [--workers-nice N]\n',
  );
  process.exit(0);
}
const QUICK = args.includes('--quick');
const OUT = path.resolve(flag('--out') ?? path.join(__dirname, '..', '..', 'bench', 'out', 'migrate'));
const JSON_FILE = flag('--json');
const SIZE_MIB = Number(flag('--size-mib') ?? (QUICK ? 128 : 1024));
/** Seconds per workload job (three jobs in sequence). */
const RUNTIME = Number(flag('--runtime') ?? (QUICK ? 5 : 10));
const CODECS = (flag('--codecs') ?? 'none,lz4,deflate,auto').split(',').filter(Boolean);
const SCENARIOS = (flag('--scenarios') ?? 'nbdcopy,nbd,ferry,remote,local').split(',');
/** ferry dest's copy.queue_batches (batches in flight above the measured BDP); default: ferry's own. */
const QUEUE_BATCHES = flag('--queue-batches');
/** The codec workers' niceness at both ends (source.workers_nice, wire.workers_nice); default: ferry's own. */
const WORKERS_NICE = flag('--workers-nice');
const MiB = 1 << 20;
const SAMPLE_MS = 500;

function parseLinks(spec: string): WanLinkOptions[] {
  return spec.split(',').map((p) => {
    const m = /^(\d+(?:\.\d+)?)([MG])\/(\d+(?:\.\d+)?)$/.exec(p.trim());
    if (!m) throw new Error(`--links: "${p}" is not RATE/LATENCY like 100M/25`);
    return { bandwidthBitsPerSecond: Number(m[1]) * (m[2] === 'G' ? 1e9 : 1e6), oneWayLatencyMs: Number(m[3]) };
  });
}
const LINKS = flag('--links')
  ? parseLinks(flag('--links')!)
  : QUICK
    ? parseLinks('100M/25')
    : parseLinks('1G/5,1G/25,1G/50,100M/5,100M/25,100M/50,20M/5,20M/25,20M/50');

const WORKLOAD: FioJob[] = [
  { name: '4k random read QD4', rw: 'randread', bs: '4k', iodepth: 4 },
  { name: '4k random write QD4', rw: 'randwrite', bs: '4k', iodepth: 4 },
  { name: '1M sequential read QD2', rw: 'read', bs: '1M', iodepth: 2 },
];

/**
 * The random writes go to the image's last eighth only, as a fixed pattern, so the
 * final image can be verified: the rest must equal the source byte for byte, and
 * every block of the last eighth must be the source's block or the pattern whole.
 */
const WRITE_PATTERN = 0x46455252; // "FERR"
const writeRegion = (size: number): { offset: number; length: number } => {
  const offset = Math.floor((size * 7) / 8 / 4096) * 4096;
  return { offset, length: size - offset };
};

const log = (line: string): void => void process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${line}\n`);

// ---------- types of the report ----------

interface JobResult {
  name: string;
  iops: number;
  bytesPerSecond: number;
  latencyUs: number;
}
interface WorkloadResult {
  jobs: JobResult[];
  /** Sum of the jobs' MiB moved over the sum of their runtimes. */
  bytesPerSecond: number;
  /** [seconds since scenario start, bytes/s] */
  timeline: Array<[number, number]>;
}
interface ScenarioResult {
  name: string;
  kind: 'nbdcopy' | 'nbd' | 'ferry' | 'remote' | 'local';
  codec?: string;
  complete: boolean;
  error?: string;
  /** Seconds from starting the transfer until the source could be switched off. */
  switchOffSeconds: number | null;
  wire: { bytesToDest: number; bytesToSource: number };
  /** [seconds, fraction of the link rate source → destination] */
  linkUtilisation: Array<[number, number]>;
  workload: WorkloadResult | null;
  /** Workload throughput over local disk's, whole run (1 = no loss). */
  workloadVsLocal: number | null;
  /** Mean workload throughput (fio samples) while the migration ran, i.e. before switch-off. */
  workloadDuringMigration: number | null;
  /** The same over local disk's mean in the same time window of its run. */
  workloadDuringMigrationVsLocal: number | null;
  onDemand: { p50: number; p99: number; count: number } | null;
  /** The same for on-demand fetches of one block (the workload's 4 KiB reads that missed). */
  onDemandBlock: { p50: number; p99: number; count: number } | null;
  /** Image bytes fetched / wire bytes source → destination. */
  compressionFactor: number | null;
  /** Seconds from spawning ferry dest until it served NBD (and started copying). */
  destStartupSeconds: number | null;
  /** bytesBeforeEncoding / (switch-off time − dest startup): the copy's own rate. */
  goodputBytesPerSecond: number | null;
  peakRssBytes: number | null;
  /** Peak VmRSS of the source's server (ferry serve or ferry source), sampled like the destination's. */
  sourcePeakRssBytes: number | null;
  /** Queueing delay at the link's bottleneck, source → destination, packets until switch-off (netns bridge only). */
  bottleneckQueueMs: { p50: number; p99: number; packets: number } | null;
  /** Final destination image checked against the source and the workload's writes; null when not checked. */
  verified: { ok: boolean; detail: string } | null;
  status: Record<string, unknown> | null;
}
interface PointResult {
  bandwidthBitsPerSecond: number;
  oneWayLatencyMs: number;
  rttMs: number;
  linkKind: string;
  linkNote: string;
  fidelity: LinkFidelity | null;
  scenarios: ScenarioResult[];
}
interface Target {
  target: string;
  point: string;
  scenario: string;
  value: string;
  limit: string;
  pass: boolean;
}

// ---------- the link ----------

const openLinks = new Set<WanLink>();

async function openLink(options: WanLinkOptions): Promise<WanLink> {
  const link = await openWanLink(options);
  openLinks.add(link);
  return link;
}

const closing = new Map<WanLink, Promise<void>>();

/** Closes a link once; every caller waits for the same close (namespaces gone). */
function closeLink(link: WanLink): Promise<void> {
  openLinks.delete(link);
  if (!closing.has(link)) closing.set(link, link.close());
  return closing.get(link)!;
}

const closeAllLinks = (): Promise<unknown> => Promise.allSettled([...openLinks, ...closing.keys()].map(closeLink));

/** Set when SIGINT/SIGTERM arrived: resolves once everything is cleaned up (the process then exits 130). */
let signalled: Promise<void> | null = null;

const linkName = (o: WanLinkOptions): string =>
  `${o.bandwidthBitsPerSecond >= 1e9 ? `${o.bandwidthBitsPerSecond / 1e9} Gbit/s` : `${o.bandwidthBitsPerSecond / 1e6} Mbit/s`}, ${o.oneWayLatencyMs} ms one way`;

// ---------- samplers ----------

interface Sampler {
  stop(): void;
  linkUtilisation: Array<[number, number]>;
  peakRss: number;
  peakSourceRss: number;
  /** Percentiles of the bottleneck queue's delay over the packets since start (null: the link cannot tell). */
  queueDelay(): { p50: number; p99: number; packets: number } | null;
}

/** Percentiles of a 1 ms-bucket histogram's growth from `before` to `after`. */
function histogramPercentiles(before: number[], after: number[]): { p50: number; p99: number; packets: number } | null {
  const delta = after.map((n, i) => n - (before[i] ?? 0));
  const packets = delta.reduce((a, b) => a + b, 0);
  if (packets === 0) return null;
  const at = (p: number): number => {
    let seen = 0;
    for (let i = 0; i < delta.length; i++) if ((seen += delta[i]) >= p * packets) return i;
    return delta.length - 1;
  };
  return { p50: at(0.5), p99: at(0.99), packets };
}

function startSampler(
  link: WanLink,
  t0: number,
  rateBitsPerSecond: number,
  rssPid?: () => number | undefined,
  sourceRssPid?: () => number | undefined,
): Sampler {
  const queueAtStart = link.counters().queueDelayToDest ?? [];
  const s: Sampler = {
    stop: () => undefined,
    linkUtilisation: [],
    peakRss: 0,
    peakSourceRss: 0,
    queueDelay: () => histogramPercentiles(queueAtStart, link.counters().queueDelayToDest ?? []),
  };
  // The link's counters may advance in steps (the namespace bridge reports every 250 ms), so each
  // point is the rate over the last two sampling intervals (~1 s), sampled every 500 ms.
  const raw: Array<{ t: number; bytes: number }> = [{ t: Date.now(), bytes: link.counters().bytesToDest }];
  const tick = (): void => {
    const now = Date.now();
    const bytes = link.counters().bytesToDest;
    const from = raw[Math.max(0, raw.length - 2)];
    raw.push({ t: now, bytes });
    const dt = (now - from.t) / 1000;
    if (dt > 0) s.linkUtilisation.push([(now - t0) / 1000, ((bytes - from.bytes) * 8) / dt / rateBitsPerSecond]);
    const pid = rssPid?.();
    if (pid) s.peakRss = Math.max(s.peakRss, rssBytes(pid));
    const sourcePid = sourceRssPid?.();
    if (sourcePid) s.peakSourceRss = Math.max(s.peakSourceRss, rssBytes(sourcePid));
  };
  const timer = setInterval(tick, SAMPLE_MS);
  s.stop = () => {
    clearInterval(timer);
    tick();
  };
  return s;
}

// ---------- the workload ----------

/** Runs the three fio jobs in sequence against `uri` on the destination host. */
async function runWorkload(
  prefix: string[],
  uri: string,
  size: number,
  t0: number,
  dir: string,
): Promise<WorkloadResult> {
  const jobs: JobResult[] = [];
  const timeline: Array<[number, number]> = [];
  let bytes = 0;
  let seconds = 0;
  for (const [i, job] of WORKLOAD.entries()) {
    const bwPrefix = path.join(dir, `fio-${i}`);
    const started = Date.now();
    const { out } = await run(
      prefix,
      [
        'fio',
        ...fioArgs(job, uri, size, RUNTIME)
          .filter((a) => !a.startsWith('--ramp_time'))
          .map((a) => (job.rw === 'randwrite' && a.startsWith('--size=') ? `--size=${writeRegion(size).length}` : a)),
        ...(job.rw === 'randwrite'
          ? [
              `--offset=${writeRegion(size).offset}`,
              `--buffer_pattern=0x${WRITE_PATTERN.toString(16)}`,
              '--scramble_buffers=0',
            ]
          : []),
        `--write_bw_log=${bwPrefix}`,
        `--log_avg_msec=${SAMPLE_MS}`,
        '--thread', // the job in fio's own process: killing fio (by pid) stops the I/O too
      ],
      (RUNTIME + 60) * 1000,
    );
    const report = JSON.parse(out.slice(out.indexOf('{'))) as {
      jobs: Array<
        Record<
          'read' | 'write',
          { iops: number; bw_bytes: number; io_bytes: number; runtime: number; clat_ns: { mean: number } }
        >
      >;
    };
    const side = report.jobs[0][job.rw.includes('read') ? 'read' : 'write'];
    jobs.push({ name: job.name, iops: side.iops, bytesPerSecond: side.bw_bytes, latencyUs: side.clat_ns.mean / 1000 });
    bytes += side.io_bytes;
    seconds += side.runtime / 1000;
    // bw log: msec since the job started, KiB/s, direction, bs, offset
    for (const file of fs.readdirSync(dir).filter((f) => f.startsWith(`fio-${i}_bw`))) {
      for (const line of fs.readFileSync(path.join(dir, file), 'utf8').split('\n')) {
        const cols = line.split(',').map((c) => Number(c.trim()));
        if (cols.length >= 2 && Number.isFinite(cols[0]))
          timeline.push([(started - t0 + cols[0]) / 1000, cols[1] * 1024]);
      }
      fs.rmSync(path.join(dir, file));
    }
  }
  timeline.sort((a, b) => a[0] - b[0]);
  return { jobs, bytesPerSecond: seconds > 0 ? bytes / seconds : 0, timeline };
}

// ---------- scenarios ----------

interface Ctx {
  link: WanLink;
  point: WanLinkOptions;
  image: DiskImage;
  dir: string;
  local: WorkloadResult | null;
}

const ferry = (...a: string[]): string[] => [process.execPath, FERRY_BIN, ...a, '--log-level', 'info'];

function emptyResult(name: string, kind: ScenarioResult['kind'], codec?: string): ScenarioResult {
  return {
    name,
    kind,
    codec,
    complete: false,
    switchOffSeconds: null,
    wire: { bytesToDest: 0, bytesToSource: 0 },
    linkUtilisation: [],
    workload: null,
    workloadVsLocal: null,
    workloadDuringMigration: null,
    workloadDuringMigrationVsLocal: null,
    onDemand: null,
    onDemandBlock: null,
    bottleneckQueueMs: null,
    compressionFactor: null,
    goodputBytesPerSecond: null,
    destStartupSeconds: null,
    peakRssBytes: null,
    sourcePeakRssBytes: null,
    verified: null,
    status: null,
  };
}

/** Starts a server on the source host and returns where the destination host reaches it. */
async function startSourceServer(
  ctx: Ctx,
  name: string,
  argv: (listen: string) => string[],
): Promise<{ proc: Proc; at: string }> {
  const port = await freePort();
  const proc = spawnOn(ctx.link.sourcePrefix, name, argv(`${ctx.link.sourceListenHost}:${port}`));
  await proc.waitFor('"msg":"serving"', 20_000);
  const at = await ctx.link.reach(port);
  return { proc, at: `${at.host}:${at.port}` };
}

async function scenarioNbdcopy(ctx: Ctx): Promise<ScenarioResult> {
  const r = emptyResult('nbdcopy (ferry serve → file)', 'nbdcopy');
  const { proc, at } = await startSourceServer(ctx, 'serve', (l) =>
    ferry('serve', '--image', ctx.image.path, '--export', 'disk', '--listen', l, '--read-only'),
  );
  try {
    const before = await ctx.link.freshCounters();
    const t0 = Date.now();
    const sampler = startSampler(ctx.link, t0, ctx.point.bandwidthBitsPerSecond);
    try {
      const target = path.join(ctx.dir, 'nbdcopy.img');
      await run(ctx.link.destPrefix, ['nbdcopy', `nbd://${at}/disk`, target], migrationTimeoutMs(ctx));
      r.switchOffSeconds = (Date.now() - t0) / 1000;
      r.complete = fs.statSync(target).size === ctx.image.sizeBytes;
      fs.rmSync(target, { force: true });
    } finally {
      sampler.stop();
    }
    r.linkUtilisation = sampler.linkUtilisation;
    diffWire(r, before, await ctx.link.freshCounters());
  } finally {
    await proc.stop();
  }
  return r;
}

function migrationTimeoutMs(ctx: Ctx): number {
  return Math.ceil(((ctx.image.sizeBytes * 8) / ctx.point.bandwidthBitsPerSecond) * 3 * 1000 + RUNTIME * 3000 + 60_000);
}

function diffWire(r: ScenarioResult, a: { bytesToDest: number; bytesToSource: number }, b: typeof a): void {
  r.wire = { bytesToDest: b.bytesToDest - a.bytesToDest, bytesToSource: b.bytesToSource - a.bytesToSource };
}

async function scenarioMigrate(ctx: Ctx, kind: 'nbd' | 'ferry', codec?: string): Promise<ScenarioResult> {
  const r = emptyResult(
    kind === 'nbd' ? 'ferry dest ← NBD (ferry serve)' : `ferry dest ← ferry wire, ${codec}`,
    kind,
    codec,
  );
  const { proc: src, at } =
    kind === 'nbd'
      ? await startSourceServer(ctx, 'serve', (l) =>
          ferry('serve', '--image', ctx.image.path, '--export', 'disk', '--listen', l, '--read-only'),
        )
      : await startSourceServer(ctx, `source ${codec}`, (l) =>
          ferry(
            'source',
            '--image',
            ctx.image.path,
            '--export',
            'disk',
            '--listen',
            l,
            '--insecure',
            '--codec',
            codec!,
            ...(WORKERS_NICE !== undefined ? ['--config', sourceConfig(ctx)] : []),
          ),
        );
  const destImage = path.join(ctx.dir, `dest-${kind}-${codec ?? 'nbd'}.img`);
  const control = path.join(ctx.dir, `ctl-${kind}-${codec ?? 'nbd'}.sock`);
  let dest: Proc | undefined;
  try {
    const destPort = await freePort();
    const before = await ctx.link.freshCounters();
    const t0 = Date.now();
    dest = spawnOn(
      ctx.link.destPrefix,
      'dest',
      ferry(
        'dest',
        '--cutover-at-start', // the workload runs at the destination from the start
        '--source',
        `${kind === 'nbd' ? 'nbd' : 'ferry'}://${at}/disk`,
        '--image',
        destImage,
        '--export',
        'vm',
        '--listen',
        `127.0.0.1:${destPort}`,
        '--control',
        control,
        ...(kind === 'ferry' ? ['--insecure'] : []),
        ...(QUEUE_BATCHES !== undefined || WORKERS_NICE !== undefined ? ['--config', destConfig(ctx)] : []),
      ),
    );
    const destPid = dest.child.pid;
    const sampler = startSampler(
      ctx.link,
      t0,
      ctx.point.bandwidthBitsPerSecond,
      () => destPid,
      () => src.child.pid,
    );
    try {
      r.destStartupSeconds = ((await dest.waitFor('"msg":"serving"', 20_000)) - t0) / 1000;
      const completed = dest.waitFor('migration complete', migrationTimeoutMs(ctx));
      completed.catch(() => undefined);
      r.workload = await runWorkload(
        ctx.link.destPrefix,
        `nbd://127.0.0.1:${destPort}/vm`,
        ctx.image.sizeBytes,
        t0,
        ctx.dir,
      );
      const doneAt = await completed;
      r.switchOffSeconds = (doneAt - t0) / 1000;
      r.complete = true;
      const { out } = await run(
        ctx.link.destPrefix,
        [process.execPath, FERRY_BIN, 'ctl', '--control', control, 'status', '--json'],
        15_000,
      );
      const status = JSON.parse(out) as Record<string, unknown> & {
        onDemandLatencyMs: { p50: number; p99: number; count: number };
        onDemandBlockLatencyMs?: { p50: number; p99: number; count: number };
        bytesBeforeEncoding: number;
        blocksHeld: number;
        blocksTotal: number;
      };
      r.status = status;
      r.onDemand = status.onDemandLatencyMs;
      r.onDemandBlock = status.onDemandBlockLatencyMs ?? null;
      r.complete = status.blocksHeld === status.blocksTotal;
    } catch (e) {
      r.error = (e as Error).message.slice(0, 600);
      log(`  ${r.name}: ${r.error}`);
    } finally {
      sampler.stop();
    }
    r.linkUtilisation = sampler.linkUtilisation;
    r.peakRssBytes = sampler.peakRss;
    r.sourcePeakRssBytes = sampler.peakSourceRss || null;
    r.bottleneckQueueMs = sampler.queueDelay();
    diffWire(r, before, await ctx.link.freshCounters());
    const decoded = Number(r.status?.bytesBeforeEncoding ?? 0);
    if (decoded > 0 && r.wire.bytesToDest > 0) r.compressionFactor = decoded / r.wire.bytesToDest;
    if (decoded > 0 && r.switchOffSeconds)
      r.goodputBytesPerSecond = decoded / (r.switchOffSeconds - (r.destStartupSeconds ?? 0));
  } finally {
    await dest?.stop();
    await src.stop();
    if (r.complete) {
      r.verified = verifyImage(ctx.image.path, destImage);
      log(`  ${r.name}: final image ${r.verified.ok ? 'verified' : 'WRONG'}: ${r.verified.detail}`);
      if (!r.verified.ok) r.complete = false;
    }
    fs.rmSync(destImage, { force: true });
    fs.rmSync(`${destImage}.ferry-state`, { force: true });
  }
  return r;
}

function destConfig(ctx: Ctx): string {
  const file = path.join(ctx.dir, 'dest.toml');
  const copy = QUEUE_BATCHES !== undefined ? `[copy]\nqueue_batches = ${Number(QUEUE_BATCHES)}\n` : '';
  const wire = WORKERS_NICE !== undefined ? `[wire]\nworkers_nice = ${Number(WORKERS_NICE)}\n` : '';
  fs.writeFileSync(file, copy + wire);
  return file;
}

function sourceConfig(ctx: Ctx): string {
  const file = path.join(ctx.dir, 'source.toml');
  fs.writeFileSync(file, `[source]\nworkers_nice = ${Number(WORKERS_NICE)}\n`);
  return file;
}

/** Source bytes everywhere but the write region; there, each 4 KiB block is the source's or the write pattern whole. */
function verifyImage(sourcePath: string, destPath: string): { ok: boolean; detail: string } {
  const size = fs.statSync(sourcePath).size;
  if (fs.statSync(destPath).size !== size) return { ok: false, detail: `size ${fs.statSync(destPath).size} ≠ ${size}` };
  const region = writeRegion(size);
  const pattern = Buffer.alloc(4096);
  for (let i = 0; i < pattern.length; i += 4) pattern.writeUInt32BE(WRITE_PATTERN, i);
  const chunk = 4 << 20;
  const a = Buffer.alloc(chunk);
  const b = Buffer.alloc(chunk);
  const fa = fs.openSync(sourcePath, 'r');
  const fb = fs.openSync(destPath, 'r');
  let written = 0;
  try {
    for (let at = 0; at < size; at += chunk) {
      const n = Math.min(chunk, size - at);
      fs.readSync(fa, a, 0, n, at);
      fs.readSync(fb, b, 0, n, at);
      for (let o = 0; o < n; o += 4096) {
        const end = Math.min(o + 4096, n);
        if (a.subarray(o, end).equals(b.subarray(o, end))) continue;
        const inRegion = at + o >= region.offset;
        if (inRegion && b.subarray(o, end).equals(pattern.subarray(0, end - o))) {
          written++;
          continue;
        }
        return {
          ok: false,
          detail: `block at ${at + o} differs from the source${inRegion ? ' and is not a whole write' : ''}`,
        };
      }
    }
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
  return {
    ok: true,
    detail: `${(size / MiB).toFixed(0)} MiB compared: the source's bytes, plus ${written} whole 4 KiB blocks written by the workload`,
  };
}

/** (d) remote: the workload straight against the source over the link; (e) local: against a local copy. */
async function scenarioDirect(ctx: Ctx, kind: 'remote' | 'local'): Promise<ScenarioResult> {
  const r = emptyResult(kind === 'remote' ? 'remote storage (no migration)' : 'local disk', kind);
  const copy = path.join(ctx.dir, `${kind}.img`);
  fs.copyFileSync(ctx.image.path, copy); // the workload writes: never into the source image
  let proc: Proc | undefined;
  try {
    let uri: string;
    if (kind === 'remote') {
      const s = await startSourceServer(ctx, 'serve', (l) =>
        ferry('serve', '--image', copy, '--export', 'disk', '--listen', l),
      );
      proc = s.proc;
      uri = `nbd://${s.at}/disk`;
    } else {
      const port = await freePort();
      proc = spawnOn(
        ctx.link.destPrefix,
        'serve local',
        ferry('serve', '--image', copy, '--export', 'disk', '--listen', `127.0.0.1:${port}`),
      );
      await proc.waitFor('"msg":"serving"', 20_000);
      uri = `nbd://127.0.0.1:${port}/disk`;
    }
    const before = await ctx.link.freshCounters();
    const t0 = Date.now();
    const sampler = startSampler(ctx.link, t0, ctx.point.bandwidthBitsPerSecond);
    try {
      r.workload = await runWorkload(ctx.link.destPrefix, uri, ctx.image.sizeBytes, t0, ctx.dir);
      r.complete = true;
    } catch (e) {
      r.error = (e as Error).message.slice(0, 600);
    } finally {
      sampler.stop();
    }
    r.linkUtilisation = sampler.linkUtilisation;
    diffWire(r, before, await ctx.link.freshCounters());
  } finally {
    await proc?.stop();
    fs.rmSync(copy, { force: true });
  }
  return r;
}

// ---------- report ----------

const f1 = (v: number | null | undefined, d = 1): string =>
  v === null || v === undefined || !Number.isFinite(v) ? '—' : v.toFixed(d);
const mib = (b: number | null | undefined): string => (b === null || b === undefined ? '—' : (b / MiB).toFixed(1));
const pointKey = (p: { bandwidthBitsPerSecond: number; oneWayLatencyMs: number }): string =>
  `${p.bandwidthBitsPerSecond >= 1e9 ? `${p.bandwidthBitsPerSecond / 1e9}G` : `${p.bandwidthBitsPerSecond / 1e6}M`}-${p.oneWayLatencyMs}ms`;

function evaluateTargets(points: PointResult[]): Target[] {
  const targets: Target[] = [];
  for (const p of points) {
    const key = pointKey(p);
    const rtt = p.rttMs;
    const nbdcopy = p.scenarios.find((s) => s.kind === 'nbdcopy');
    for (const s of p.scenarios.filter((x) => x.kind === 'nbd' || x.kind === 'ferry')) {
      if (p.oneWayLatencyMs === 25 && p.bandwidthBitsPerSecond >= 1e8 && s.goodputBytesPerSecond !== null) {
        const cf = s.compressionFactor ?? 1;
        const limit = (0.9 * p.bandwidthBitsPerSecond * cf) / 8;
        targets.push({
          target: 'background goodput ≥ 0.9 × link × compression',
          point: key,
          scenario: s.name,
          value: `${f1(s.goodputBytesPerSecond / MiB)} MiB/s`,
          limit: `${f1(limit / MiB)} MiB/s (×${f1(cf, 2)})`,
          pass: s.goodputBytesPerSecond >= limit,
        });
      }
      if (s.onDemandBlock && s.onDemandBlock.count > 0) {
        targets.push({
          target: 'on-demand 4 KiB p50 ≤ RTT + 5 ms',
          point: key,
          scenario: s.name,
          value: `${f1(s.onDemandBlock.p50)} ms`,
          limit: `${f1(rtt + 5)} ms`,
          pass: s.onDemandBlock.p50 <= rtt + 5,
        });
        targets.push({
          target: 'on-demand 4 KiB p99 ≤ 2 × RTT',
          point: key,
          scenario: s.name,
          value: `${f1(s.onDemandBlock.p99)} ms`,
          limit: `${f1(2 * rtt)} ms`,
          pass: s.onDemandBlock.p99 <= 2 * rtt,
        });
      }
      if (s.onDemand && s.onDemand.count > 0) {
        targets.push({
          target: 'on-demand p50 ≤ RTT + 5 ms',
          point: key,
          scenario: s.name,
          value: `${f1(s.onDemand.p50)} ms`,
          limit: `${f1(rtt + 5)} ms`,
          pass: s.onDemand.p50 <= rtt + 5,
        });
        targets.push({
          target: 'on-demand p99 ≤ 2 × RTT',
          point: key,
          scenario: s.name,
          value: `${f1(s.onDemand.p99)} ms`,
          limit: `${f1(2 * rtt)} ms`,
          pass: s.onDemand.p99 <= 2 * rtt,
        });
      }
      if (p.bandwidthBitsPerSecond === 1e8 && nbdcopy?.switchOffSeconds && s.switchOffSeconds !== null) {
        targets.push({
          target: 'switch-off time ≤ 0.5 × nbdcopy',
          point: key,
          scenario: s.name,
          value: `${f1(s.switchOffSeconds)} s`,
          limit: `${f1(0.5 * nbdcopy.switchOffSeconds)} s`,
          pass: s.switchOffSeconds <= 0.5 * nbdcopy.switchOffSeconds,
        });
      }
      if (s.peakRssBytes) {
        targets.push({
          target: 'destination RSS ≤ 200 MiB',
          point: key,
          scenario: s.name,
          value: `${mib(s.peakRssBytes)} MiB`,
          limit: '200 MiB',
          pass: s.peakRssBytes <= 200 * MiB,
        });
      }
    }
  }
  return targets;
}

function markdown(
  meta: Record<string, unknown>,
  image: DiskImage,
  points: PointResult[],
  targets: Target[],
  svgs: string[],
): string {
  const L: string[] = [];
  L.push(`# ferry migration benchmark`, '');
  L.push(`Command: \`${String(meta.command)}\`  `);
  L.push(`Link points measured: ${String(meta.linkPointsDone)}  `);
  L.push(`Date: ${String(meta.date)}; host: ${String(meta.host)}  `);
  L.push(`Image: ${(image.sizeBytes / MiB).toFixed(0)} MiB ${image.description}  `);
  L.push(
    `Workload on the destination (fio nbd engine, in sequence, ${RUNTIME} s each): ${WORKLOAD.map((j) => j.name).join(', ')}. ` +
      'The ferry wire runs with `--insecure` (no TLS/PSK) in this bench.',
    '',
  );
  for (const p of points) {
    L.push(`## ${linkName(p)} (RTT ${f1(p.rttMs)} ms)`, '');
    L.push(
      `Link: ${p.linkKind} — ${p.linkNote}` +
        (p.fidelity
          ? `; measured RTT ${f1(p.fidelity.rttMs)} ms, throughput ${f1(p.fidelity.throughputBitsPerSecond / 1e6)} Mbit/s`
          : ''),
      '',
    );
    L.push(
      '| scenario | complete | switch-off s (of which dest start-up) | wire → dest MiB | wire → src MiB | compression × | goodput MiB/s | mean link util (until switch-off) | workload MiB/s (whole run) | vs local | workload MiB/s until switch-off | vs local, same window | on-demand p50 / p99 ms (n) | on-demand 4 KiB p50 / p99 ms (n) | bottleneck queue p50 / p99 ms | dest peak RSS MiB | source peak RSS MiB | final image |',
    );
    L.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
    for (const s of p.scenarios) {
      // until switch-off where there is one (the workload goes on after it), else the whole run
      const window = s.linkUtilisation.filter(([t]) => s.switchOffSeconds === null || t <= s.switchOffSeconds);
      const util = window.length ? window.reduce((a, b) => a + b[1], 0) / window.length : null;
      L.push(
        `| ${s.name} | ${s.complete ? 'yes' : `NO${s.error ? ` (${s.error.split('\n')[0].slice(0, 80)})` : ''}`} | ${f1(s.switchOffSeconds)}${s.destStartupSeconds !== null ? ` (${f1(s.destStartupSeconds)})` : ''} | ${mib(s.wire.bytesToDest)} | ${mib(s.wire.bytesToSource)} | ${f1(s.compressionFactor, 2)} | ${s.goodputBytesPerSecond ? f1(s.goodputBytesPerSecond / MiB) : '—'} | ${util === null ? '—' : `${(util * 100).toFixed(0)}%`} | ${s.workload ? f1(s.workload.bytesPerSecond / MiB) : '—'} | ${f1(s.workloadVsLocal, 2)} | ${s.workloadDuringMigration !== null ? f1(s.workloadDuringMigration / MiB) : '—'} | ${f1(s.workloadDuringMigrationVsLocal, 2)} | ${s.onDemand ? `${f1(s.onDemand.p50)} / ${f1(s.onDemand.p99)} (${s.onDemand.count})` : '—'} | ${s.onDemandBlock ? `${f1(s.onDemandBlock.p50)} / ${f1(s.onDemandBlock.p99)} (${s.onDemandBlock.count})` : '—'} | ${s.bottleneckQueueMs ? `${s.bottleneckQueueMs.p50} / ${s.bottleneckQueueMs.p99}` : '—'} | ${mib(s.peakRssBytes)} | ${mib(s.sourcePeakRssBytes)} | ${s.verified ? (s.verified.ok ? 'verified' : `WRONG: ${s.verified.detail}`) : '—'} |`,
      );
    }
    L.push('', 'Workload per job (MiB/s, IOPS, mean latency µs):', '');
    L.push(`| scenario | ${WORKLOAD.map((j) => j.name).join(' | ')} |`);
    L.push(`|---|${WORKLOAD.map(() => '---').join('|')}|`);
    for (const s of p.scenarios.filter((x) => x.workload))
      L.push(
        `| ${s.name} | ${s.workload!.jobs.map((j) => `${f1(j.bytesPerSecond / MiB)} MiB/s, ${j.iops.toFixed(0)} IOPS, ${j.latencyUs.toFixed(0)} µs`).join(' | ')} |`,
      );
    L.push('');
    for (const svg of svgs.filter((n) => n.startsWith(pointKey(p)))) L.push(`![${svg}](${svg})`, '');
  }
  L.push('## Targets', '');
  L.push('| target | link | scenario | value | limit | result |', '|---|---|---|---|---|---|');
  for (const t of targets)
    L.push(`| ${t.target} | ${t.point} | ${t.scenario} | ${t.value} | ${t.limit} | ${t.pass ? 'PASS' : 'MISS'} |`);
  if (!points.some((p) => p.bandwidthBitsPerSecond === 1e9 && p.oneWayLatencyMs === 25))
    L.push('', 'The 1 Gbit/s × 25 ms goodput target is not measured in this run (full mode only).');
  L.push('');
  return L.join('\n');
}

/** Writes report.md, report.json (and --json) and the plots for the points measured so far. */
function writeReport(
  image: DiskImage,
  points: PointResult[],
  started: number,
): { report: string; targets: Target[]; wallSeconds: number } {
  // plots
  const svgs: string[] = [];
  for (const p of points) {
    const key = pointKey(p);
    const util = `${key}-link.svg`;
    fs.writeFileSync(
      path.join(OUT, util),
      timeSeriesSvg(
        `Link utilisation source → destination, ${linkName(p)}`,
        p.scenarios
          .filter((s) => s.kind !== 'local')
          .map((s) => ({ name: s.name, points: s.linkUtilisation.map(([t, v]) => [t, v * 100]) })),
        '% of link rate',
        100,
      ),
    );
    const wl = `${key}-workload.svg`;
    fs.writeFileSync(
      path.join(OUT, wl),
      timeSeriesSvg(
        `Workload throughput on the destination, ${linkName(p)}`,
        p.scenarios
          .filter((s) => s.workload)
          .map((s) => ({ name: s.name, points: s.workload!.timeline.map(([t, v]) => [t, v / MiB]) })),
        'MiB/s (fio, 500 ms averages)',
      ),
    );
    svgs.push(util, wl);
  }
  const targets = evaluateTargets(points);
  const meta = {
    command: `node build/bench/migrate.js ${args.join(' ')}`.trim(),
    date: new Date().toISOString(),
    host: `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`,
    mode: QUICK ? 'quick' : 'full',
    linkPointsDone: `${points.length} of ${LINKS.length}`,
    runtimePerJobSeconds: RUNTIME,
    wallSeconds: 0,
  };
  meta.wallSeconds = (Date.now() - started) / 1000;
  const report = markdown(meta, image, points, targets, svgs);
  fs.writeFileSync(path.join(OUT, 'report.md'), report);
  const json = JSON.stringify(
    { ...meta, image: { ...image, path: undefined }, workload: WORKLOAD, points, targets },
    null,
    1,
  );
  fs.writeFileSync(path.join(OUT, 'report.json'), json);
  if (JSON_FILE) fs.writeFileSync(JSON_FILE, json);
  return { report, targets, wallSeconds: meta.wallSeconds };
}

// ---------- main ----------

async function main(): Promise<void> {
  const started = Date.now();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-migrate-'));
  const cleanup = (): void => {
    killAll();
    fs.rmSync(dir, { recursive: true, force: true });
  };
  process.on('exit', cleanup);
  for (const sig of ['SIGINT', 'SIGTERM'] as const)
    process.once(sig, () => {
      log(`${sig}: stopping`);
      killAll();
      const timeout = new Promise((r) => setTimeout(r, 10_000).unref());
      signalled = Promise.race([closeAllLinks(), timeout]).then(() => {
        cleanup();
        process.exit(130);
      });
    });

  log(`building a ${SIZE_MIB} MiB ext4 image in ${dir}`);
  const image = buildExt4Image(dir, path.join(dir, 'source.img'), SIZE_MIB * MiB);
  log(image.description);
  fs.mkdirSync(OUT, { recursive: true });

  const points: PointResult[] = [];
  for (const point of LINKS) {
    if (signalled) break;
    log(`link ${linkName(point)}`);
    const link = await openLink(point);
    try {
      let fidelity: LinkFidelity | null = null;
      try {
        fidelity = await link.measure();
      } catch (e) {
        log(`  link.measure failed: ${(e as Error).message}`);
      }
      const ctx: Ctx = { link, point, image, dir, local: null };
      const pr: PointResult = {
        ...point,
        rttMs: 2 * point.oneWayLatencyMs,
        linkKind: link.kind,
        linkNote: link.note,
        fidelity,
        scenarios: [],
      };
      type Step = { kind: ScenarioResult['kind']; codec?: string; run: () => Promise<ScenarioResult> };
      const plan: Step[] = [];
      if (SCENARIOS.includes('local')) plan.push({ kind: 'local', run: () => scenarioDirect(ctx, 'local') });
      if (SCENARIOS.includes('nbdcopy')) plan.push({ kind: 'nbdcopy', run: () => scenarioNbdcopy(ctx) });
      if (SCENARIOS.includes('nbd')) plan.push({ kind: 'nbd', run: () => scenarioMigrate(ctx, 'nbd') });
      if (SCENARIOS.includes('ferry'))
        for (const c of CODECS) plan.push({ kind: 'ferry', codec: c, run: () => scenarioMigrate(ctx, 'ferry', c) });
      if (SCENARIOS.includes('remote')) plan.push({ kind: 'remote', run: () => scenarioDirect(ctx, 'remote') });
      for (const step of plan) {
        if (signalled) break;
        let r: ScenarioResult;
        try {
          r = await step.run();
        } catch (e) {
          // a scenario that cannot even start is reported as incomplete; the others still run
          r = emptyResult(`${step.kind}${step.codec ? ` ${step.codec}` : ''} (failed)`, step.kind, step.codec);
          r.error = (e as Error).message.slice(0, 600);
          log(`  ${r.name}: ${r.error}`);
        }
        if (r.kind === 'local') ctx.local = r.workload;
        pr.scenarios.push(r);
        log(
          `  ${r.name.padEnd(34)} ${r.complete ? 'complete' : 'INCOMPLETE'} switch-off ${f1(r.switchOffSeconds)} s, ` +
            `wire ${mib(r.wire.bytesToDest)}/${mib(r.wire.bytesToSource)} MiB, workload ${r.workload ? f1(r.workload.bytesPerSecond / MiB) : '—'} MiB/s, ` +
            `on-demand ${r.onDemand ? `${f1(r.onDemand.p50)}/${f1(r.onDemand.p99)} ms` : '—'}` +
            ` (4 KiB ${r.onDemandBlock ? `${f1(r.onDemandBlock.p50)}/${f1(r.onDemandBlock.p99)} ms` : '—'}), queue ${r.bottleneckQueueMs ? `${r.bottleneckQueueMs.p50}/${r.bottleneckQueueMs.p99} ms` : '—'}, RSS ${mib(r.peakRssBytes)} MiB (source ${mib(r.sourcePeakRssBytes)} MiB)`,
        );
      }
      const meanUntil = (w: WorkloadResult, until: number): number | null => {
        const xs = w.timeline.filter(([t]) => t <= until).map(([, v]) => v);
        return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null;
      };
      for (const s of pr.scenarios) {
        if (s.workload && ctx.local && ctx.local.bytesPerSecond > 0)
          s.workloadVsLocal = s.workload.bytesPerSecond / ctx.local.bytesPerSecond;
        if (s.workload && s.switchOffSeconds !== null && s.kind !== 'nbdcopy') {
          s.workloadDuringMigration = meanUntil(s.workload, s.switchOffSeconds);
          const local = ctx.local ? meanUntil(ctx.local, s.switchOffSeconds) : null;
          if (s.workloadDuringMigration !== null && local)
            s.workloadDuringMigrationVsLocal = s.workloadDuringMigration / local;
        }
      }
      points.push(pr);
      // After every point: a long run that is stopped keeps what it measured.
      if (points.length < LINKS.length) writeReport(image, points, started);
    } finally {
      await closeLink(link);
    }
  }

  if (signalled) return; // interrupted: the report of the points done so far stays
  const { report, targets, wallSeconds } = writeReport(image, points, started);
  process.stdout.write(report);
  for (const t of targets)
    log(`${t.pass ? 'PASS' : 'MISS'}  ${t.target} [${t.point}, ${t.scenario}]: ${t.value} (limit ${t.limit})`);
  log(`done in ${wallSeconds.toFixed(0)} s; report in ${OUT}`);
}

main().then(
  async () => {
    await closeAllLinks();
    if (signalled) await signalled;
    process.exit(0);
  },
  async (e: unknown) => {
    log(`failed: ${(e as Error).stack ?? String(e)}`);
    await closeAllLinks(); // namespaces must not outlive the bench
    if (signalled) await signalled;
    process.exit(1);
  },
);
