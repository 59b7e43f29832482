import t from 'tap';
import { DeliveryClock, type SendStamp } from '../src/migrate/delivery-sample';

const RATE = 12_500; // bytes/ms: 100 Mbit/s
const RTT = 50;
const RUN = 5 * RATE; // a run holds 5 ms of the link

t.test('a steady link gives samples at its rate', async (t) => {
  // The copy keeps the link full: one run sent per run that arrives, each a round trip on its way.
  const clock = new DeliveryClock();
  const inFlight: Array<{ stamp: SendStamp; arrives: number }> = [];
  for (let i = 0; i < RTT / 5; i++) inFlight.push({ stamp: clock.sent(i * 5, 0, i === 0), arrives: RTT + i * 5 });
  let bytes = 0;
  const rates: number[] = [];
  for (let k = 0; k < 500; k++) {
    const run = inFlight.shift()!;
    bytes += RUN;
    const s = clock.arrived(run.stamp, run.arrives, bytes);
    if (s && k >= RTT / 5) rates.push(s.bytes / s.intervalMs);
    inFlight.push({ stamp: clock.sent(run.arrives, bytes, false), arrives: run.arrives + RTT });
  }
  const max = Math.max(...rates);
  const min = Math.min(...rates);
  t.ok(max <= RATE * 1.01 && min >= RATE * 0.99, `samples ${min.toFixed(0)}–${max.toFixed(0)} bytes/ms`);
});

t.test('a backlog read after the destination was busy does not make the link look faster', async (t) => {
  const clock = new DeliveryClock();
  let bytes = 0;
  // Steady: runs sent every 5 ms arrive a round trip later.
  const stamps: SendStamp[] = [];
  for (let i = 0; i < 10; i++) stamps.push(clock.sent(i * 5, 0, i === 0));
  for (let i = 0; i < 10; i++) {
    bytes += RUN;
    clock.arrived(stamps[i], RTT + i * 5, bytes);
  }
  // Another run at 95; then the destination is busy until 1000, when that run is handled and the
  // next one sent. Then it reads a backlog of 1.2 MB that waited in the kernel meanwhile, and the
  // new run's bytes a round trip after its send.
  const before = clock.sent(95, bytes, false);
  bytes += RUN;
  clock.arrived(before, 1000, bytes);
  const next = clock.sent(1000, bytes, false);
  bytes += 1_200_000 + RUN;
  const s = clock.arrived(next, 1000 + RTT, bytes)!;
  const rate = s.bytes / s.intervalMs;
  t.ok(rate <= RATE, `${rate.toFixed(0)} bytes/ms: no more than the link`);
  const overArrivals = s.bytes / RTT;
  t.ok(overArrivals > 2 * RATE, `over the arrival times alone it would read ${overArrivals.toFixed(0)} bytes/ms`);
});

t.test('a send with nothing in flight starts the clock again: an idle link is not a slow one', async (t) => {
  const clock = new DeliveryClock();
  const a = clock.sent(0, 0, true);
  t.same(clock.arrived(a, RTT, RUN), { bytes: RUN, intervalMs: RTT });
  // Ten seconds with nothing to copy, then a run again.
  const b = clock.sent(10_000, RUN, true);
  t.same(clock.arrived(b, 10_000 + RTT, 2 * RUN), { bytes: RUN, intervalMs: RTT }, 'measured from the send');
  // Without the restart the time since the last arrival would count as delivery time.
  const c = clock.sent(20_000, 2 * RUN, false);
  t.ok(
    clock.arrived(c, 20_000 + RTT, 3 * RUN)!.intervalMs >= 9_000,
    'a send that is not idle counts from the last arrival',
  );
});

t.test('counts that cannot be compared give no sample', async (t) => {
  const clock = new DeliveryClock();
  const a = clock.sent(0, 1_000_000, true);
  t.equal(clock.arrived(a, 50, 10_000), null, 'a new upstream counts from zero');
  const b = clock.sent(60, 10_000, false);
  t.equal(clock.arrived(b, 110, 10_000), null, 'nothing read since');
  const c = clock.sent(120, 10_000, false);
  t.same(clock.arrived(c, 170, 70_000), { bytes: 60_000, intervalMs: 60 }, 'then samples again from the new count');
});
