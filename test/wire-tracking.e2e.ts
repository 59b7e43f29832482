/**
 * A ferry source whose VM writes through its NBD port (--nbd-listen), and a
 * WireUpstream as the destination's end: DIRTY reports, re-sent after a
 * reconnect; the fence and the final write set, the same however often and
 * after a kill -9; a new tracking epoch after a restart before cutover.
 */
import t, { Test } from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { startFerry, freePort, ferryCtl, FerryDaemon } from './helpers/ferry-daemon';
import { tempDir } from './helpers/temp-dir';
import { openWireUpstream } from './helpers/wire-source';
import { NbdClient, NbdError } from '../src/nbd/client';
import { CodecPool } from '../src/pool';
import { WireUpstream } from '../src/upstream/wire-upstream';
import type { ByteRange, DirtyReport } from '../src/upstream/upstream';
import type { SourceStatus } from '../src/wire/source-sessions';

const BS = 4096;
const IMAGE_SIZE = 4 << 20;

interface Source {
  dir: string;
  wirePort: number;
  nbdPort: number;
  control: string;
  args: string[];
  daemon: FerryDaemon;
}

async function startSource(t: Test, opts: { nbd?: boolean; size?: number } = {}): Promise<Source> {
  const dir = tempDir(t, 'ferry-tracking-');
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, Buffer.alloc(opts.size ?? IMAGE_SIZE));
  const wirePort = await freePort();
  const nbdPort = await freePort();
  const control = path.join(dir, 'ctl.sock');
  const args = [
    ...['source', '--image', image, '--listen', `127.0.0.1:${wirePort}`, '--insecure', '--workers', '1'],
    ...['--codec', 'lz4', '--state-dir', path.join(dir, 'state'), '--control', control],
    ...(opts.nbd === false ? [] : ['--nbd-listen', `127.0.0.1:${nbdPort}`]),
  ];
  return { dir, wirePort, nbdPort, control, args, daemon: await startFerry(t, args) };
}

/** Kills the source (SIGKILL: no clean shutdown) and starts it again on the same ports and state. */
async function restart(t: Test, s: Source): Promise<void> {
  await s.daemon.stop('SIGKILL');
  s.daemon = await startFerry(t, s.args);
}

async function openUpstream(t: Test, s: Source, session?: string): Promise<WireUpstream> {
  const pool = new CodecPool({ workers: 1 });
  t.teardown(() => pool.close());
  const u = await openWireUpstream(`ferry://127.0.0.1:${s.wirePort}/disk.img`, { kind: 'insecure' }, pool, {
    blockSize: BS,
    maxAttempts: 4,
    session,
  });
  t.teardown(() => u.close());
  return u;
}

async function vmOf(t: Test, s: Source): Promise<NbdClient> {
  const vm = await NbdClient.connect({ host: '127.0.0.1', port: s.nbdPort }, { exportName: 'disk.img' });
  t.teardown(() => vm.close().catch(() => undefined));
  return vm;
}

function blocksOf(ranges: readonly ByteRange[]): number[] {
  const out: number[] = [];
  for (const r of ranges) {
    if (r.offset % BS !== 0) throw new Error(`range ${r.offset}+${r.length} does not start on a block`);
    for (let b = r.offset / BS; b < Math.ceil((r.offset + r.length) / BS); b++) out.push(b);
  }
  return out;
}

const sorted = (blocks: Iterable<number>): number[] => [...new Set(blocks)].sort((a, b) => a - b);

/** The DIRTY reports an upstream receives, and a wait for the blocks they cover. */
function collect(u: WireUpstream) {
  const reports: DirtyReport[] = [];
  const wake = new Set<() => void>();
  u.on('dirty', (r: DirtyReport) => {
    reports.push(r);
    for (const w of wake) w();
  });
  const covered = (from: number): Set<number> => new Set(reports.slice(from).flatMap((r) => blocksOf(r.ranges)));
  return {
    reports,
    /** Resolves with the reports from index `from` on, once they cover every block of `blocks`. */
    until(blocks: number[], from = 0, ms = 15_000): Promise<DirtyReport[]> {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const have = covered(from);
          if (!blocks.every((b) => have.has(b))) return;
          wake.delete(check);
          clearTimeout(timer);
          resolve(reports.slice(from));
        };
        const timer = setTimeout(() => {
          wake.delete(check);
          reject(new Error(`no reports covering blocks ${blocks.join(',')} (have ${sorted(covered(from))})`));
        }, ms);
        wake.add(check);
        check();
      });
    },
  };
}

function nextEvent<T>(u: WireUpstream, event: string, ms = 15_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no '${event}' within ${ms} ms`)), ms);
    u.once(event, (v: T) => {
      clearTimeout(timer);
      resolve(v);
    });
  });
}

async function sourceStatus(control: string): Promise<SourceStatus> {
  const r = await ferryCtl(control, 'status', '--json');
  if (r.code !== 0) throw new Error(`ferry ctl status failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as SourceStatus;
}

async function expectEperm(t: Test, write: Promise<unknown>, what: string): Promise<void> {
  try {
    await write;
    t.fail(`${what}: the write was taken`);
  } catch (e) {
    t.ok(e instanceof NbdError && e.errnoName === 'EPERM', `${what}: refused with EPERM (${(e as Error).message})`);
  }
}

t.test(
  'writes are reported as exactly the blocks written; unacknowledged reports come again after a reconnect; cutover fences and returns them',
  async (t) => {
    const s = await startSource(t);
    const session = crypto.randomUUID();
    const u = await openUpstream(t, s, session);
    t.equal(u.tracking, 'stream');
    t.ok(u.trackingEpoch.length > 0, 'a tracking epoch');
    const reports = collect(u);
    const vm = await vmOf(t, s);

    // Round one, acknowledged: a write inside a block, one spanning two, a zero and a trim.
    await vm.write(100, Buffer.alloc(10, 1));
    await vm.write((1 << 20) - 1, Buffer.alloc(2, 2));
    await vm.zero(64 << 10, 8 << 10);
    await vm.trim(3 << 20, BS);
    const first = [0, 255, 256, 16, 17, 768];
    const got = await reports.until(first);
    t.same(sorted(got.flatMap((r) => blocksOf(r.ranges))), sorted(first), 'exactly the blocks written');
    for (const r of got) r.ack();

    // Round two, not acknowledged.
    const mark = reports.reports.length;
    await vm.write(8192, crypto.randomBytes(BS));
    await vm.write(IMAGE_SIZE - BS, crypto.randomBytes(BS));
    const second = [2, IMAGE_SIZE / BS - 1];
    const unacked = await reports.until(second, mark);
    t.same(sorted(unacked.flatMap((r) => blocksOf(r.ranges))), sorted(second));
    const before = await sourceStatus(s.control);
    t.equal(before.fenced, false);
    t.equal(before.sessions.find((x) => x.id === session)?.unackedReports, unacked.length, 'the source holds them');

    // A new urgent stream: the source sends what was not acknowledged again (and only that).
    const again = reports.reports.length;
    await u.reconnect();
    const resent = await reports.until(second, again);
    t.same(sorted(resent.flatMap((r) => blocksOf(r.ranges))), sorted(second), 'the unacknowledged blocks, again');

    const final = await u.cutover();
    t.same(sorted(blocksOf(final.ranges)), sorted(second), 'the final set is what was not acknowledged');
    await expectEperm(t, vm.write(0, Buffer.alloc(BS, 9)), 'a VM write after the fence');
    await s.daemon.waitForLog('refused a write: the source is fenced (cut over to a destination)');
    t.equal(await u.cutover(), final, 'asking again before the ack: the same set');

    // A destination restarted with the same session id asks the source itself: the same set.
    const other = await openUpstream(t, s, session);
    t.equal(other.trackingEpoch, u.trackingEpoch, 'the same epoch');
    t.same((await other.cutover()).ranges, final.ranges, 'the source answers with the same set');
    const st = await sourceStatus(s.control);
    t.equal(st.fenced, true);
    t.ok(st.cutoverRecord && fs.existsSync(st.cutoverRecord), 'the cutover record is on disk');
    t.equal(st.refusedWrites, 1);
  },
);

t.test(
  'a source killed after the fence restarts fenced, with the same epoch and set; after the ack unfence is refused',
  async (t) => {
    const s = await startSource(t);
    const session = crypto.randomUUID();
    const u = await openUpstream(t, s, session);
    const reports = collect(u);
    const vm = await vmOf(t, s);
    await vm.write(5 * BS, crypto.randomBytes(3 * BS));
    await reports.until([5, 6, 7]);

    // The source cuts over on its own: a connected upstream hears it as a 'cutover' event.
    const pushed = nextEvent<DirtyReport>(u, 'cutover');
    const ctl = await ferryCtl(s.control, 'cutover');
    t.equal(ctl.code, 0, ctl.stderr);
    t.match(ctl.stdout, /fenced; final write sets recorded/);
    const report = await pushed;
    t.same(sorted(blocksOf(report.ranges)), [5, 6, 7]);
    const epoch = u.trackingEpoch;

    const reconnected = nextEvent(u, 'connected');
    await restart(t, s);
    await reconnected;
    t.equal(u.trackingEpoch, epoch, 'the restarted source reports the recorded epoch');
    const vm2 = await vmOf(t, s);
    await expectEperm(t, vm2.write(0, Buffer.alloc(BS)), 'a VM write to the restarted source');
    const fresh = await openUpstream(t, s, session);
    t.equal(fresh.trackingEpoch, epoch);
    const again = await fresh.cutover();
    t.same(again.ranges, report.ranges, 'the same set after kill -9');
    t.same((await fresh.cutover()).ranges, report.ranges, 'and again');

    const acked = s.daemon.waitForLog('destination acknowledged the final write set');
    again.ack();
    await acked;
    const st = await sourceStatus(s.control);
    t.equal(st.sessions.find((x) => x.id === session)?.cutover?.acked, true, 'the session is cut over');
    const unfence = await ferryCtl(s.control, 'unfence');
    t.equal(unfence.code, 1, 'unfence refused');
    t.match(unfence.stderr, /refusing to unfence: destination session .* acknowledged the cutover/);
    await expectEperm(t, vm2.write(0, Buffer.alloc(BS)), 'still fenced');
  },
);

t.test('a source restarted before cutover has a new tracking epoch and takes writes', async (t) => {
  const s = await startSource(t);
  const u = await openUpstream(t, s);
  const epoch = u.trackingEpoch;
  const reconnected = nextEvent(u, 'connected');
  await restart(t, s);
  await reconnected;
  t.not(u.trackingEpoch, epoch, 'reports may have been lost: a new epoch');
  t.ok(u.trackingEpoch.length > 0);
  const vm = await vmOf(t, s);
  await vm.write(0, Buffer.alloc(BS, 1));
  t.pass('the restarted source takes writes');
});

t.test(
  'ferry ctl cutover reaches a disconnected session at its next connect; unfence before any ack gives the VM its disk back',
  async (t) => {
    const s = await startSource(t);
    const sessionB = crypto.randomUUID();
    const a = await openUpstream(t, s);
    const b = await openUpstream(t, s, sessionB);
    const reportsA = collect(a);
    const reportsB = collect(b);
    const vm = await vmOf(t, s);
    await vm.write(0, Buffer.alloc(BS, 1));
    await reportsA.until([0]);
    await reportsB.until([0]);
    for (const r of reportsB.reports) r.ack();
    await b.close(); // B's destination goes away; its session keeps tracking
    await vm.write(10 * BS, Buffer.alloc(BS, 2));
    await reportsA.until([10]);

    const pushed = nextEvent<DirtyReport>(a, 'cutover');
    t.equal((await ferryCtl(s.control, 'cutover')).code, 0);
    t.same(sorted(blocksOf((await pushed).ranges)), [0, 10], 'the connected session: everything it did not ack');

    const b2 = await WireUpstreamWithListener(t, s, sessionB);
    t.same(sorted(blocksOf((await b2.cutoverEvent).ranges)), [10], 'the other one at its next connect');

    const unfence = await ferryCtl(s.control, 'unfence');
    t.equal(unfence.code, 0, unfence.stderr);
    await vm.write(20 * BS, Buffer.alloc(BS, 3));
    t.pass('writes are taken again');
    const st = await sourceStatus(s.control);
    t.equal(st.fenced, false);
    t.equal(st.cutoverRecord, null);
    // The state directory keeps the image's identity; no cutover record may be left in it.
    t.notOk(
      fs.existsSync(path.join(s.dir, 'state')) &&
        fs.readdirSync(path.join(s.dir, 'state')).some((f) => f.endsWith('.cutover.json')),
      'no record left',
    );
  },
);

/** Opens an upstream and waits for the 'cutover' event its source pushes when it connects. */
async function WireUpstreamWithListener(
  t: Test,
  s: Source,
  session: string,
): Promise<{ u: WireUpstream; cutoverEvent: Promise<DirtyReport> }> {
  const u = await openUpstream(t, s, session);
  // The set may arrive during open(): it is held until a listener is there.
  return { u, cutoverEvent: nextEvent<DirtyReport>(u, 'cutover') };
}

t.test('without --nbd-listen nothing can be tracked: tracking none, and no cutover at the source', async (t) => {
  const s = await startSource(t, { nbd: false });
  const u = await openUpstream(t, s);
  t.equal(u.tracking, 'none');
  t.equal(u.trackingEpoch, '');
  t.same((await u.cutover()).ranges, [], 'nothing to fetch again');
  const r = await ferryCtl(s.control, 'cutover');
  t.equal(r.code, 1);
  t.match(r.stderr, /does not track writes/);
});

t.test('a source restarted without --nbd-listen no longer tracks writes: the upstream stops', async (t) => {
  const s = await startSource(t);
  const u = await openUpstream(t, s);
  t.equal(u.tracking, 'stream');
  const lost = nextEvent(u, 'disconnected');
  await s.daemon.stop('SIGKILL');
  await lost;
  s.daemon = await startFerry(
    t,
    s.args.filter((a, i) => a !== '--nbd-listen' && s.args[i - 1] !== '--nbd-listen'),
  );
  await t.rejects(u.fetch(0, BS, 'urgent'), { name: 'TrackingLostError' });
  await t.rejects(u.cutover(), { name: 'TrackingLostError' }, 'and no cutover through it');
});

t.test('a final set of more than 4096 ranges arrives whole, in several CUTOVER frames', async (t) => {
  const blocks = 5000; // every other block: 5000 separate ranges
  const s = await startSource(t, { size: 2 * blocks * BS });
  const u = await openUpstream(t, s);
  const vm = await vmOf(t, s);
  for (let i = 0; i < blocks; i += 100) {
    const writes: Array<Promise<void>> = [];
    for (let k = i; k < Math.min(blocks, i + 100); k++) writes.push(vm.write(2 * k * BS, Buffer.alloc(BS, 1)));
    await Promise.all(writes);
  }
  const final = await u.cutover();
  t.equal(final.ranges.length, blocks, `${final.ranges.length} ranges`);
  t.ok(
    final.ranges.every((r, k) => r.offset === 2 * k * BS && r.length === BS),
    'every written block, in order',
  );
  const st = await sourceStatus(s.control);
  t.equal(st.sessions[0].cutover?.ranges, blocks, 'the source recorded the same set');
});
