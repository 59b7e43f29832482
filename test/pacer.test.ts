import t from 'tap';
import { PACE_SLACK_MS, Pacer, PACING_GAINS, STARTUP_GAIN, STARTUP_WINDOW_GAIN } from '../src/migrate/pacer';

t.test('start-up paces at twice the rate until the rate stops growing', async (t) => {
  const clock = { t: 0 };
  const p = new Pacer(() => clock.t);
  const round = 50;
  t.equal(p.gain(round), STARTUP_GAIN);
  let rate = 100;
  for (let i = 0; i < 5; i++) {
    clock.t += round;
    p.observe((rate *= 2), round);
  }
  t.notOk(p.filled, 'still growing');
  for (let i = 0; i < 3; i++) {
    clock.t += round;
    p.observe(rate, round);
  }
  t.ok(p.filled, 'three flat rounds end start-up');
  t.equal(p.gain(round), 0.75, 'the cycle starts by draining what start-up queued');
  clock.t += round;
  t.equal(p.gain(round), 1);
  clock.t += 6 * round;
  t.equal(p.gain(round), PACING_GAINS[0], 'then probes for more');
});

t.test('sends are spaced by their bytes over rate times gain', async (t) => {
  const clock = { t: 0 };
  const p = new Pacer(() => clock.t);
  t.equal(p.delay(), 0, 'nothing sent: no wait');
  p.sent(1000, 0, 50);
  t.equal(p.delay(), 0, 'no rate known: not paced');
  p.sent(1000, 10, 50); // start-up: 1000 / (10 × 2) = 50 ms
  t.equal(p.delay(), 50);
  p.sent(1000, 10, 50);
  t.equal(p.delay(), 100, 'a second send waits behind the first');
  clock.t += 100;
  t.equal(p.delay(), 0);
  clock.t += 1000;
  p.sent(1000, 10, 50);
  t.equal(p.delay(), 50 - PACE_SLACK_MS, 'idle time is not saved up as a burst, beyond the slack');
});

t.test('timers that fire late do not slow the pace', async (t) => {
  const clock = { t: 0 };
  const p = new Pacer(() => clock.t);
  const sends = 100;
  for (let i = 0; i < sends; i++) {
    clock.t += p.delay() + 1.5; // every timer a millisecond and a half late
    p.sent(1000, 10, 50); // start-up: 1000 / (10 × 2) = 50 ms each
  }
  // Without the slack the sends would be 51.5 ms apart: 3% below the pace, each round.
  const rate = (sends * 1000) / clock.t;
  t.ok(rate >= 0.99 * 20, `sends leave at the paced rate: ${rate.toFixed(2)} of 20 bytes/ms`);
  clock.t += p.delay() + 2 * PACE_SLACK_MS; // a stall longer than the slack
  p.sent(1000, 10, 50);
  t.equal(p.delay(), 50 - PACE_SLACK_MS, 'a stall is made up by the slack only');
});

t.test("start-up ends when a round's runs all come back late: a queue is forming at the bottleneck", async (t) => {
  const clock = { t: 0 };
  const p = new Pacer(() => clock.t);
  const round = 50;
  let rate = 100;
  const roundOf = (latencies: number[]): void => {
    rate *= 2; // the rate still grows: only the latency can end start-up here
    for (const l of latencies) {
      clock.t += round / latencies.length;
      p.observe(rate, round, l);
    }
  };
  roundOf([round + 20, round + 20]);
  t.notOk(p.filled, 'late runs in the first round trips are the first runs queueing behind each other');
  roundOf([round + 20, round + 20]);
  roundOf([round + 30, round + 1]);
  t.notOk(p.filled, 'one run on time in the round: the late ones were noise');
  roundOf([round + 3, round + 3]);
  t.notOk(p.filled, 'a few milliseconds above the round trip is noise');
  roundOf([round + 14, round + 13]);
  roundOf([round + 15, round + 14]); // the queue stays: the round these runs close is all late
  t.ok(p.filled, 'a round all a quarter of a round late ends start-up while the rate still grows');
  t.equal(p.gain(round), 0.75, 'and the cycle starts by draining');
});

t.test('late runs that arrive at one instant (the event loop stalled) do not end start-up', async (t) => {
  const clock = { t: 0 };
  const p = new Pacer(() => clock.t);
  const round = 50;
  let rate = 100;
  for (let i = 0; i < 3; i++) {
    clock.t += round;
    p.observe((rate *= 2), round, round + 1);
  }
  clock.t += 40; // a 40 ms stall: every run that arrived meanwhile is handled now, late
  for (let i = 0; i < 20; i++) p.observe(rate, round, round + 40 - i);
  clock.t += 1;
  p.observe(rate, round, round + 1); // the next run is on time again
  clock.t += 20;
  p.observe(rate, round, round + 2);
  t.notOk(p.filled, 'a stall is not a queue');
});

t.test('in start-up the window opens by less than the pacing rate; after it, by the same gain', async (t) => {
  const clock = { t: 0 };
  const p = new Pacer(() => clock.t);
  const round = 50;
  t.equal(p.gain(round), STARTUP_GAIN);
  t.equal(p.windowGain(round), STARTUP_WINDOW_GAIN, 'a window of twice the product would keep a product queued');
  t.ok(STARTUP_WINDOW_GAIN - 1 <= 0.5, 'at most half a product queued once the rate estimate reaches the link');
  for (let i = 0; i < 4; i++) {
    clock.t += round;
    p.observe(100, round);
  }
  t.ok(p.filled);
  for (let i = 0; i < PACING_GAINS.length; i++) {
    t.equal(p.windowGain(round), p.gain(round), `round ${i} of the cycle`);
    clock.t += round;
  }
});

t.test('runs sent before the first arrival do not end start-up, however late they come back', async (t) => {
  const clock = { t: 0 };
  const p = new Pacer(() => clock.t);
  const round = 85;
  // A cold connection: the first full batches left together at 0 and come back over 300 ms.
  clock.t = 90;
  p.observe(200, round, 90);
  for (let i = 0; i < 4; i++) {
    clock.t += round;
    p.observe(200 * (i + 2), round, clock.t); // each of them sent at 0
  }
  t.notOk(p.filled, 'still in start-up: those runs waited for TCP, not behind a queue at the bottleneck');
  // Runs sent since then, all a quarter of a round late: that is a queue.
  for (let i = 0; i < 3; i++) {
    clock.t += round;
    p.observe(200 * (i + 10), round, round + round / 4 + 5);
  }
  t.ok(p.filled, 'then late runs sent with a rate known end it');
});
