import t from 'tap';
import { Backoff, Gate, pause, retry } from '../src/util/backoff';

t.test('backoff grows to its ceiling and starts over', async (t) => {
  const b = new Backoff({ minMs: 10, maxMs: 70 });
  t.same([b.next(), b.next(), b.next(), b.next(), b.next()], [10, 20, 40, 70, 70]);
  t.equal(b.attempts, 5);
  b.reset();
  t.equal(b.next(), 10);
});

t.test('retry returns the first success and reports each failure', async (t) => {
  const seen: number[] = [];
  const value = await retry(
    async (n) => {
      if (n < 3) throw new Error(`fail ${n}`);
      return 'ok';
    },
    { minMs: 1, maxMs: 2, onRetry: (_e, n) => seen.push(n) },
  );
  t.equal(value, 'ok');
  t.same(seen, [0, 1, 2]);
});

t.test('retry gives up on a non-retryable error', async (t) => {
  let calls = 0;
  await t.rejects(
    retry(
      async () => {
        calls++;
        throw new Error('fatal');
      },
      { minMs: 1, maxMs: 1, retryable: (e) => (e as Error).message !== 'fatal' },
    ),
    { message: 'fatal' },
  );
  t.equal(calls, 1);
});

t.test('retry stops when its owner aborts, without waiting out the delay', async (t) => {
  const controller = new AbortController();
  let calls = 0;
  const running = retry(
    async () => {
      calls++;
      throw new Error('down');
    },
    // An hour-long delay: the test can only end because the abort ends the wait.
    { minMs: 3_600_000, maxMs: 3_600_000, signal: controller.signal, onRetry: () => controller.abort() },
  );
  await t.rejects(running, { message: 'down' });
  t.equal(calls, 1);
});

t.test('pause resolves false at once on an aborted signal', async (t) => {
  const controller = new AbortController();
  controller.abort();
  t.equal(await pause(3_600_000, controller.signal), false);
  t.equal(await pause(0), true);
});

t.test('gate: waiters resolve when it opens and reject when it closes', async (t) => {
  const gate = new Gate();
  let opened = false;
  const waiting = gate.wait().then(() => (opened = true));
  t.equal(opened, false);
  gate.open();
  await waiting;
  t.equal(opened, true);
  await gate.wait(); // open: at once
  gate.shut();
  const rejected = gate.wait();
  gate.close(new Error('closed'));
  await t.rejects(rejected, { message: 'closed' });
  await t.rejects(gate.wait(), { message: 'closed' });
  gate.open();
  t.equal(gate.isOpen, false);
});
