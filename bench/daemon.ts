// npm run bench:daemon [-- --size-mib N] [--migrations N] [--links 100M/25,1G/5] [--json FILE]
//                        [--source nbd|wire] [--codec lz4] [--content random|mixed]
//                        [--ferry-node-args "--cpu-prof --cpu-prof-dir=bench/out/prof"]
// N concurrent migrations in one `ferry daemon`, their sources behind ONE emulated
// WAN link (a plain NBD server, nbdkit, serving every source image; or with
// `--source wire` a second `ferry daemon` serving them over the ferry wire with
// `--codec`): aggregate
// goodput against the link, Jain's fairness index between the equal-weight
// migrations, the daemon's on-demand p50 per migration while all copy, its RSS,
// and its CPU per migrated GiB against one `ferry dest` migrating one disk over
// the same link under the same per-migration load (a VM reading, its status
// polled). It also samples the emulated link's queue every 10 ms while all
// copy: the time a byte entering the link then waits before it is on the wire.
// `--content mixed` makes each image a tenth of random data, eight tenths of one
// 4 KiB block repeated (references on the wire: runs that cost the link almost
// nothing) and a tenth of random data again, as images with long stretches of
// repeated or empty blocks are.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import { sendControl } from '../src/control/control-client';
import { parseDaemonResponseLine, type DaemonRequest } from '../src/control/daemon-protocol';
import type { MigrationReport } from '../src/daemon/migration-status';
import { SlowLink } from '../src/link/slow-link';
import { NbdClient } from '../src/nbd/client';
import { freePort } from './nbd-servers';
import { FERRY_BIN, killAll, spawnOn } from './migrate-procs';

const args = process.argv.slice(2);
const flag = (name: string): string | undefined => {
  const at = args.indexOf(name);
  return at >= 0 ? args[at + 1] : undefined;
};
const SIZE_MIB = Number(flag('--size-mib') ?? 64);
const MIGRATIONS = Number(flag('--migrations') ?? 8);
const LINKS = (flag('--links') ?? '100M/25,1G/5').split(',').map((p) => {
  const m = /^(\d+(?:\.\d+)?)([MG])\/(\d+(?:\.\d+)?)$/.exec(p.trim());
  if (!m) throw new Error(`--links: "${p}" is not RATE/LATENCY like 100M/25`);
  return { bits: Number(m[1]) * (m[2] === 'G' ? 1e9 : 1e6), latencyMs: Number(m[3]), name: p.trim() };
});
/** Node flags for the daemon and the `ferry dest` peer (a profile of each, say). */
const FERRY_NODE_ARGS = (flag('--ferry-node-args') ?? '').split(' ').filter(Boolean);
const FERRY = [process.execPath, ...FERRY_NODE_ARGS, FERRY_BIN];
const SOURCE = flag('--source') ?? 'nbd';
if (SOURCE !== 'nbd' && SOURCE !== 'wire') throw new Error(`--source: "${SOURCE}" is not nbd or wire`);
const CODEC = flag('--codec') ?? 'lz4';
const CONTENT = flag('--content') ?? 'random';
if (CONTENT !== 'random' && CONTENT !== 'mixed') throw new Error(`--content: "${CONTENT}" is not random or mixed`);
const MiB = 1 << 20;
const log = (line: string): void => void process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${line}\n`);
/** A VM reads a block this often; the bench asks each migration's status this often. */
const POLL_READ_MS = 100;
const POLL_STATUS_MS = 250;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** CPU seconds (user + system) a process has used so far. */
function cpuSeconds(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** CPU seconds over wall seconds: the cores used, to two decimals. */
function coresOver(cpuSeconds: number, seconds: number): number {
  return Math.round((cpuSeconds / seconds) * 100) / 100;
}

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : 0;
}

/** A source image of SIZE_MIB (see --content). */
function sourceImage(): Buffer {
  const image = crypto.randomBytes(SIZE_MIB * MiB);
  if (CONTENT === 'mixed') {
    const tenth = Math.floor(SIZE_MIB / 10) * MiB;
    const block = crypto.randomBytes(4096);
    for (let at = tenth; at < image.length - tenth; at += block.length) block.copy(image, at);
  }
  return image;
}

/** Jain's fairness index of the throughputs: 1 when all are equal, 1/n when one takes all. */
function jain(xs: number[]): number {
  const sum = xs.reduce((a, b) => a + b, 0);
  return (sum * sum) / (xs.length * xs.reduce((a, b) => a + b * b, 0));
}

/** A VM reading a random 4 KiB block every 100 ms through `exportName` until `reading.on` is false. */
async function vmReader(port: number, exportName: string, reading: { on: boolean }): Promise<void> {
  const client = await NbdClient.connect({ host: '127.0.0.1', port }, { exportName });
  while (reading.on) {
    const block = Math.floor(Math.random() * ((SIZE_MIB * MiB) / 4096));
    await client.read(block * 4096, 4096).catch(() => undefined);
    await sleep(POLL_READ_MS);
  }
  await client.close();
}

/**
 * The emulated link's round trip when idle: the median of a few 4 KiB reads through it. Its
 * timers fire late by the event loop's granularity, so it is a little above twice the latency
 * set, and the on-demand figures are judged against it.
 */
async function idleRoundTripMs(port: number): Promise<number> {
  const client = await NbdClient.connect({ host: '127.0.0.1', port }, { exportName: 'm0.img' });
  const times: number[] = [];
  for (let i = 0; i < 9; i++) {
    const t = performance.now();
    await client.read(i * 4096, 4096);
    times.push(performance.now() - t);
  }
  await client.close();
  times.sort((a, b) => a - b);
  return Math.round(times[4] * 10) / 10;
}

/** The goodput ÷ link between the status rounds where the bytes held first reached ¼ and ¾ of `total`. */
function steadyGoodput(timeline: Array<[number, number, number]>, total: number, bits: number): number | null {
  const from = timeline.find(([, held]) => held >= total / 4);
  const to = timeline.find(([, held]) => held >= (3 * total) / 4);
  if (!from || !to || to[0] <= from[0]) return null;
  return Math.round((((to[1] - from[1]) * 8) / (to[0] - from[0]) / bits) * 1000) / 1000;
}

/**
 * A `ferry daemon` serving every image in `dir` (m0.img as m0, ...) over the ferry wire, without
 * authentication (loopback only) and with `CODEC`.
 */
async function startWireSource(
  dir: string,
  work: string,
): Promise<{ port: number; pid: number; stop: () => Promise<void> }> {
  const port = await freePort();
  const config = path.join(work, 'source.toml');
  const exports = fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.img'))
    .map((f) => `[[source.export]]\nname = "${f.slice(0, -4)}"\nimage = "${path.join(dir, f)}"\n`)
    .join('');
  fs.writeFileSync(
    config,
    `[daemon]\nstate_dir = "${work}/source-state"\ncontrol = "${work}/source.sock"\nlisten = "127.0.0.1:0"\n` +
      `[log]\nlevel = "warn"\n[source]\nlisten = "127.0.0.1:${port}"\ninsecure = true\ncodec = "${CODEC}"\n${exports}`,
  );
  const source = spawnOn(FERRY, 'source ferryd', ['daemon', '--config', config, '--log-level', 'info']);
  await source.waitFor('"msg":"serving"', 60_000);
  return { port, pid: source.child.pid!, stop: () => source.stop() };
}

/** Seconds of status rounds (until every copy completed) in which the link carried less than a fifth of its rate. */
function secondsLinkBelowFifth(timeline: Array<[number, number, number]>, bits: number): number {
  let seconds = 0;
  for (let i = 1; i < timeline.length; i++) {
    const dt = timeline[i][0] - timeline[i - 1][0];
    if (dt > 0 && ((timeline[i][2] - timeline[i - 1][2]) * 8) / dt < bits / 5) seconds += dt;
  }
  return Math.round(seconds * 10) / 10;
}

async function startNbdkit(dir: string): Promise<{ port: number; pid: number; stop: () => void }> {
  const port = await freePort();
  const child = spawn('nbdkit', ['-f', '-r', '-i', '127.0.0.1', '-p', String(port), 'file', `dir=${dir}`], {
    stdio: 'ignore',
  });
  for (let i = 0; i < 100; i++) {
    const ok = await NbdClient.connect({ host: '127.0.0.1', port }, { exportName: 'm0.img' }).then(
      (c) => c.close().then(() => true),
      () => false,
    );
    if (ok) break;
    await sleep(50);
  }
  return { port, pid: child.pid!, stop: () => void child.kill('SIGKILL') };
}

interface LinkResult {
  link: string;
  loadAverage: number[];
  migrations: number;
  sizeMiB: number;
  seconds: number;
  goodputMbit: number;
  linkMbit: number;
  goodputOverLink: number;
  /** Image bytes over the link while the copies went from a quarter to three quarters held: past start-up, before the tail. */
  steadyGoodputOverLink: number | null;
  jainWhileAllCopy: number;
  /** Seconds in which the link carried less than a fifth of its rate (see secondsLinkBelowFifth). */
  linkBelowFifthSeconds: number;
  onDemandP50Ms: number[];
  /** Median and 90th percentile of the link's queueing delay (source → destination) while all copy. */
  linkQueueP50Ms: number;
  linkQueueP90Ms: number;
  /** The share of the samples at which the link's queue was empty (its wire idle at times). */
  linkQueueEmptyShare: number;
  rttMs: number;
  /** `nbd` (nbdkit) or `wire` (a `ferry daemon` with `codec`), and the images' content. */
  source: string;
  codec: string | null;
  content: string;
  /** Image bytes over wire bytes the link delivered from the sources (1 over plain NBD). */
  compression: number;
  /** Cores each process used while the daemon copied: the daemon, the sources (nbdkit or a ferry daemon), and this bench (the emulated link, the VMs' reads, the status asks). */
  coresWhileCopying: { daemon: number; source: number; bench: number };
  /** The link's round trip measured idle, before the migrations start (see idleRoundTripMs). */
  idleRttMs: number;
  daemonRssPeakMiB: number;
  daemonCpuSecondsPerGiB: number;
  destCpuSecondsPerGiB: number;
  /** The one `ferry dest`'s goodput over the same link, alone on it (image bytes ÷ link). */
  destGoodputOverLink: number;
  timeline: Array<[number, number, number]>;
}

async function benchLink(link: (typeof LINKS)[number]): Promise<LinkResult> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-daemon-'));
  const sources = path.join(dir, 'sources');
  fs.mkdirSync(sources);
  for (let i = 0; i < MIGRATIONS; i++) fs.writeFileSync(path.join(sources, `m${i}.img`), sourceImage());
  const nbdkit = await startNbdkit(sources);
  const wire = SOURCE === 'wire' ? await startWireSource(sources, dir) : null;
  const sourcePid = wire?.pid ?? nbdkit.pid;
  const emulatedLink = (port: number): SlowLink =>
    new SlowLink({
      listen: { host: '127.0.0.1', port: 0 },
      target: { host: '127.0.0.1', port },
      oneWayLatencyMs: link.latencyMs,
      bandwidthBitsPerSecond: link.bits,
    });
  // The idle round trip is measured with NBD reads from nbdkit, over the sources' link or its twin.
  const rttLink = wire ? emulatedLink(nbdkit.port) : null;
  const wan = emulatedLink(wire?.port ?? nbdkit.port);
  const wanPort = (await wan.start()).port;
  const idleRttMs = await idleRoundTripMs(rttLink ? (await rttLink.start()).port : wanPort);
  await rttLink?.close();
  const sourceUrl = (name: string): string =>
    wire ? `ferry://127.0.0.1:${wanPort}/${name}` : `nbd://127.0.0.1:${wanPort}/${name}.img`;
  const wireSection = wire ? '[wire]\ninsecure = true\n' : '';
  const control = path.join(dir, 'ferryd.sock');
  const config = path.join(dir, 'ferryd.toml');
  fs.writeFileSync(
    config,
    `[daemon]\nstate_dir = "${dir}/state"\ncontrol = "${control}"\nlisten = "127.0.0.1:0"\n[log]\nlevel = "warn"\n${wireSection}`,
  );
  const daemon = spawnOn(FERRY, 'ferryd', ['daemon', '--config', config, '--log-level', 'info']);
  await daemon.waitFor('"msg":"serving"', 60_000);
  const nbdAddress = /"address":"([^"]+)"/.exec(daemon.lines.find((l) => l.includes('"msg":"serving"'))!)![1];
  const ctl = async (request: DaemonRequest): Promise<Record<string, unknown>> => {
    const r = await sendControl(control, request, 120_000, parseDaemonResponseLine);
    if (!r.ok) throw new Error(r.error);
    return r.status;
  };
  const names = [...Array(MIGRATIONS).keys()].map((i) => `m${i}`);
  const t0 = Date.now();
  await Promise.all(
    names.map((name) =>
      ctl({
        cmd: 'create',
        spec: {
          name,
          start: true,
          cutover: 'at-start',
          disk: [
            {
              name: 'vda',
              source: sourceUrl(name),
              image: path.join(dir, `${name}-dest.img`),
            },
          ],
        },
      }),
    ),
  );
  // Counted from here, as the peer's from "serving": each migration is open and started.
  const cpu0 = cpuSeconds(daemon.child.pid!);
  const sourceCpu0 = cpuSeconds(sourcePid);
  const benchCpu0 = process.cpuUsage();
  // A VM per migration reading blocks while all copy: reads of blocks not held yet are on-demand fetches.
  const port = Number(nbdAddress.slice(nbdAddress.lastIndexOf(':') + 1));
  const reading = { on: true };
  const readers = names.map((name) => vmReader(port, `${name}/vda`, reading));
  // Bytes accepted by the link and not delivered: those on the wire's propagation delay plus the queue.
  const bytesPerMs = link.bits / 8 / 1000;
  const queueMs: number[] = [];
  const queueSampler = setInterval(() => {
    queueMs.push(Math.max(0, wan.stats().queuedFromTarget / bytesPerMs - link.latencyMs));
  }, 10);
  let rssPeak = 0;
  let firstDone: number[] | null = null;
  let p50: number[] = [];
  /** The last status round's reports (every migration complete once the loop ends). */
  let reports: MigrationReport[];
  /** [seconds since the creates, image bytes held by all, bytes the link delivered from the sources] per status round. */
  const timeline: Array<[number, number, number]> = [];
  for (;;) {
    reports = await Promise.all(
      names.map((name) => ctl({ cmd: 'status', name }) as Promise<unknown> as Promise<MigrationReport>),
    );
    rssPeak = Math.max(rssPeak, rssMiB(daemon.child.pid!));
    timeline.push([
      Math.round(Date.now() - t0) / 1000,
      reports.reduce((sum, r) => sum + r.total.bytesHeld, 0),
      wan.stats().bytesFromTarget,
    ]);
    if (!firstDone && reports.some((r) => r.state === 'complete')) {
      // Throughput of each while all copied: bytes held when the first finished.
      firstDone = reports.map((r) => r.total.bytesHeld);
      p50 = reports.map((r) => r.disks[0].status?.onDemandLatencyMs.p50 ?? 0);
      clearInterval(queueSampler);
    }
    if (reports.every((r) => r.state === 'complete')) break;
    await sleep(POLL_STATUS_MS);
  }
  // Up to the last disk's completion as the daemon recorded it, not this poll's (up to a poll late).
  const completed = reports.flatMap((r) => r.disks.map((d) => Date.parse(d.status?.completedAt ?? '')));
  const seconds = ((completed.every(Number.isFinite) ? Math.max(...completed) : Date.now()) - t0) / 1000;
  const benchCpu = process.cpuUsage(benchCpu0);
  const copyCores = {
    daemon: cpuSeconds(daemon.child.pid!) - cpu0,
    source: cpuSeconds(sourcePid) - sourceCpu0,
    bench: (benchCpu.user + benchCpu.system) / 1e6,
  };
  clearInterval(queueSampler);
  queueMs.sort((a, b) => a - b);
  const queueAt = (p: number): number =>
    queueMs.length ? Math.round(queueMs[Math.min(queueMs.length - 1, Math.floor(p * queueMs.length))] * 10) / 10 : 0;
  reading.on = false;
  await Promise.all(readers);
  const daemonCpu = cpuSeconds(daemon.child.pid!) - cpu0;
  await daemon.stop();
  // The peer: one ferry dest migrating one disk of the same size and content over the same link,
  // with the same per-migration load as each of the daemon's: a VM reading through it, and its
  // status asked as often. Its CPU is counted from "serving" (the migration opened and started),
  // the daemon's from when every create has answered (each migration opened and started).
  const destImage = path.join(dir, 'single-dest.img');
  const destControl = path.join(dir, 'dest.sock');
  const wireBytes = wan.stats().bytesFromTarget;
  const dest = spawnOn(FERRY, 'ferry dest', [
    'dest',
    ...(wire ? ['--insecure'] : []),
    '--cutover-at-start',
    '--source',
    sourceUrl('m0'),
    '--image',
    destImage,
    '--listen',
    '127.0.0.1:0',
    '--control',
    destControl,
  ]);
  await dest.waitFor('"msg":"serving"', 60_000);
  const destCpu0 = cpuSeconds(dest.child.pid!);
  const destT0 = Date.now();
  const destAddress = /"address":"([^"]+)"/.exec(dest.lines.find((l) => l.includes('"msg":"serving"'))!)![1];
  const destReading = { on: true };
  const destReader = vmReader(
    Number(destAddress.slice(destAddress.lastIndexOf(':') + 1)),
    path.basename(destImage),
    destReading,
  );
  let destDone = false;
  const destComplete = dest.waitFor('migration complete', 600_000).finally(() => (destDone = true));
  while (!destDone) {
    const r = await sendControl(destControl, { cmd: 'status' }, 120_000);
    if (!r.ok) throw new Error(r.error);
    await Promise.race([sleep(POLL_STATUS_MS), destComplete]);
  }
  await destComplete;
  destReading.on = false;
  await destReader;
  const destCpu = cpuSeconds(dest.child.pid!) - destCpu0;
  const destSeconds = (Date.now() - destT0) / 1000;
  await dest.stop();
  await wan.close();
  await wire?.stop();
  nbdkit.stop();
  fs.rmSync(dir, { recursive: true, force: true });
  const gib = (MIGRATIONS * SIZE_MIB) / 1024;
  const goodputMbit = (MIGRATIONS * SIZE_MIB * MiB * 8) / seconds / 1e6;
  return {
    link: link.name,
    source: SOURCE,
    codec: wire ? CODEC : null,
    content: CONTENT,
    compression: Math.round(((MIGRATIONS * SIZE_MIB * MiB) / Math.max(1, wireBytes)) * 100) / 100,
    loadAverage: os.loadavg().map((x) => Math.round(x * 100) / 100),
    migrations: MIGRATIONS,
    sizeMiB: SIZE_MIB,
    seconds: Math.round(seconds * 10) / 10,
    goodputMbit: Math.round(goodputMbit * 10) / 10,
    linkMbit: link.bits / 1e6,
    goodputOverLink: Math.round((goodputMbit / (link.bits / 1e6)) * 1000) / 1000,
    steadyGoodputOverLink: steadyGoodput(timeline, MIGRATIONS * SIZE_MIB * MiB, link.bits),
    jainWhileAllCopy: Math.round(jain(firstDone!) * 1000) / 1000,
    linkBelowFifthSeconds: secondsLinkBelowFifth(timeline, link.bits),
    onDemandP50Ms: p50,
    linkQueueP50Ms: queueAt(0.5),
    linkQueueP90Ms: queueAt(0.9),
    linkQueueEmptyShare:
      Math.round((queueMs.filter((q) => q === 0).length / Math.max(1, queueMs.length)) * 1000) / 1000,
    rttMs: 2 * link.latencyMs,
    idleRttMs,
    coresWhileCopying: {
      daemon: coresOver(copyCores.daemon, seconds),
      source: coresOver(copyCores.source, seconds),
      bench: coresOver(copyCores.bench, seconds),
    },
    daemonRssPeakMiB: Math.round(rssPeak),
    daemonCpuSecondsPerGiB: Math.round((daemonCpu / gib) * 100) / 100,
    destCpuSecondsPerGiB: Math.round((destCpu / (SIZE_MIB / 1024)) * 100) / 100,
    destGoodputOverLink: Math.round(((SIZE_MIB * MiB * 8) / destSeconds / link.bits) * 1000) / 1000,
    timeline,
  };
}

async function main(): Promise<void> {
  const results: LinkResult[] = [];
  for (const link of LINKS) {
    const from = SOURCE === 'wire' ? `a ferry-wire source (${CODEC})` : 'nbdkit';
    log(
      `${MIGRATIONS} migrations of ${SIZE_MIB} MiB (${CONTENT}) from ${from} over ${link.name} (load ${os.loadavg()[0].toFixed(1)})`,
    );
    const r = await benchLink(link);
    log(JSON.stringify({ ...r, timeline: `${r.timeline.length} rounds (in the JSON)` }));
    results.push(r);
  }
  const file = flag('--json');
  if (file) fs.writeFileSync(file, JSON.stringify(results, null, 2) + '\n');
  process.stdout.write(JSON.stringify(results, null, 2) + '\n');
}

main().then(
  () => {
    killAll();
    process.exit(0);
  },
  (e: Error) => {
    log(`bench failed: ${e.stack ?? e.message}`);
    killAll();
    process.exit(1);
  },
);
