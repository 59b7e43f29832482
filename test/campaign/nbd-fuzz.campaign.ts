/**
 * NBD fuzzing of `ferry serve` and of a migrating `ferry dest`: mutated
 * handshakes and requests from a few hostile clients at once (see
 * nbd-fuzzer.ts), while a well-formed client keeps checking it is answered
 * within a second. At the end the daemon must be alive, its RSS bounded,
 * the export equal to its first content plus the acknowledged writes, and a
 * SIGTERM must stop it cleanly.
 */
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { campaign, endCleanly, reportRow } from './campaign';
import { NbdFuzzer, closeLeftoverSockets, newCounts, probe, readAll, type FuzzCounts } from './nbd-fuzzer';
import { residentBytes, startFerryServe } from '../helpers/ferry-serve';
import { startFerry, servingPort } from '../helpers/ferry-daemon';
import { tempDir, writePatternFile } from '../helpers/temp-dir';

endCleanly(t);

const MiB = 1 << 20;
const SIZE = 32 * MiB;
const WORKERS = 3;
const MAX_PAYLOAD = 32 * MiB;
const PROBE_LIMIT_MS = 1000;
const RSS_LIMIT = 512 * MiB;

interface Target {
  pid: number;
  host: string;
  port: number;
  stop(): Promise<number | null>;
  exited: Promise<number | null>;
}

async function fuzz(t: Test, name: string, target: Target, content: Buffer): Promise<void> {
  const { full, random } = campaign();
  const rand = random(`nbd-fuzz/${name}`);
  const goal = full ? 100_000 : 3000;
  const started = performance.now();
  const model = Buffer.from(content);
  const counts: FuzzCounts = newCounts();
  let alive = true;
  void target.exited.then(() => (alive = false));

  let peakRss = residentBytes(target.pid);
  const sampler = setInterval(() => {
    try {
      peakRss = Math.max(peakRss, residentBytes(target.pid));
    } catch {
      // exited: the checks below say so
    }
  }, 100);
  let probes = 0;
  let slowProbes = 0;
  let slowest = 0;
  let slowestSteps = {};
  let fuzzing = true;
  const prober = (async () => {
    while (fuzzing && alive) {
      const at = Math.floor(rand() * (SIZE / 4096)) * 4096;
      try {
        const steps = await probe(target.host, target.port, at);
        const ms = steps.connect + steps.handshake + steps.read;
        if (ms > slowest) slowestSteps = steps;
        slowest = Math.max(slowest, ms);
      } catch (e) {
        // Not answered within the probe's 5 s timeouts while the fuzzing runs: a hang.
        if (alive) t.fail(`a well-formed client was not served: ${(e as Error).message}`);
        slowProbes++;
      }
      probes++;
      await new Promise((r) => setTimeout(r, 200));
    }
  })();

  const region = SIZE / WORKERS;
  const workers = Array.from({ length: WORKERS }, (_, w) => {
    const fuzzer = new NbdFuzzer(
      target.host,
      target.port,
      model,
      { start: Math.floor(w * region), end: Math.floor((w + 1) * region) },
      random(`nbd-fuzz/${name}/${w}`),
      counts,
      MAX_PAYLOAD,
    );
    return (async () => {
      while (alive && counts.requests + counts.handshakes < goal) await fuzzer.session(1 + Math.floor(rand() * 8));
    })();
  });
  await Promise.all(workers);
  fuzzing = false;
  await prober;
  clearInterval(sampler);

  t.ok(alive, `${name} is alive after ${counts.requests} requests and ${counts.handshakes} handshakes`);
  t.same(counts.wrong.slice(0, 10), [], 'every reply agreed with the protocol and the model');
  t.equal(counts.stalls, 0, 'every burst was answered');
  t.equal(
    slowProbes,
    0,
    `a well-formed client was answered throughout (${probes} probes, slowest ${slowest.toFixed(0)} ms)`,
  );
  t.comment(`slowest probe during the fuzzing: ${JSON.stringify(slowestSteps)}`);
  t.ok(peakRss < RSS_LIMIT, `peak RSS ${(peakRss / MiB).toFixed(0)} MiB`);
  // Once the fuzzing stops, a well-formed client is answered at once.
  let after = Infinity;
  if (alive) {
    const steps = await probe(target.host, target.port, 0);
    after = steps.connect + steps.handshake + steps.read;
  }
  t.ok(
    after < PROBE_LIMIT_MS,
    `a well-formed client is answered within ${PROBE_LIMIT_MS} ms afterwards (${after.toFixed(0)} ms)`,
  );
  if (!(after < PROBE_LIMIT_MS)) slowProbes++;

  let losses = 0;
  if (alive) {
    const image = await readAll(target.host, target.port, SIZE);
    for (let at = 0; at < SIZE; at += 4096) {
      if (!image.subarray(at, at + 4096).equals(model.subarray(at, at + 4096))) losses++;
    }
    t.equal(losses, 0, 'the export holds its first content plus the acknowledged writes, nothing else');
  }
  const survived = alive;
  const code = await target.stop();
  t.comment(`sockets the fuzzer left open: ${closeLeftoverSockets()}`);
  t.equal(code, 0, `${name} stops cleanly on SIGTERM`);
  reportRow({
    scenario: `nbd-fuzz ${name}`,
    faults: `${counts.requests.toLocaleString('en')} mutated requests, ${counts.handshakes.toLocaleString('en')} mutated handshakes, ${WORKERS} clients at once`,
    checks: `${counts.validWrites.toLocaleString('en')} acknowledged writes in the model, ${counts.readsChecked.toLocaleString('en')} reads checked, ${probes} probes (slowest ${slowest.toFixed(0)} ms; ${after.toFixed(0)} ms after), ${SIZE / 4096} pages at the end`,
    losses,
    crashes: survived && code === 0 ? 0 : 1,
    hangs: counts.stalls + slowProbes,
    peakRssMiB: Math.round(peakRss / MiB),
    seconds: Math.round((performance.now() - started) / 1000),
  });
}

t.test('ferry serve under NBD fuzzing', async (t) => {
  const dir = tempDir(t, 'ferry-fuzz-');
  const image = path.join(dir, 'disk.img');
  const content = writePatternFile(image, SIZE, campaign().seed);
  const serve = await startFerryServe(t, ['--image', image]);
  await fuzz(t, 'serve', serve, content);
});

t.test('ferry dest under NBD fuzzing while it migrates', async (t) => {
  const dir = tempDir(t, 'ferry-fuzz-');
  const sourceImage = path.join(dir, 'source.img');
  const content = writePatternFile(sourceImage, SIZE, campaign().seed + 1);
  const source = await startFerryServe(t, ['--image', sourceImage, '--read-only']);
  // A slow copy keeps most of the image missing while the fuzzing runs.
  const config = path.join(dir, 'ferry.toml');
  fs.writeFileSync(config, '[copy]\nrate_limit = 2097152\n');
  const dest = await startFerry(t, [
    ...['dest', '--cutover-at-start', '--source', source.uri(), '--image', path.join(dir, 'dest.img')],
    ...['--listen', '127.0.0.1:0', '--config', config],
  ]);
  await fuzz(
    t,
    'dest',
    { pid: dest.child.pid!, host: '127.0.0.1', port: servingPort(dest), stop: dest.stop, exited: dest.exited },
    content,
  );
});
