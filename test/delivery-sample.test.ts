import t from 'tap';
import { IDLE_READ_MS, sampleOf, sampleStart } from '../src/migrate/delivery-sample';

const RATE = 12_500; // bytes/ms: 100 Mbit/s
const BASE = 52;

/**
 * A link that delivers RATE bytes/ms without a break, read by a process that reads whatever
 * arrived whenever it gets round to it: the count, dated by the last read, at each read time.
 */
function readAt(ms: number): { bytes: number; at: number } {
  return { bytes: Math.round(ms * RATE), at: ms };
}

t.test('a count taken while the process was busy does not make the link look faster', async (t) => {
  // Last read at 1000; busy until the send at 1050 (625 KB arrive unread); the run arrives
  // BASE later and is seen in the read at 1102, which takes everything up to then.
  const atSend = readAt(1000);
  const sentAt = 1050;
  const arrival = readAt(sentAt + BASE);
  const start = sampleStart(atSend, sentAt, BASE);
  const s = sampleOf(start, arrival)!;
  const rate = s.bytes / s.intervalMs;
  t.ok(Math.abs(rate - RATE) < 1, `the link's rate, ${rate.toFixed(0)} bytes/ms`);
  // What counting from the send, over the latency, would have said:
  const naive = (arrival.bytes - atSend.bytes) / BASE;
  t.ok(naive > 1.9 * RATE, `the send-time count read ${naive.toFixed(0)} bytes/ms (nearly twice the link)`);
});

t.test('after an idle link the sample starts at the send', async (t) => {
  const atSend = { bytes: 5_000_000, at: 1000 };
  const sentAt = 1000 + IDLE_READ_MS + 1;
  const start = sampleStart(atSend, sentAt, BASE);
  t.equal(start.at, sentAt, 'nothing was waiting to be read: the send dates the count');
  const s = sampleOf(start, { bytes: 5_000_000 + 60_000, at: sentAt + BASE })!;
  t.equal(s.intervalMs, BASE, 'so a paused copy does not measure its pause as a slow link');
  const busy = sampleStart(atSend, 1000 + IDLE_READ_MS - 1, BASE);
  t.equal(busy.at, 1000, 'a shorter gap is a busy process: the last read dates the count');
  t.equal(sampleStart(atSend, 999, BASE).at, 999, 'a read dated after the send is dated by the send');
});

t.test('counts that cannot be compared give no sample', async (t) => {
  const start = { bytes: 1_000_000, at: 100 };
  t.equal(sampleOf(start, { bytes: 10_000, at: 200 }), null, 'a new upstream counts from zero');
  t.equal(sampleOf(start, { bytes: 1_000_000, at: 200 }), null, 'nothing read since');
  t.equal(sampleOf(start, { bytes: 1_100_000, at: 100 }), null, 'no time between the reads');
  t.same(sampleOf(start, { bytes: 1_100_000, at: 150 }), { bytes: 100_000, intervalMs: 50 });
});
