import t from 'tap';
import { WindowEstimator } from '../src/migrate/background-copy';

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
  const est = new WindowEstimator(2 * batch, 64 << 20, batch, () => clock.t);
  const rate = 12_500; // bytes per ms: 100 Mbit/s
  const rtt = 50;
  const bdp = rate * rtt; // 625 KB
  const windows = simulate(est, clock, 400, rate, rtt);
  const settled = windows.slice(200).filter((w) => w > batch); // leave out probe rounds
  const mean = settled.reduce((a, b) => a + b, 0) / settled.length;
  t.ok(mean >= bdp, `fills the link: mean window ${Math.round(mean)} ≥ BDP ${bdp}`);
  t.ok(mean <= bdp + 3 * batch, `no deep queue: mean window ${Math.round(mean)} ≤ BDP + 3 batches`);
  t.ok(
    windows.some((w) => w === batch),
    'probes the latency by dropping to the floor now and then',
  );
});

t.test('a window inflated by a standing queue comes back down after a probe', async (t) => {
  const clock = { t: 0 };
  const batch = 64 * 1024;
  const est = new WindowEstimator(8 << 20, 64 << 20, batch, () => clock.t);
  const rate = 125_000; // 1 Gbit/s
  const rtt = 20;
  const windows = simulate(est, clock, 1500, rate, rtt);
  const last = windows.slice(-100).filter((w) => w > batch);
  const bdp = rate * rtt;
  t.ok(Math.max(...last) <= 2 * bdp, `ends near one BDP (${Math.max(...last)} ≤ ${2 * bdp})`);
});

t.test('never above the ceiling, never below the floor', async (t) => {
  const clock = { t: 0 };
  const est = new WindowEstimator(1000, 10_000, 1000, () => clock.t);
  est.sample(1e9, 1);
  t.equal(est.bytes, 10_000);
  est.sample(1, 1e9);
  t.ok(est.bytes >= 1000);
});
