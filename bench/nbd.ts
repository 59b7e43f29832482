// npm run bench:nbd [-- --quick] [--json FILE] [--size BYTES] [--dir DIR] [--servers a,b] [--jobs randread,read]
//                        [--rounds N] [--runtime SECONDS] [--rate MIB_PER_S]
//                        [--ferry-node-args "--cpu-prof --cpu-prof-dir=bench/out/prof"]
// Serves one preallocated image (page-cache resident) with ferry serve, a
// completed ferry dest (its copy of the image), nbdkit's file plugin and qemu-nbd
// in turn, drives each with the same fio nbd-engine jobs, and prints IOPS, MiB/s
// and each ferry server's ratio to each peer, measured in the same run. Each
// server's CPU per GiB moved is printed too: with --rate (fio's cap) every
// server moves the same bytes per second, and that figure compares their cost
// without the two cores' contention deciding who gets how much of them.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FIO_JOBS, FioResult, fioArgs, runFio } from './nbd-fio';
import { cpuSeconds, freePort, serverSpecs, stopServer, waitForExport } from './nbd-servers';

const args = process.argv.slice(2);
const flag = (name: string): string | undefined => {
  const at = args.indexOf(name);
  return at >= 0 ? args[at + 1] : undefined;
};
const QUICK = args.includes('--quick');
const JSON_FILE = flag('--json');
const SIZE = Number(flag('--size') ?? 1 << 30);
const DIR = flag('--dir') ?? path.resolve(__dirname, '..', '..', 'bench', 'out');
const RUNTIME = Number(flag('--runtime') ?? (QUICK ? 3 : 10));
const ROUNDS = Number(flag('--rounds') ?? 1);
const FERRY_NODE_ARGS = (flag('--ferry-node-args') ?? '').split(' ').filter(Boolean);
const ONLY = flag('--servers')?.split(',');
const JOBS = flag('--jobs')?.split(','); // fio rw names: randread,read,randwrite,write
const RATE_MIB = flag('--rate') ? Number(flag('--rate')) : undefined;
const MiB = 1 << 20;
const GiB = 1 << 30;

const log = (line: string): void => void process.stderr.write(line + '\n');

/** A fully allocated image of incompressible data, made once and reused. */
function prepareImage(): string {
  fs.mkdirSync(DIR, { recursive: true });
  const image = path.join(DIR, `nbd-bench-${SIZE}.img`);
  if (!fs.existsSync(image) || fs.statSync(image).size !== SIZE) {
    log(`creating ${image} (${SIZE / MiB} MiB of random data)`);
    const fd = fs.openSync(image, 'w');
    const chunk = Buffer.allocUnsafe(16 * MiB);
    for (let at = 0; at < SIZE; at += chunk.length) {
      crypto.randomFillSync(chunk);
      fs.writeSync(fd, chunk, 0, Math.min(chunk.length, SIZE - at), at);
    }
    fs.fsyncSync(fd);
    fs.closeSync(fd);
  }
  return image;
}

/**
 * Reads the whole image so every server starts from the page cache. Needed
 * before each job: this kernel reclaims idle page cache proactively (DAMON),
 * and a third of the image had gone cold between two runs.
 */
function warmPageCache(image: string): void {
  const fd = fs.openSync(image, 'r');
  const chunk = Buffer.allocUnsafe(16 * MiB);
  for (let at = 0; at < SIZE; at += chunk.length) fs.readSync(fd, chunk, 0, chunk.length, at);
  fs.closeSync(fd);
}

/** Bytes of the file in the page cache (util-linux fincore), or NaN without it. */
function residentBytes(image: string): number {
  try {
    return Number(execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', image], { encoding: 'utf8' }));
  } catch {
    return NaN;
  }
}

function version(command: string, versionArgs: string[]): string {
  try {
    return execFileSync(command, versionArgs, { encoding: 'utf8' }).split('\n')[0].trim();
  } catch {
    return 'not installed';
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

interface Measurement extends FioResult {
  /** Server CPU time per wall second during the job (1.0 = one core). */
  serverCpu: number;
}

/** Server CPU seconds per GiB the job moved. */
function cpuPerGiB(m: Measurement): number {
  return m.serverCpu / (m.bytesPerSecond / GiB);
}

async function main(): Promise<void> {
  const loadAtStart = os.loadavg()[0];
  const image = prepareImage();
  const servers = serverSpecs(FERRY_NODE_ARGS).filter((s) => !ONLY || ONLY.includes(s.name));
  const jobs = FIO_JOBS.filter((j) => !JOBS || JOBS.includes(j.rw));
  const results = new Map<string, Map<string, Measurement[]>>(); // job → server → rounds
  for (const job of jobs) results.set(job.name, new Map());

  for (const server of servers) await server.prepare?.(image);
  for (let round = 0; round < ROUNDS; round++) {
    for (const server of servers) {
      const port = await freePort();
      const child = server.start(image, port);
      try {
        const uri = `nbd://127.0.0.1:${port}/${server.exportName}`;
        await waitForExport(uri, child);
        for (const job of jobs) {
          execFileSync('sync'); // earlier writes must not be written back during this job
          warmPageCache(server.served?.(image) ?? image);
          const cpuBefore = cpuSeconds(child.pid!);
          const started = process.hrtime.bigint();
          const result = await runFio(job, uri, SIZE, RUNTIME, RATE_MIB);
          const wall = Number(process.hrtime.bigint() - started) / 1e9;
          const serverCpu = (cpuSeconds(child.pid!) - cpuBefore) / wall;
          const cached = residentBytes(server.served?.(image) ?? image) / SIZE;
          const perServer = results.get(job.name)!;
          if (!perServer.has(server.name)) perServer.set(server.name, []);
          perServer.get(server.name)!.push({ ...result, serverCpu });
          log(
            `round ${round + 1} ${server.name.padEnd(8)} ${job.name.padEnd(26)} ${result.iops.toFixed(0).padStart(7)} IOPS ` +
              `${(result.bytesPerSecond / MiB).toFixed(0).padStart(5)} MiB/s  server CPU ${(serverCpu * 100).toFixed(0)}% ` +
              `(${cpuPerGiB({ ...result, serverCpu }).toFixed(3)} s/GiB)  image cached after ${(cached * 100).toFixed(0)}%`,
          );
        }
      } finally {
        await stopServer(child);
      }
    }
  }

  const names = servers.map((s) => s.name);
  const ferries = names.filter((n) => n.startsWith('ferry'));
  const peers = names.filter((n) => !n.startsWith('ferry'));
  const summary = jobs.map((job) => {
    const row: Record<string, Measurement & { cpuPerGiB: number }> = {};
    for (const name of names) {
      const rounds = results.get(job.name)!.get(name)!;
      row[name] = {
        iops: median(rounds.map((r) => r.iops)),
        bytesPerSecond: median(rounds.map((r) => r.bytesPerSecond)),
        latencyUs: median(rounds.map((r) => r.latencyUs)),
        serverCpu: median(rounds.map((r) => r.serverCpu)),
        cpuPerGiB: median(rounds.map(cpuPerGiB)),
      };
    }
    // Ratios per round, then the median: rounds run back to back, so a
    // neighbour's load on the machine hits both sides of each ratio alike.
    // Best against best estimates what each does on a quiet machine.
    // Keyed "ferry / peer" for every ferry server (serve, a completed dest) and every peer.
    const ratios: Record<string, number> = {};
    const bestRatios: Record<string, number> = {};
    const best = (rounds: Measurement[]): number => Math.max(...rounds.map((r) => r.iops));
    for (const ferry of ferries) {
      const ferryRounds = results.get(job.name)!.get(ferry)!;
      for (const peer of peers) {
        const peerRounds = results.get(job.name)!.get(peer)!;
        ratios[`${ferry} / ${peer}`] = median(ferryRounds.map((r, i) => r.iops / peerRounds[i].iops));
        bestRatios[`${ferry} / ${peer}`] = best(ferryRounds) / best(peerRounds);
      }
    }
    const rounds = Object.fromEntries(names.map((n) => [n, results.get(job.name)!.get(n)!]));
    return { job: job.name, results: row, ferryRatio: ratios, ferryRatioBest: bestRatios, rounds };
  });

  const pairs = ferries.flatMap((f) => peers.map((p) => `${f} / ${p}`));
  const header = [
    'job',
    ...names.flatMap((n) => [`${n} IOPS`, `${n} MiB/s`]),
    ...pairs.map((pair) => `${pair} (best / best)`),
    'server CPU (' + names.join(' / ') + ')',
    'server CPU s/GiB (' + names.join(' / ') + ')',
  ];
  const lines = [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`];
  for (const { job, results: row, ferryRatio, ferryRatioBest } of summary) {
    const cells = [
      job,
      ...names.flatMap((n) => [row[n].iops.toFixed(0), (row[n].bytesPerSecond / MiB).toFixed(0)]),
      ...pairs.map((pair) => `${ferryRatio[pair].toFixed(2)}× (${ferryRatioBest[pair].toFixed(2)}×)`),
      names.map((n) => (row[n].serverCpu * 100).toFixed(0) + '%').join(' / '),
      names.map((n) => row[n].cpuPerGiB.toFixed(3)).join(' / '),
    ];
    lines.push(`| ${cells.join(' | ')} |`);
  }
  const machine = {
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    kernel: os.release(),
    node: process.version,
    nbdkit: version('nbdkit', ['--version']),
    qemuNbd: version('qemu-nbd', ['--version']),
    fio: version('fio', ['--version']),
  };
  console.log(lines.join('\n'));
  console.log(
    `\n${machine.cpus} CPUs (${machine.cpuModel}), kernel ${machine.kernel}, node ${machine.node}, ` +
      `${machine.nbdkit}, ${machine.qemuNbd}, ${machine.fio}; image ${SIZE / MiB} MiB in the page cache; ` +
      `${RUNTIME} s per job after 1 s ramp${RATE_MIB ? `, fio capped at ${RATE_MIB} MiB/s` : ''}, ${ROUNDS} round(s): ` +
      `medians, ratios are medians of per-round ratios; ` +
      `load average at start ${loadAtStart.toFixed(2)}.`,
  );
  console.log(`fio: fio ${fioArgs(FIO_JOBS[0], 'nbd://127.0.0.1:PORT/', SIZE, RUNTIME, RATE_MIB).join(' ')}`);
  if (JSON_FILE) {
    const report = {
      machine,
      loadAverageAtStart: loadAtStart,
      image: { size: SIZE },
      runtimeSeconds: RUNTIME,
      rateMiBPerSecond: RATE_MIB ?? null,
      rounds: ROUNDS,
      servers: servers.map((s) => ({ name: s.name, command: s.describe })),
      jobs,
      summary,
    };
    fs.writeFileSync(JSON_FILE, JSON.stringify(report, null, 2) + '\n');
    log(`wrote ${JSON_FILE}`);
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
