import t from 'tap';
import { WindowEstimator } from '../src/migrate/window-estimator';
import { Pacer } from '../src/migrate/pacer';

/** A bottleneck of `rate` bytes/ms and base RTT: latency grows with the queue above one BDP. */
function simulate(est: WindowEstimator, clock: { t: number }, rounds: number, rate: number, rtt: number): number[] {
  const windows: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const inflight = est.bytes;
    const bdp = rate * rtt;
    const latency = rtt + Math.max(0, inflight - bdp) / rate;
    clock.t += latency;
    est.sample(inflight, latency);
    windows.push(est.bytes);
  }
  return windows;
}

t.test('the window grows to about one bandwidth-delay product and stays there', async (t) => {
  const clock = { t: 0 };
  const batch = 256 * 1024;
  const est = new WindowEstimator(2 * batch, 64 << 20, batch, batch, () => clock.t);
  const rate = 12_500; // bytes per ms: 100 Mbit/s
  const rtt = 50;
  const bdp = rate * rtt; // 625 KB
  const windows = simulate(est, clock, 400, rate, rtt);
  const settled = windows.slice(200).filter((w) => w > batch); // leave out probe rounds
  const mean = settled.reduce((a, b) => a + b, 0) / settled.length;
  t.ok(mean >= bdp, `fills the link: mean window ${Math.round(mean)} ≥ BDP ${bdp}`);
  t.ok(mean <= bdp + 3 * batch, `no deep queue: mean window ${Math.round(mean)} ≤ BDP + 3 batches`);
  const probes = windows.filter((w) => w < bdp);
  t.ok(probes.length > 0, 'probes the latency now and then');
  t.ok(
    probes.every((w) => Math.abs(w - est.rate * (est.baseLatencyMs ?? 0) * 0.5) <= 1),
    `a probe holds half the product, ${bdp / 2}: the link carries half its rate (${probes.slice(0, 3).join(', ')})`,
  );
});

t.test('a window inflated by a standing queue comes back down after a probe', async (t) => {
  const clock = { t: 0 };
  const batch = 64 * 1024;
  const est = new WindowEstimator(8 << 20, 64 << 20, batch, batch, () => clock.t);
  const rate = 125_000; // 1 Gbit/s
  const rtt = 20;
  const windows = simulate(est, clock, 1500, rate, rtt);
  const last = windows.slice(-100).filter((w) => w > batch);
  const bdp = rate * rtt;
  t.ok(Math.max(...last) <= 2 * bdp, `ends near one BDP (${Math.max(...last)} ≤ ${2 * bdp})`);
});

t.test('never above the ceiling, never below the floor', async (t) => {
  const clock = { t: 0 };
  const est = new WindowEstimator(1000, 10_000, 1000, 1000, () => clock.t);
  est.sample(1e9, 1);
  t.equal(est.bytes, 10_000);
  est.sample(1, 1e9);
  t.ok(est.bytes >= 1000);
});

t.test(
  'app-limited samples may raise the rate, never lower it: a stretch of cheap runs keeps the link rate',
  async (t) => {
    const clock = { t: 0 };
    const est = new WindowEstimator(1 << 20, 64 << 20, 64 << 10, 64 << 10, () => clock.t);
    const rate = 12_500; // 100 Mbit/s in bytes/ms
    for (let i = 0; i < 40; i++) {
      clock.t += 50;
      est.sample(rate * 50, 50);
    }
    t.equal(est.rate, rate);
    // Five seconds of runs that cost the link a hundredth of that: longer than the rate filter's span.
    for (let i = 0; i < 100; i++) {
      clock.t += 50;
      est.sample((rate * 50) / 100, 50, 50, true);
    }
    t.equal(est.rate, rate, 'the rate the link carried is kept');
    clock.t += 50;
    est.sample(2 * rate * 50, 50, 50, true);
    t.equal(est.rate, 2 * rate, 'an app-limited sample above the rate raises it');

    // The same stretch not marked app-limited: the rate falls to what the cheap runs carried.
    const plain = new WindowEstimator(1 << 20, 64 << 20, 64 << 10, 64 << 10, () => clock.t);
    for (let i = 0; i < 40; i++) {
      clock.t += 50;
      plain.sample(rate * 50, 50);
    }
    for (let i = 0; i < 100; i++) {
      clock.t += 50;
      plain.sample((rate * 50) / 100, 50);
    }
    t.equal(plain.rate, rate / 100);
  },
);

/**
 * An event-driven pipeline: a batch sent at t reaches the bottleneck after
 * half the base RTT, is serialised at `rate` behind whatever is queued, and
 * completes half an RTT after it leaves. The copy sends while the next batch
 * fits under the window, as BackgroundCopy does; each completion reports the
 * bytes delivered while it was in flight.
 */
function pipeline(est: WindowEstimator, clock: { t: number }, ms: number, rate: number, rtt: number, batch: number) {
  let linkFreeAt = 0;
  let inFlight = 0;
  let delivered = 0;
  const pending: Array<{ done: number; sentAt: number; deliveredAtSend: number }> = [];
  let maxQueueMs = 0;
  let startupMaxQueueMs = 0;
  const queueMs: number[] = [];
  const pacer = new Pacer(() => clock.t);
  while (clock.t < ms) {
    // In the pacer's probing rounds the window opens by the same gain, as BackgroundCopy.hasRoom does.
    const base = est.baseLatencyMs ?? 0;
    const extra = Math.max(0, (pacer.windowGain(base) - 1) * est.rate * base);
    while (inFlight === 0 || inFlight + batch <= est.bytes + extra) {
      inFlight += batch;
      const arrive = clock.t + rtt / 2;
      const start = Math.max(arrive, linkFreeAt);
      queueMs.push(start - arrive);
      maxQueueMs = Math.max(maxQueueMs, start - arrive);
      if (!pacer.filled) startupMaxQueueMs = Math.max(startupMaxQueueMs, start - arrive);
      linkFreeAt = start + batch / rate;
      pending.push({ done: linkFreeAt + rtt / 2, sentAt: clock.t, deliveredAtSend: delivered });
    }
    pending.sort((a, b) => a.done - b.done);
    const next = pending.shift()!;
    clock.t = next.done;
    inFlight -= batch;
    delivered += batch;
    est.sample(delivered - next.deliveredAtSend, clock.t - next.sentAt);
    pacer.observe(est.rate, est.baseLatencyMs ?? 0, clock.t - next.sentAt);
  }
  const settled = queueMs.slice(Math.floor(queueMs.length / 2));
  return {
    rate: delivered / ms,
    meanQueueMs: settled.reduce((a, b) => a + b, 0) / settled.length,
    medianQueueMs: [...settled].sort((a, b) => a - b)[Math.floor(settled.length / 2)],
    maxQueueMs,
    startupMaxQueueMs,
  };
}

t.test('a pipeline with one batch in flight does not stall: the window opens to fill the link', async (t) => {
  const clock = { t: 0 };
  const batch = 256 * 1024;
  const rate = 12_500; // 100 Mbit/s in bytes/ms
  const rtt = 50;
  // Start at the floor: a window of one batch must still grow.
  const est = new WindowEstimator(batch, 64 << 20, batch, batch, () => clock.t);
  const r = pipeline(est, clock, 30_000, rate, rtt, batch);
  t.ok(r.rate >= 0.9 * rate, `delivers ${Math.round(r.rate)} of ${rate} bytes/ms`);
  t.ok(r.meanQueueMs <= 2 * (batch / rate), `mean queue ${r.meanQueueMs.toFixed(1)} ms is at most two batches`);
});

t.test('with no headroom the queue stays near empty (the latency-first setting)', async (t) => {
  const clock = { t: 0 };
  const batch = 64 * 1024;
  const rate = 12_500;
  const est = new WindowEstimator(2 * batch, 64 << 20, batch, 0, () => clock.t);
  const r = pipeline(est, clock, 30_000, rate, 50, batch);
  t.ok(r.meanQueueMs <= batch / rate, `mean queue ${r.meanQueueMs.toFixed(1)} ms ≤ one batch`);
  t.ok(r.rate >= 0.5 * rate, `still moves data: ${Math.round(r.rate)} bytes/ms`);
});

t.test(
  'runs of a few milliseconds of the link and one run of headroom: a full link, a median queue under one run',
  async (t) => {
    const clock = { t: 0 };
    const rate = 12_500; // 100 Mbit/s
    const run = 5 * rate; // 5 ms of the link, as BackgroundCopy sizes runs
    const est = new WindowEstimator(2 * run, 64 << 20, run, run, () => clock.t);
    const r = pipeline(est, clock, 30_000, rate, 50, run);
    t.ok(r.rate >= 0.9 * rate, `delivers ${Math.round(r.rate)} of ${rate} bytes/ms`);
    t.ok(r.medianQueueMs <= run / rate, `median queue ${r.medianQueueMs.toFixed(1)} ms ≤ one run (5 ms)`);
    // The router of the emulated link drops at 37 ms of queue (0.74 of the round trip).
    t.ok(
      r.startupMaxQueueMs <= 0.6 * 50,
      `start-up queues at most ${r.startupMaxQueueMs.toFixed(1)} ms, 0.6 of a round trip`,
    );
  },
);
