/**
 * A source spaces a session's background batches at the rate its
 * destination asks: each batch reserves its bytes' time on the link after
 * what is reserved already, and may leave up to BURST_MS early.
 */
import t from 'tap';
import { BURST_MS, MIN_PACED_BYTES_PER_SECOND, SendPacer } from '../src/wire/send-pacer';

t.test('unpaced until a rate is asked, and again after a rate of 0', async (t) => {
  const now = 0;
  const pacer = new SendPacer(() => now);
  for (let i = 0; i < 4; i++) t.equal(pacer.reserve(1 << 20), 0);
  t.equal(pacer.bytesPerSecond, 0);
  pacer.setRate(1_000_000);
  pacer.reserve(1 << 20);
  t.ok(pacer.reserve(1 << 20) > 0, 'paced');
  pacer.setRate(0);
  t.equal(pacer.reserve(1 << 20), 0, 'unpaced again, with nothing owed');
});

t.test('batches are spaced by their bytes at the rate, each allowed BURST_MS early', async (t) => {
  let now = 0;
  const pacer = new SendPacer(() => now);
  pacer.setRate(1_000_000); // 1000 bytes per ms
  t.equal(pacer.reserve(20_000), 0, 'the first goes at once');
  t.equal(pacer.reserve(20_000), 20 - BURST_MS, 'the second after the first one’s 20 ms');
  t.equal(pacer.reserve(1_000), 40 - BURST_MS, 'a small one after both');
  now = 30;
  t.equal(pacer.reserve(1_000), 41 - BURST_MS - 30, 'the clock moved: the wait is what is left');
  now = 1000;
  t.equal(pacer.reserve(20_000), 0, 'after a pause it goes at once');
  t.equal(pacer.reserve(20_000), 20 - BURST_MS, 'and a pause earns no burst beyond BURST_MS');
});

t.test('a rate below the floor paces at the floor, so a fetch cannot be stalled by it', async (t) => {
  const pacer = new SendPacer(() => 0);
  pacer.setRate(1);
  t.equal(pacer.bytesPerSecond, MIN_PACED_BYTES_PER_SECOND);
});
