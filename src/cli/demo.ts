/**
 * `ferry demo`: a live migration on this machine. A source (`ferry serve`) and
 * a destination (`ferry dest`) run as separate daemons, joined by an emulated
 * WAN link (latency and a bandwidth cap). A VM-like client reads, writes and
 * flushes on the destination from the first second; a progress line follows
 * the copy; at the end the destination image is checked block by block
 * against the source plus the client's writes.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import type { Command } from 'commander';
import { UsageError } from './usage-error';
import cliProgress from 'cli-progress';
import { NbdClient } from '../nbd/client';
import { SlowLink } from '../link/slow-link';
import { sendControl } from '../control/control-client';
import { formatBytes, formatDuration, formatRate } from '../control/byte-rate';
import { formatStatusLine } from '../control/status-text';
import type { MigrationStatus } from '../migrate/status';
import { fillDemoImage } from '../demo/demo-image';
import { startChild, ChildDaemon } from '../demo/child-daemon';

interface DemoFlags {
  wire: string;
  sizeMib: string;
  latencyMs: string;
  bandwidthMbit: string;
  keep?: boolean;
}

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('migrate a generated disk between two local daemons over an emulated WAN link, with a VM using it')
    .option(
      '--wire <kind>',
      'ferry (compressed, deduplicated, TLS with a pre-shared key) or nbd (plain NBD, as xNBD)',
      'ferry',
    )
    .option('--size-mib <n>', 'image size in MiB', '256')
    .option('--latency-ms <ms>', 'one-way link latency', '20')
    .option('--bandwidth-mbit <n>', 'link bandwidth in Mbit/s', '200')
    .option('--keep', 'keep the demo directory (images, state, logs)')
    .action(async (flags: DemoFlags) => {
      const sizeMib = positive(flags.sizeMib, '--size-mib', 4096);
      const latencyMs = positive(flags.latencyMs, '--latency-ms', 10_000, true);
      const mbit = positive(flags.bandwidthMbit, '--bandwidth-mbit', 100_000);
      if (flags.wire !== 'ferry' && flags.wire !== 'nbd')
        throw new UsageError(`demo: --wire must be ferry or nbd (got "${flags.wire}")`);
      const ok = await runDemo(flags.wire, sizeMib, latencyMs, mbit, flags.keep ?? false);
      if (!ok) process.exitCode = 1;
    });
}

function positive(text: string, flag: string, max: number, zeroOk = false): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < (zeroOk ? 0 : 1) || n > max)
    throw new UsageError(`demo: ${flag} must be an integer 1..${max} (got "${text}")`);
  return n;
}

const say = (line: string): void => void process.stdout.write(line + '\n');

async function runDemo(
  wire: 'ferry' | 'nbd',
  sizeMib: number,
  latencyMs: number,
  mbit: number,
  keep: boolean,
): Promise<boolean> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-demo-'));
  const sourcePath = path.join(dir, 'source.img');
  const destPath = path.join(dir, 'dest.img');
  const controlPath = path.join(dir, 'ctl.sock');
  const size = sizeMib << 20;
  const daemons: ChildDaemon[] = [];
  const logs: Array<[string, ChildDaemon]> = [];
  let link: SlowLink | null = null;
  try {
    say(`ferry demo in ${dir}`);
    const model = Buffer.alloc(size);
    fillDemoImage(model, 42);
    fs.writeFileSync(sourcePath, model);
    const source = Buffer.from(model);
    say(`1. generated a ${sizeMib} MiB VM-like image (text, records, random data, 40% empty)`);

    const keyPath = path.join(dir, 'psk');
    fs.writeFileSync(keyPath, crypto.randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
    const src =
      wire === 'ferry'
        ? await startChild([
            'source',
            '--image',
            sourcePath,
            '--export',
            'disk',
            '--listen',
            '127.0.0.1:0',
            '--psk-file',
            keyPath,
            '--state-dir',
            dir,
          ])
        : await startChild([
            'serve',
            '--image',
            sourcePath,
            '--export',
            'disk',
            '--read-only',
            '--listen',
            '127.0.0.1:0',
          ]);
    daemons.push(src);
    logs.push([wire === 'ferry' ? 'source' : 'serve', src]);
    link = new SlowLink({
      listen: { host: '127.0.0.1', port: 0 },
      target: { host: '127.0.0.1', port: src.port },
      oneWayLatencyMs: latencyMs,
      bandwidthBitsPerSecond: mbit * 1_000_000,
    });
    const linkAddress = await link.start();
    const what = wire === 'ferry' ? 'ferry source (TLS, pre-shared key)' : 'ferry serve (plain NBD)';
    say(
      `2. source: ${what} on ${src.address}; WAN link ${linkAddress.host}:${linkAddress.port}: ${mbit} Mbit/s, ${latencyMs} ms one way`,
    );

    const url = `${wire === 'ferry' ? 'ferry' : 'nbd'}://${linkAddress.host}:${linkAddress.port}/disk`;
    const dest = await startChild([
      // The demo's VM runs at the destination from the start: its source is not written any more.
      ...['dest', '--cutover-at-start', '--source', url, '--image', destPath],
      ...(wire === 'ferry' ? ['--psk-file', keyPath] : []),
      ...['--export', 'vm', '--listen', '127.0.0.1:0', '--control', controlPath],
    ]);
    daemons.push(dest);
    logs.push(['dest', dest]);
    say(`3. destination: ferry dest serving nbd://${dest.address}/vm; the VM starts using it now`);
    say(`   (watch it from another terminal: ferry ctl --control ${controlPath} watch)`);

    const vm = await NbdClient.connect({ host: '127.0.0.1', port: dest.port }, { exportName: 'vm' });
    const workload = new VmWorkload(vm, model, size);
    const started = Date.now();
    const running = workload.run();
    const final = await followProgress(controlPath);
    workload.stop();
    await running;
    await vm.flush();
    await vm.close();
    const seconds = (Date.now() - started) / 1000;

    say(`4. migration complete in ${seconds.toFixed(1)} s; the source can be switched off`);
    say(
      `   VM during migration: ${workload.reads} reads (${workload.badReads} wrong), ${workload.writes} writes, ${workload.flushes} flushes`,
    );
    say(
      `   on-demand fetches: ${final.onDemandFetches}, latency p50 ${final.onDemandLatencyMs.p50.toFixed(1)} ms, p99 ${final.onDemandLatencyMs.p99.toFixed(1)} ms (link RTT ${2 * latencyMs} ms)`,
    );
    const onLink = link.stats().bytesFromTarget;
    const spared = Math.max(0, size - onLink);
    say(
      `   bytes over the link: ${formatBytes(onLink)} for a ${formatBytes(size)} image: ` +
        (wire === 'ferry'
          ? `the link was spared ${formatBytes(spared)} (${((100 * spared) / size).toFixed(0)}%; codec ${final.codec}, ${final.checksumFailures} checksum failures)`
          : 'plain NBD, nothing spared (try --wire ferry)'),
    );

    for (const d of daemons.splice(0).reverse()) {
      const code = await d.stop();
      if (code !== 0) say(`   warning: ferry exited with ${code}`);
    }
    await link.close();
    link = null;

    const image = fs.readFileSync(destPath);
    const bs = 4096;
    let bad = 0;
    let written = 0;
    for (let at = 0; at < size; at += bs) {
      if (!image.subarray(at, at + bs).equals(model.subarray(at, at + bs))) bad++;
      if (!model.subarray(at, at + bs).equals(source.subarray(at, at + bs))) written++;
    }
    const ok = bad === 0 && workload.badReads === 0;
    say(
      ok
        ? `5. verified: all ${size / bs} blocks of the destination equal the source plus the VM's writes (${written} blocks written by the VM)`
        : `5. VERIFICATION FAILED: ${bad} blocks differ, ${workload.badReads} reads returned wrong data`,
    );
    if (keep) say(`   kept ${dir} (images, state, and the daemons' logs: ${logs.map(([n]) => `${n}.log`).join(', ')})`);
    return ok;
  } finally {
    for (const d of daemons) await d.stop().catch(() => undefined);
    await link?.close();
    if (keep) for (const [name, d] of logs) fs.writeFileSync(path.join(dir, `${name}.log`), d.log());
    if (!keep) fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Shows progress until the destination reports complete; returns the last status. */
async function followProgress(controlPath: string): Promise<MigrationStatus> {
  const tty = process.stdout.isTTY === true;
  const bar = tty
    ? new cliProgress.SingleBar(
        {
          format: '   [{bar}] {percentage}% | {held} | {rate} | ETA {eta_text} | on-demand {ondemand} p99 {p99} ms',
          hideCursor: true,
        },
        cliProgress.Presets.shades_classic,
      )
    : null;
  let lastLine = 0;
  let started = false;
  for (;;) {
    const reply = await sendControl(controlPath, { cmd: 'status' }, 5000);
    if (!reply.ok || !('status' in reply) || !reply.status)
      throw new Error(`demo: status failed: ${JSON.stringify(reply)}`);
    const s = reply.status as MigrationStatus;
    const payload = {
      held: `${formatBytes(s.blocksHeld * s.blockSize)} / ${formatBytes(s.blocksTotal * s.blockSize)}`,
      rate: formatRate(s.backgroundBytesPerSecond),
      eta_text: formatDuration(s.etaSeconds),
      ondemand: s.onDemandFetches,
      p99: s.onDemandLatencyMs.p99.toFixed(1),
    };
    if (bar) {
      if (!started) bar.start(s.blocksTotal, s.blocksHeld, payload);
      else bar.update(s.blocksHeld, payload);
      started = true;
    } else if (Date.now() - lastLine >= 1000 || s.state === 'complete') {
      say(`   ${formatStatusLine(s)}`);
      lastLine = Date.now();
    }
    if (s.state === 'complete') {
      bar?.stop();
      return s;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** A VM-like client: random reads checked against the model, writes, flushes. */
class VmWorkload {
  reads = 0;
  badReads = 0;
  writes = 0;
  flushes = 0;
  private stopped = false;

  constructor(
    private readonly client: NbdClient,
    private readonly model: Buffer,
    private readonly size: number,
  ) {}

  stop(): void {
    this.stopped = true;
  }

  async run(): Promise<void> {
    // Four concurrent streams, each on its own region so the model stays exact.
    const region = Math.floor(this.size / 4 / 4096) * 4096;
    await Promise.all([0, 1, 2, 3].map((i) => this.stream(i * region, region)));
  }

  private async stream(base: number, span: number): Promise<void> {
    let op = 0;
    while (!this.stopped) {
      const length = 4096 * (1 + crypto.randomInt(16));
      const offset = base + crypto.randomInt(0, span - length);
      if (op % 4 === 3) {
        const data = crypto.randomBytes(length);
        await this.client.write(offset, data);
        data.copy(this.model, offset);
        this.writes++;
      } else {
        const got = await this.client.read(offset, length);
        if (!got.equals(this.model.subarray(offset, offset + length))) this.badReads++;
        this.reads++;
      }
      if (op % 20 === 19) {
        await this.client.flush();
        this.flushes++;
      }
      op++;
      await new Promise((r) => setTimeout(r, 5)); // a VM that also computes
    }
  }
}
