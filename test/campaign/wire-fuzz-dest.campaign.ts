/**
 * Ferry-wire fuzzing of `ferry dest`: its source is a fake one the test
 * controls (hostile-wire-source.ts), honest between bursts and hostile
 * during them (each connection one fault: noise, flipped bits, lying
 * lengths, truncated frames, unknown types, batches out of range or of the
 * wrong count or sizes, references to blocks not held, wrong checksums,
 * replies nobody asked for, duplicates, a WELCOME of another image or
 * version, refusals, stalls, decompression bombs, reports from a source that
 * tracks nothing). A VM reads random blocks throughout.
 *
 * Checks: the destination stays up and, after each burst, answers a status
 * request and a read of a held block within 1 s; its RSS stays bounded and
 * its CPU per hostile connection small; every read that returned bytes
 * returned the source's; once the source is honest again the migration
 * completes and the image equals the source.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { NbdClient } from '../../src/nbd/client';
import { sendControl } from '../../src/control/control-client';
import { loadAuth } from '../../src/wire/auth';
import { ferryCtl, servingPort, startFerry } from '../helpers/ferry-daemon';
import { tempDir } from '../helpers/temp-dir';
import { campaign, endCleanly, reportRow } from './campaign';
import { BS, BlockModel, sourceImage } from './block-model';
import { FAULTS, HostileWireSource, type Fault } from './hostile-wire-source';
import { PeakRss, within } from './peak-rss';

endCleanly(t);
// A read of a missing block waits while the source is hostile (up to the destination's fetch_timeout_ms).
const VM_STALL_TIMEOUT_MS = 90_000;

const c = campaign();
const MiB = 1 << 20;
const SIZE = c.full ? 64 * MiB : 4 * MiB;
/** How long each hostile burst lasts, and the honest spell after it. */
const BURST_MS = c.full ? 2000 : 700;
const HONEST_MS = c.full ? 500 : 200;
const READS_PER_BURST = 6;
const RSS_LIMIT = 600 * MiB;
const PROBE_MS = 1000;

function cpuSeconds(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime + stime, in clock ticks of 10 ms
}

/** Saves the destination's log for the run's record and shows its end in the TAP output (CI keeps only that). */
function keepLog(t: Test, stderr: string): void {
  const log = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-wire-fuzz-dest-log-')), 'dest.log');
  fs.writeFileSync(log, stderr);
  t.comment(`the destination's log: ${log}; its last lines:\n${stderr.trimEnd().split('\n').slice(-40).join('\n')}`);
}

const pause = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The bursts of one run: every fault at least once, `perBurst` faults drawn for each burst. */
function bursts(random: () => number, faults: readonly Fault[], count: number, perBurst: number): Fault[][] {
  const order = [...faults].sort(() => random() - 0.5);
  const out: Fault[][] = [];
  for (let i = 0; i < count; i++) {
    const set = new Set<Fault>();
    for (let k = 0; k < perBurst; k++) {
      const at = i * perBurst + k;
      set.add(at < order.length ? order[at] : faults[Math.floor(random() * faults.length)]);
    }
    out.push([...set]);
  }
  return out;
}

interface Mode {
  name: string;
  auth: 'insecure' | 'psk';
  bursts: number;
  faults: readonly Fault[];
}

const PSK_FAULTS: readonly Fault[] = [
  'bit-flip',
  'lying-length',
  'truncated',
  'bad-checksum',
  'reference-not-held',
  'unasked-replies',
  'welcome-identity',
  'deflate-bomb',
  'lz4-bomb',
  'stall',
];

const modes: Mode[] = [
  { name: 'insecure', auth: 'insecure', bursts: c.full ? 300 : Math.ceil(FAULTS.length / 2), faults: FAULTS },
  { name: 'PSK', auth: 'psk', bursts: c.full ? 60 : 4, faults: PSK_FAULTS },
];

for (const mode of modes) {
  t.test(`ferry dest against a hostile source (${mode.name}, seed ${c.seed})`, async (t: Test) => {
    const started = Date.now();
    const random = c.random(`wire-fuzz-dest ${mode.name}`);
    const dir = tempDir(t, 'ferry-wire-fuzz-dest-');
    const image = sourceImage(SIZE, random);
    const model = new BlockModel(image, random);
    const blocks = SIZE / BS;

    let authFlags = ['--insecure'];
    if (mode.auth === 'psk') {
      const keyFile = path.join(dir, 'psk');
      fs.writeFileSync(keyFile, crypto.randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
      authFlags = ['--psk-file', keyFile];
    }
    const auth = loadAuth(mode.auth === 'psk' ? { pskFile: authFlags[1] } : { insecure: true }, 'fake source');
    const source = new HostileWireSource(image, `fake-${c.seed}`, auth, random);
    const port = await source.start();
    t.teardown(() => source.close());

    const config = path.join(dir, 'ferry.toml');
    fs.writeFileSync(config, '[dest]\nreconnect_min_ms = 20\nreconnect_max_ms = 200\n');
    const ctl = path.join(dir, 'dest.ctl');
    const destImage = path.join(dir, 'dest.img');
    const dest = await within(
      startFerry(t, [
        ...['dest', '--cutover-at-start', '--source', `ferry://127.0.0.1:${port}/disk.img`, '--image', destImage],
        ...['--listen', '127.0.0.1:0', '--control', ctl, '--rate', c.full ? '64K' : '256K', '--config', config],
        ...['--log-level', 'info', ...authFlags],
      ]),
      90_000,
      'starting the destination',
    );
    const pid = dest.child.pid!;
    let exitedOnItsOwn = false;
    let stopping = false;
    void dest.exited.then(() => (exitedOnItsOwn = !stopping));
    const rss = new PeakRss();
    rss.watch(pid);
    t.teardown(() => rss.stop());

    const connect = async (): Promise<NbdClient> => {
      const client = await NbdClient.connect(
        { host: '127.0.0.1', port: servingPort(dest) },
        { exportName: 'dest.img', stallTimeoutMs: VM_STALL_TIMEOUT_MS },
      );
      client.on('error', () => undefined);
      t.teardown(() => client.destroy());
      return client;
    };
    const vm = await connect();
    const prober = await connect();

    let losses = 0;
    let readsServed = 0;
    let readsRefused = 0;
    let hangs = 0;
    let slowestProbeMs = 0;
    let reconnects = 0;
    const check = (block: number, got: Buffer, what: string): void => {
      if (model.check(block, got)) {
        losses++;
        t.fail(`${what}: block ${block} returned bytes that are not the source's (${describe(block, got)})`);
      }
    };
    /** What wrong bytes are: the block of the other image a lying WELCOME named, another block, or garbage. */
    const describe = (block: number, got: Buffer): string => {
      const want = image.subarray(block * BS, (block + 1) * BS);
      if (got[0] === (want[0] ^ 0x5a) && got.subarray(1).equals(want.subarray(1))) return "the other image's block";
      for (let b = 0; b < blocks; b++)
        if (image.subarray(b * BS, (b + 1) * BS).equals(got)) return `block ${b}'s bytes`;
      let differ = 0;
      for (let i = 0; i < BS; i++) if (got[i] !== want[i]) differ++;
      return `${differ} bytes differ${got.every((x) => x === 0) ? ', all zeros' : ''}`;
    };
    const outstanding = new Set<Promise<void>>();
    const read = (block: number): Promise<void> => {
      const p = vm.read(block * BS, BS).then(
        (got) => {
          readsServed++;
          check(block, got, 'a read during the fuzzing');
        },
        () => void readsRefused++,
      );
      outstanding.add(p);
      void p.finally(() => outstanding.delete(p));
      return p;
    };

    // Honest first: a few blocks held, to probe with. Reads before the cutover are answered by the
    // source and not kept, so the blocks are held only if read after it.
    await within(dest.waitForLog(/^cutover complete/, 60_000), 60_000, 'the cutover at start');
    const held = Array.from({ length: 8 }, () => Math.floor(random() * blocks));
    await within(Promise.all(held.map(read)), 60_000, 'the first reads from an honest source');

    const cpuBefore = cpuSeconds(pid);
    const hostileBefore = source.counts.hostile;
    const plan = bursts(random, mode.faults, mode.bursts, c.full ? 3 : 2);
    for (const [i, faults] of plan.entries()) {
      if (exitedOnItsOwn) break;
      source.setFaults(faults);
      for (let k = 0; k < READS_PER_BURST; k++) void read(Math.floor(random() * blocks));
      await pause(BURST_MS);
      // Right after the burst, still hostile: the daemon answers at once.
      const probeStarted = performance.now();
      try {
        const status = await within(sendControl(ctl, { cmd: 'status' }, PROBE_MS), PROBE_MS, 'ferry ctl status');
        if (!status.ok) throw new Error(`status refused: ${JSON.stringify(status)}`);
        const block = held[i % held.length];
        check(block, await within(prober.read(block * BS, BS), PROBE_MS, `a read of held block ${block}`), 'a probe');
      } catch (e) {
        hangs++;
        t.fail(`after burst ${i} (${faults.join(', ')}): ${(e as Error).message}`);
      }
      slowestProbeMs = Math.max(slowestProbeMs, performance.now() - probeStarted);
      source.setFaults([]);
      if (faults.some((f) => f === 'welcome-identity' || f === 'welcome-size')) {
        // A stream welcomed with another image stops the upstream for good: the operator's reconnect resumes it.
        try {
          const r = await within(sendControl(ctl, { cmd: 'reconnect' }, 60_000), 60_000, 'ferry ctl reconnect');
          if (r.ok) reconnects++;
          else t.fail(`reconnect to the honest source refused: ${JSON.stringify(r)}`);
        } catch (e) {
          hangs++;
          t.fail(`after burst ${i} (${faults.join(', ')}): ${(e as Error).message}`);
          break;
        }
      }
      await pause(HONEST_MS);
    }
    if (hangs) keepLog(t, dest.stderr());
    const hostile = source.counts.hostile - hostileBefore;
    const cpuPerConnectionMs = exitedOnItsOwn ? NaN : ((cpuSeconds(pid) - cpuBefore) * 1000) / hostile;

    t.notOk(exitedOnItsOwn, `the destination is alive after ${hostile} hostile connections`);
    t.ok(cpuPerConnectionMs < 250, `CPU per hostile connection ${cpuPerConnectionMs.toFixed(2)} ms`);
    t.ok(rss.peakMiB * MiB < RSS_LIMIT, `peak RSS ${rss.peakMiB} MiB`);

    // Honest again: every read waiting ends, the copy completes, and the image is the source.
    if (!exitedOnItsOwn) {
      await within(Promise.all(outstanding), 120_000, 'reads waiting on the source');
      const lifted = await ferryCtl(ctl, 'rate', 'off');
      t.ok(lifted.code === 0 || /complete/.test(lifted.stderr), `rate off: ${lifted.stderr}`);
      await within(dest.waitForLog(/^migration (complete|already complete)/, 300_000), 300_000, 'completion');
    }
    vm.destroy();
    prober.destroy();
    stopping = true;
    const code = await dest.stop();
    t.equal(code, 0, 'the destination stops cleanly');
    const final = fs.readFileSync(destImage);
    const bad = model.checkImage(final);
    losses += bad.length;
    for (const m of bad.slice(0, 8))
      t.comment(`final block ${m.block}: ${describe(m.block, final.subarray(m.block * BS, (m.block + 1) * BS))}`);
    if (losses) keepLog(t, dest.stderr());
    t.equal(bad.length, 0, `the final image equals the source (${bad.length} blocks differ)`);

    const byFault = Object.entries(source.counts.byFault)
      .map(([f, n]) => `${f} ${n}`)
      .join(', ');
    t.comment(`hostile connections by fault: ${byFault}`);
    reportRow({
      scenario: `wire-fuzz dest (${mode.name})`,
      faults: `${plan.length} bursts, ${hostile.toLocaleString('en')} hostile connections of ${mode.faults.length} kinds (${source.counts.frames.toLocaleString('en')} frames sent)`,
      checks: `${readsServed} reads checked, ${readsRefused} refused; probes answered within ${slowestProbeMs.toFixed(0)} ms; ${reconnects} reconnects after another image; CPU ${cpuPerConnectionMs.toFixed(2)} ms per hostile connection; final image exact (${(SIZE / MiB).toFixed(0)} MiB)`,
      losses,
      crashes: exitedOnItsOwn || code !== 0 ? 1 : 0,
      hangs,
      peakRssMiB: rss.peakMiB,
      seconds: Math.round((Date.now() - started) / 100) / 10,
    });
  });
}
