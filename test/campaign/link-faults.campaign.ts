/**
 * Link faults between a ferry source and a destination, through a proxy the
 * test steers, while a VM writes and reads at the destination: connections
 * reset then refused, a blackhole (nothing forwarded, nothing closed), and
 * 1% of segments with a flipped bit, with --insecure and with TLS. Reads of
 * missing blocks wait and then succeed, held blocks are served throughout,
 * corruptions are caught and refetched, a dead path is noticed (the status
 * leaves `migrating`) within the wire's stall time, and the final image is
 * the source plus the writes.
 */
import t, { type Test } from 'tap';
import path from 'node:path';
import type { NbdClient } from '../../src/nbd/client';
import { ctlStatus } from '../helpers/ferry-daemon';
import { sendControl } from '../../src/control/control-client';
import type { MigrationStatus } from '../../src/migrate/status';
import { FaultProxy, type LinkMode } from '../helpers/fault-proxy';
import { run } from '../helpers/run';
import { tempDir } from '../helpers/temp-dir';
import { until } from '../helpers/until';
import { campaign, endCleanly, reportRow } from './campaign';
import { BS } from './block-model';
import { MigrationRig } from './migration-rig';
import { HangError, within } from './peak-rss';

endCleanly(t);

const c = campaign();
const random = c.random('link-faults');
const SIZE = c.full ? 64 << 20 : 8 << 20;
/** The wire's stall timeout (a stream with requests outstanding and no frame for this long is dropped), and slack. */
const STALL_DETECTION_MS = 20_000 + 5_000;
/** How long the TLS link flips bits. */
const TLS_FLIP_WINDOW_MS = c.full ? 60_000 : 5_000;
const FERRY_BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'ferry.js');

interface Outage {
  name: string;
  /** The link's modes in turn, each for its share of the outage. */
  modes: LinkMode[];
  ms: number;
}

const outages: Outage[] = c.full
  ? [
      { name: 'reset, refused 5 s', modes: ['reset', 'refuse'], ms: 5_000 },
      { name: 'reset, refused 30 s', modes: ['reset', 'refuse'], ms: 30_000 },
      { name: 'blackhole 40 s', modes: ['blackhole'], ms: 40_000 },
    ]
  : [
      { name: 'reset, refused 2 s', modes: ['reset', 'refuse'], ms: 2_000 },
      { name: 'blackhole 2 s', modes: ['blackhole'], ms: 2_000 },
    ];

/** Waits for the cutover at start (a ferry source is fenced first): before it, reads are not kept. */
async function postCopy(rig: MigrationRig): Promise<void> {
  await until(
    async () => {
      const r = await sendControl(rig.destCtl, { cmd: 'status' }, 10_000);
      return r.ok && (r.status as MigrationStatus).phase === 'post-copy';
    },
    'the cutover at start',
    60_000,
    50,
  );
}

/** Whether a read error is the one a VM must never see while the source is merely away; resolves the read's wait in ms. */
async function checkedRead(rig: MigrationRig, client: NbdClient, block: number, what: string): Promise<number> {
  const asked = performance.now();
  const got = await client.read(block * BS, BS); // rejects (EIO) on failure: the scenario fails
  const waitedMs = performance.now() - asked;
  if (rig.model.check(block, got)) {
    rig.losses++;
    t.fail(`${what}: block ${block} holds what it may not`);
  }
  return waitedMs;
}

function row(rig: MigrationRig, scenario: string, faults: string, checks: string, started: number): void {
  reportRow({
    scenario,
    faults,
    checks: `${checks}; ${rig.model.checks.toLocaleString('en')} block checks (${SIZE >> 20} MiB, ferry wire)`,
    losses: rig.losses,
    crashes: rig.crashes,
    hangs: rig.hangs,
    peakRssMiB: rig.rss.peakMiB,
    seconds: Math.round((Date.now() - started) / 100) / 10,
  });
}

async function guarded(rig: MigrationRig, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (e) {
    if (e instanceof HangError) rig.hangs++;
    throw e;
  }
}

for (const outage of outages) {
  t.test(`link ${outage.name} mid-migration (seed ${c.seed})`, async (t: Test) => {
    const started = Date.now();
    let proxy!: FaultProxy;
    const rig = new MigrationRig(
      t,
      {
        transport: 'ferry',
        size: SIZE,
        rate: c.full ? '4M' : '1M',
        route: async (port) => {
          proxy = new FaultProxy({ host: '127.0.0.1', port }, random);
          t.teardown(() => proxy.close());
          return proxy.start();
        },
      },
      random,
    );
    let heldReads = 0;
    let waitedReads = 0;
    let stalledAfterMs: number | null = null;
    await guarded(rig, async () => {
      await rig.startSource();
      await rig.startDest();
      const client = await rig.connect();
      await postCopy(rig);
      const held = Math.floor(random() * 16); // read once after the cutover: held from then on
      await checkedRead(rig, client, held, 'before the outage');
      await rig.model.writeBatch(client, 8);

      const outageStarted = Date.now();
      await proxy.set(outage.modes[0]);
      // A read of a block the copy has not reached and the VM has not written (that would hold it):
      // it waits for the link, then succeeds.
      const touched = new Set(rig.model.touched);
      const untouched = Array.from({ length: 16 }, (_, i) => rig.model.blocks - 1 - i).filter((b) => !touched.has(b));
      const far = untouched[Math.floor(random() * untouched.length)];
      const waiting = checkedRead(rig, client, far, 'a read that waited for the link').then(() => void waitedReads++);
      let settled = false;
      void waiting.finally(() => (settled = true)).catch(() => undefined);
      // Throughout: the control socket answers, and says when the link is noticed down.
      let outageOver = false;
      const watching = (async () => {
        while (!outageOver) {
          const r = await within(sendControl(rig.destCtl, { cmd: 'status' }, 10_000), 15_000, 'the control socket');
          const state = r.ok ? (r.status as MigrationStatus).state : 'error';
          if (state !== 'migrating' && stalledAfterMs === null) stalledAfterMs = Date.now() - outageStarted;
          await new Promise((r) => setTimeout(r, 100)); // the sampling period, not a synchronisation
        }
      })();
      // Throughout: held blocks are served, the VM writes whole blocks and flushes.
      const modeMs = outage.ms / outage.modes.length;
      for (let i = 0; i < outage.modes.length; i++) {
        await proxy.set(outage.modes[i]);
        const until = outageStarted + (i + 1) * modeMs;
        while (Date.now() < until) {
          await within(checkedRead(rig, client, held, 'a held block during the outage'), 5_000, 'a held block');
          heldReads++;
          await within(
            rig.model.writeBatch(client, 4, true),
            5_000,
            'whole-block writes and a flush during the outage',
          );
          await new Promise((r) => setTimeout(r, 250)); // pacing of the probes, not a synchronisation
        }
      }
      outageOver = true;
      await watching;
      t.notOk(settled, 'the read of a missing block waited for the link');
      await proxy.set('forward');
      await within(waiting, 60_000, 'the read that waited for the link');
      if (outage.ms >= STALL_DETECTION_MS)
        t.ok(
          stalledAfterMs !== null && stalledAfterMs <= STALL_DETECTION_MS,
          `the dead path was noticed after ${stalledAfterMs} ms`,
        );
      await rig.checkTouched(client, 'after the outage');
      await rig.finish();
      await rig.stopAll();
    }).finally(() =>
      row(
        rig,
        `link ${outage.name}`,
        `${outage.modes.join(' then ')} for ${outage.ms / 1000} s, ${proxy?.connections ?? 0} connections`,
        `${waitedReads} read of a missing block waited and succeeded; ${heldReads} held reads served; ` +
          `stall noticed after ${stalledAfterMs === null ? '—' : `${(stalledAfterMs / 1000).toFixed(1)} s`}`,
        started,
      ),
    );
  });
}

for (const auth of ['insecure', 'tls'] as const) {
  t.test(`1% of segments with a flipped bit, ${auth} (seed ${c.seed})`, async (t: Test) => {
    const started = Date.now();
    let proxy!: FaultProxy;
    let authFlags = ['--insecure'];
    if (auth === 'tls') {
      const key = path.join(tempDir(t), 'psk');
      const r = await run(process.execPath, [FERRY_BIN, 'keygen', '--psk', key]);
      t.equal(r.code, 0, `keygen: ${r.stderr}`);
      authFlags = ['--psk-file', key];
    }
    const rig = new MigrationRig(
      t,
      {
        transport: 'ferry',
        size: SIZE,
        rate: c.full ? '8M' : '2M',
        auth: authFlags,
        route: async (port) => {
          proxy = new FaultProxy({ host: '127.0.0.1', port }, random);
          t.teardown(() => proxy.close());
          return proxy.start();
        },
      },
      random,
    );
    let caught = '';
    let slowestReadMs = 0;
    await guarded(rig, async () => {
      await rig.startSource();
      await rig.startDest();
      const client = await rig.connect();
      // From here on: a first start whose handshake a flip broke exits and says so (a start needs its source).
      proxy.flipRate = 0.01;
      const flipUntil = Date.now() + TLS_FLIP_WINDOW_MS;
      for (let i = 0; i < 8 || (auth === 'tls' && Date.now() < flipUntil); i++) {
        await rig.model.writeBatch(client, 8);
        const waitedMs = await checkedRead(
          rig,
          client,
          Math.floor(random() * rig.model.blocks),
          'a read through flipped bits',
        );
        slowestReadMs = Math.max(slowestReadMs, waitedMs);
      }
      // Under TLS every flip costs a connection and its handshake, and the copy crawls: the
      // flips last a window, then the link is clean so the migration can finish.
      if (auth === 'tls') proxy.flipRate = 0;
      await rig.checkTouched(client, 'after the flips');
      const s = await ctlStatus(rig.destCtl);
      caught = `${s.corruptFrames} corrupt frames, ${s.checksumFailures} checksum failures`;
      await rig.finish();
      const flips = proxy.flips;
      t.ok(flips > 0, `${flips} bits flipped`);
      if (auth === 'insecure')
        t.ok(s.corruptFrames + s.checksumFailures > 0, `flips caught by the wire's own checks: ${caught}`);
      await rig.stopAll();
    }).finally(() =>
      row(
        rig,
        `1% bit flips (${auth === 'tls' ? 'TLS' : '--insecure'})`,
        `${proxy?.flips ?? 0} bits flipped in ${proxy?.connections ?? 0} connections` +
          (auth === 'tls' ? ` (flips for the first ${TLS_FLIP_WINDOW_MS / 1000} s)` : ''),
        `caught: ${auth === 'tls' ? 'by TLS (connection dropped, reconnected)' : caught}; ` +
          `slowest VM read ${(slowestReadMs / 1000).toFixed(1)} s; final image exact`,
        started,
      ),
    );
  });
}
