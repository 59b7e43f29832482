/**
 * kill -9 of the destination at every step of its first start (the state's
 * `.creating` record, the image, its size, the state taking its name). The
 * steps are found by watching the directory: a clean start shows how many
 * file events a first start makes, then each start is killed on its k-th
 * event, and others at random moments around the first one. Every restart
 * must serve and complete with the source's bytes, or (never expected) name
 * what to do; which files each kill left is reported.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { servingPort, startFerry } from '../helpers/ferry-daemon';
import { tempDir } from '../helpers/temp-dir';
import { campaign, endCleanly, reportRow } from './campaign';
import { sourceImage } from './block-model';
import { PeakRss, within } from './peak-rss';

endCleanly(t);

const c = campaign();
const random = c.random('first-start');
const SIZE = 1 << 20;
/** Kills per file event, and kills at random moments. */
const PER_EVENT = c.full ? 3 : 1;
const RANDOM_KILLS = c.full ? 12 : 0;
/** Steps killed in the reduced form. */
const REDUCED_STEPS = 4;
const FERRY_BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'ferry.js');
const EXIT_WITH_PARENT = path.resolve(__dirname, '..', 'helpers', 'exit-with-parent.js');

interface Killed {
  /** The files the kill left: name and size. */
  left: string;
  /** File events seen before the kill. */
  events: number;
  /** When the first file event came, ms after spawn. */
  firstEventMs: number;
}

t.test(`kill -9 at every step of a destination's first start (seed ${c.seed})`, async (t) => {
  const started = Date.now();
  const rss = new PeakRss();
  t.teardown(() => rss.stop());
  const dir = tempDir(t);
  const source = sourceImage(SIZE, random);
  fs.writeFileSync(path.join(dir, 'disk.img'), source);
  const serve = await startFerry(t, [
    'serve',
    '--image',
    path.join(dir, 'disk.img'),
    '--read-only',
    '--listen',
    '127.0.0.1:0',
  ]);
  const sourceUrl = `nbd://127.0.0.1:${servingPort(serve)}/disk.img`;
  let run = 0;
  const destArgs = (d: string): string[] => [
    ...['dest', '--cutover-at-start', '--source', sourceUrl, '--image', path.join(d, 'dest.img')],
    ...['--listen', '127.0.0.1:0', '--log-level', 'info'],
  ];

  /** Starts a first start in a fresh directory and kills it on its `killOn`-th file event or after `killAfterMs`. */
  const firstStart = (killOn: number | null, killAfterMs: number | null): Promise<{ dir: string } & Killed> => {
    const d = path.join(dir, `run-${run++}`);
    fs.mkdirSync(d);
    return new Promise((resolve, reject) => {
      let events = 0;
      let firstEventAt = 0;
      const child = spawn(process.execPath, ['-r', EXIT_WITH_PARENT, FERRY_BIN, ...destArgs(d)], {
        stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
      });
      rss.watch(child.pid);
      let stderr = '';
      child.stderr!.on('data', (b: Buffer) => {
        stderr += b.toString();
        // A start that got through every step before its kill: killed serving.
        if (stderr.includes('"serving"')) child.kill('SIGKILL');
      });
      const spawnedAt = Date.now();
      const watcher = fs.watch(d, () => {
        events++;
        if (events === 1) firstEventAt = Date.now() - spawnedAt;
        if (events === killOn) child.kill('SIGKILL');
      });
      const timer = killAfterMs === null ? undefined : setTimeout(() => child.kill('SIGKILL'), killAfterMs);
      child.on('error', reject);
      child.on('close', (code, signal) => {
        watcher.close();
        clearTimeout(timer);
        if (signal !== 'SIGKILL') return reject(new Error(`the first start exited by itself (${code}): ${stderr}`));
        const left = fs
          .readdirSync(d)
          .sort()
          .map((f) => `${f}(${fs.statSync(path.join(d, f)).size})`)
          .join(' ');
        resolve({ dir: d, left: left || 'nothing', events, firstEventMs: firstEventAt });
      });
    });
  };

  let restarts = 0;
  let refused = 0;
  let hangs = 0;
  let losses = 0;
  const residues = new Map<string, number>();
  /** Restarts in the killed start's directory: it must serve and complete with the source's bytes. */
  const restart = async (killed: { dir: string } & Killed): Promise<void> => {
    restarts++;
    residues.set(killed.left, (residues.get(killed.left) ?? 0) + 1);
    let dest;
    try {
      dest = await within(startFerry(t, destArgs(killed.dir), 60_000), 90_000, 'the restart');
    } catch (e) {
      if ((e as Error).name === 'HangError') hangs++;
      refused++;
      t.fail(`the restart after a kill leaving ${killed.left} failed: ${(e as Error).message}`);
      return;
    }
    rss.watch(dest.child.pid);
    await within(dest.waitForLog(/^migration (complete|already complete)/, 60_000), 90_000, 'completion');
    t.equal(await dest.stop(), 0, 'exits 0');
    const image = fs.readFileSync(path.join(killed.dir, 'dest.img'));
    if (!image.equals(source)) {
      losses++;
      t.fail(`after a kill leaving ${killed.left}, the image is not the source`);
    }
    fs.rmSync(killed.dir, { recursive: true, force: true });
  };

  // A clean first start, killed once it serves: how many file events a start makes.
  const clean = await firstStart(null, null);
  const steps = clean.events;
  t.ok(steps >= 3, `a first start makes ${steps} file events (${clean.left})`);
  await restart(clean);
  // Reduced: a few of the steps, drawn from the seed; full: every step, several times.
  const events = [...Array(steps).keys()].map((k) => k + 1);
  const chosen = c.full ? events : events.sort(() => random() - 0.5).slice(0, REDUCED_STEPS);
  for (const k of chosen) for (let i = 0; i < PER_EVENT; i++) await restart(await firstStart(k, null));
  // Random moments around the start's file work, measured from spawn.
  const around = Math.max(1, clean.firstEventMs);
  for (let i = 0; i < RANDOM_KILLS; i++) await restart(await firstStart(null, around * (0.8 + random() * 0.4)));

  t.equal(refused, 0, 'every restart worked');
  const kinds = [...residues.keys()];
  t.comment(`kills left: ${kinds.map((k) => `${k} ×${residues.get(k)}`).join('; ')}`);
  await serve.stop();
  reportRow({
    scenario: 'kill -9 in the first start',
    faults: `${restarts} × kill -9 of a first start (at ${chosen.length} of its ${steps} file events${RANDOM_KILLS ? ', and at random moments' : ''})`,
    checks: `${restarts} restarts served and completed exactly; ${kinds.length} distinct leftovers`,
    losses,
    crashes: refused - hangs,
    hangs,
    peakRssMiB: rss.peakMiB,
    seconds: Math.round((Date.now() - started) / 100) / 10,
  });
});
