import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { getPriority, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import t from 'tap';
import { BlockStatus } from '../src/codec/batch';
import { xxh64 } from '../src/kernels/index';
import { CodecPool, PoolClosedError, QueueFullError, WorkerCrashError } from '../src/pool';
import { crashBlock } from './helpers/crashing-worker';
import { until } from './helpers/until';

const BS = 4096;
const TEXT = new Uint8Array(readFileSync(require.resolve('typescript/lib/typescript.js')).subarray(0, 1 << 20));

function batch(count: number, seed = 0): ArrayBuffer {
  const buf = new Uint8Array(count * BS);
  for (let i = 0; i < count; i++) {
    if (i % 4 === 0) continue; // zero block
    if (i % 4 === 3) buf.set(randomBytes(BS), i * BS);
    else buf.set(TEXT.subarray(((i + seed) * BS) % (TEXT.length - BS)).subarray(0, BS), i * BS);
  }
  return buf.buffer;
}

t.test('encode/decode round trip through the pool for every codec; buffers move', async (t) => {
  for (const codec of ['none', 'lz4', 'lz4-wasm', 'deflate']) {
    const pool = new CodecPool({ workers: 1, codec }); // one: each worker's start costs seconds on a loaded machine
    const input = batch(64);
    const copy = new Uint8Array(input).slice();
    const enc = await pool.encode(input, BS);
    t.equal(input.byteLength, 0, `${codec}: input was transferred, not copied`);
    t.equal(enc.payload.buffer.byteLength, 64 * BS, `${codec}: the input buffer came back holding the payload`);
    t.equal(enc.entries.length, 64);
    t.equal(enc.entries[5].checksum, xxh64(copy.subarray(5 * BS, 6 * BS)), `${codec}: checksum`);
    const payloadBytes = enc.payload.byteLength;
    const payloadBuffer = enc.payload.buffer;
    const dec = await pool.decode(enc);
    t.equal(payloadBuffer.byteLength, 0, `${codec}: payload transferred (${payloadBytes} bytes)`);
    t.equal(dec.blocks.buffer.byteLength, 64 * BS, `${codec}: blocks came back in the recycled buffer`);
    t.same(dec.failed, [], `${codec}: no failures`);
    t.ok(Buffer.from(dec.blocks).equals(copy), `${codec}: bytes round-trip`);
    // A payload in a buffer too small for the blocks, at an offset: blocks come back in a new buffer.
    const enc2 = await pool.encode(copy.slice().buffer, BS);
    const shifted = new Uint8Array(enc2.payload.length + 10);
    shifted.set(enc2.payload, 10);
    const dec2 = await pool.decode({ ...enc2, payload: shifted.subarray(10) });
    t.ok(Buffer.from(dec2.blocks).equals(copy), `${codec}: payload at an offset in a small buffer`);
    await pool.close();
  }
});

t.test('decode reports the failing block by index', async (t) => {
  const pool = new CodecPool({ workers: 1, codec: 'lz4' });
  const enc = await pool.encode(batch(16), BS);
  enc.entries[7].checksum ^= 0xffn;
  const dec = await pool.decode(enc);
  t.same(dec.failed, [7]);
  t.equal(dec.status[7], BlockStatus.ChecksumMismatch);
  await pool.close();
});

t.test('hash returns checksums and zero flags', async (t) => {
  const pool = new CodecPool({ workers: 1 });
  const input = batch(8);
  const copy = new Uint8Array(input).slice();
  const h = await pool.hash(input, BS);
  t.equal(h.blocks.byteLength, 8 * BS, 'input handed back');
  t.same(h.zero, [true, false, false, false, true, false, false, false]);
  t.same(
    h.checksums,
    Array.from({ length: 8 }, (_, i) => xxh64(copy.subarray(i * BS, (i + 1) * BS))),
  );
  await pool.close();
});

t.test('urgent tasks run before queued background batches; the queue is bounded', async (t) => {
  // One worker, slow tasks (deflate level 9 of 4 MiB) so that the queue fills.
  // Inline urgent tasks off: this is about the queue.
  const pool = new CodecPool({
    workers: 1,
    maxQueued: 3,
    maxUrgentQueued: 2,
    codec: 'deflate',
    level: 9,
    inlineUrgentBytes: 0,
  });
  const order: string[] = [];
  const track = (name: string, p: Promise<unknown>) =>
    p.then(() => {
      order.push(name);
    });
  const running = [track('bg0', pool.encode(batch(1024, 0), BS))];
  // bg0 may be waiting for the worker to start; either way at most 3 wait.
  for (let i = 1; i <= 3; i++) running.push(track(`bg${i}`, pool.encode(batch(1024, i), BS)));
  const waiting = pool.queued.background;
  t.ok(waiting >= 3, `${waiting} background tasks waiting`);
  t.ok(pool.isFull, 'pool reports full');
  await t.rejects(pool.encode(batch(4), BS), QueueFullError, 'a fifth background task is refused');
  await t.rejects(pool.encode(batch(4), BS), { name: 'QueueFullError', code: 'FERRY_POOL_QUEUE_FULL' });
  running.push(track('urgent', pool.encode(batch(1, 9), BS, { urgent: true })));
  let notFullAt = -1;
  const notFull = pool.whenNotFull().then(() => (notFullAt = order.length));
  await Promise.all(running);
  await notFull;
  const urgentAt = order.indexOf('urgent');
  t.ok(urgentAt <= 1, `urgent finished first or right after the running batch: ${order.join(' ')}`);
  t.ok(order.indexOf('bg3') > urgentAt && order.indexOf('bg2') > urgentAt, 'after every queued background batch');
  t.same(
    order.filter((n) => n.startsWith('bg')),
    ['bg0', 'bg1', 'bg2', 'bg3'],
    'background batches in FIFO order',
  );
  t.ok(notFullAt >= 0 && notFullAt <= 2, `whenNotFull resolved once a task left the queue (after ${notFullAt})`);
  t.notOk(pool.isFull);
  await pool.close();
});

t.test('many tasks waiting for room: no listener warning, all go on, close releases them', async (t) => {
  const pool = new CodecPool({ workers: 1, maxQueued: 2, codec: 'deflate', level: 9, inlineUrgentBytes: 0 });
  const warnings: Error[] = [];
  const onWarning = (w: Error): void => void warnings.push(w);
  process.on('warning', onWarning);
  t.teardown(() => void process.off('warning', onWarning));
  const running = [0, 1, 2].map((i) => pool.encode(batch(256, i), BS));
  t.ok(pool.isFull);
  // Fifty batches in flight each wait for room, as a destination with no rate limit has.
  const waiters = Array.from({ length: 50 }, async (_, i) => {
    for (;;) {
      await pool.whenNotFull();
      try {
        return await pool.encode(batch(4, 100 + i), BS);
      } catch (e) {
        if (!(e instanceof QueueFullError)) throw e;
      }
    }
  });
  const results = await Promise.all([...running, ...waiters]);
  t.equal(results.length, 53, 'every waiting task ran');
  await new Promise((r) => setImmediate(r)); // warnings are emitted on the next tick
  t.same(
    warnings.map((w) => w.name),
    [],
    'no MaxListenersExceededWarning (or any other)',
  );

  // Waiters still waiting when the pool closes are woken and refused, not left hanging.
  const more = [0, 1, 2].map((i) => pool.encode(batch(256, 200 + i), BS).catch(() => 'refused'));
  t.ok(pool.isFull);
  const stranded = pool.whenNotFull().then(() => 'woken');
  const closed = pool.close({ cancelQueued: true });
  t.equal(await stranded, 'woken');
  await Promise.all(more);
  await closed;
  await t.rejects(pool.encode(batch(1), BS), PoolClosedError);
});

t.test('a small urgent task runs on the calling thread at once; a larger one waits for a worker', async (t) => {
  const pool = new CodecPool({ workers: 1, codec: 'deflate', level: 9, inlineUrgentBytes: 4 * BS });
  const order: string[] = [];
  const track = (name: string, p: Promise<unknown>) => p.then(() => void order.push(name));
  const background = track('background', pool.encode(batch(1024, 1), BS));
  const input = batch(4, 2);
  const copy = new Uint8Array(input).slice();
  const small = pool.encode(input, BS, { urgent: true });
  const large = track('large urgent', pool.encode(batch(8, 3), BS, { urgent: true }));
  const enc = await small;
  order.push('small urgent');
  t.equal(order[0], 'small urgent', 'done before the busy worker finished its batch');
  t.equal(enc.entries[1].checksum, xxh64(copy.subarray(BS, 2 * BS)), 'same result as a worker gives');
  const dec = await pool.decode(enc, { urgent: true });
  t.same(dec.failed, [], 'decoded inline and verified');
  t.same(new Uint8Array(dec.blocks.buffer, dec.blocks.byteOffset, 4 * BS), copy, 'round trip');
  await Promise.all([background, large]);
  t.same(order.slice(1), ['background', 'large urgent'], 'the larger urgent task waited for the worker');
  await pool.close();
});

t.test('a crashed worker fails its task with a clear error and is replaced', async (t) => {
  // The test worker exits mid-task on a marked block; urgent tasks all go to
  // a worker (never inline), so the crash jumps the queue of background work.
  const workerModule = join(__dirname, 'helpers', 'crashing-worker.js');
  const pool = new CodecPool({ workers: 2, codec: 'lz4', inlineUrgentBytes: 0, workerModule });
  const crash = () => pool.encode(crashBlock(BS, 70), BS, { urgent: true });
  const before = await pool.encode(batch(8), BS);
  t.equal(before.entries.length, 8);
  const queuedBehind = Array.from({ length: 6 }, (_, i) => pool.encode(batch(16, i), BS));
  await t.rejects(crash(), {
    name: 'WorkerCrashError',
    message: /worker crashed during encode of 1 blocks \(worker exited with code: 70\)/,
  });
  t.ok(
    (await Promise.all(queuedBehind)).every((r) => r.entries.length === 16),
    'other tasks still complete',
  );
  // Both workers crash in turn; the pool keeps serving.
  await t.rejects(crash(), WorkerCrashError);
  await t.rejects(crash(), WorkerCrashError);
  const after = await pool.decode(await pool.encode(batch(8), BS));
  t.same(after.failed, [], 'replacement workers decode');
  await pool.close();
});

t.test(
  'workers that cannot start fail the queued tasks with a clear error, and the next task starts new ones',
  async (t) => {
    // Piscina does not replace a worker that failed while starting: without the pool's own
    // check these tasks waited for ever, and the failure, emitted with no listener, ended
    // the process.
    const marker = join(mkdtempSync(join(tmpdir(), 'ferry-pool-')), 'fail');
    writeFileSync(marker, '');
    process.env.FERRY_TEST_WORKER_START_MARKER = marker;
    t.teardown(() => {
      delete process.env.FERRY_TEST_WORKER_START_MARKER;
      rmSync(dirname(marker), { recursive: true, force: true });
    });
    const workerModule = join(__dirname, 'helpers', 'failing-start-worker.js');
    const reported: Array<{ err: string }> = [];
    const pool = new CodecPool({
      workers: 2,
      codec: 'lz4',
      inlineUrgentBytes: 0,
      workerModule,
      log: { error: (fields: { err: string }) => void reported.push(fields) },
    });
    const tasks = Array.from({ length: 5 }, (_, i) => pool.encode(batch(4, i), BS));
    // Every task settles, naming the cause: those sent to a failing worker with its error, those
    // still queued when the pool gave up on these workers as a WorkerCrashError.
    const results = await Promise.allSettled(tasks);
    for (const r of results) {
      t.equal(r.status, 'rejected');
      if (r.status === 'rejected') t.match((r.reason as Error).message, /this worker cannot start/);
    }
    t.ok(
      results.some((r) => r.status === 'rejected' && (r.reason as Error).name === 'WorkerCrashError'),
      'the tasks still queued failed as a crash of the pool',
    );
    t.ok(reported.length >= 1, `the failure was reported (${reported.length} times)`);
    t.match(reported[0].err, /this worker cannot start/);
    rmSync(marker);
    const after = await pool.decode(await pool.encode(batch(8), BS));
    t.same(after.failed, [], 'the next task started workers that run');
    t.equal(pool.runningWorkers, 2);
    await pool.close();
  },
);

t.test('close finishes queued work by default, cancels it on request, then refuses', async (t) => {
  // Small tasks: close waits for them, and a worker starved by a loaded machine must still
  // finish them within the pool's close timeout.
  const pool = new CodecPool({ workers: 1, maxQueued: 8, codec: 'deflate', level: 9 });
  const tasks = Array.from({ length: 4 }, (_, i) => pool.encode(batch(16, i), BS));
  await pool.close();
  const results = await Promise.allSettled(tasks);
  t.ok(
    results.every((r) => r.status === 'fulfilled'),
    'all queued tasks finished',
  );
  await t.rejects(pool.encode(batch(1), BS), PoolClosedError);

  const pool2 = new CodecPool({ workers: 1, maxQueued: 8, codec: 'deflate', level: 9 });
  const first = pool2.encode(batch(16), BS);
  await until(() => pool2.queued.background === 0, 'the worker has taken the first task');
  const queued = Promise.allSettled(Array.from({ length: 4 }, (_, i) => pool2.encode(batch(16, i), BS)));
  const firstDone = Promise.allSettled([first]);
  // One worker holds one task: at least three wait (four if the first is still running).
  const waitingAtClose = pool2.queued.background;
  t.ok(waitingAtClose >= 3, `${waitingAtClose} tasks waiting at close`);
  await pool2.close({ cancelQueued: true });
  const settled = await queued;
  const cancelled = settled.filter((r) => r.status === 'rejected' && (r.reason as Error).name === 'PoolClosedError');
  t.equal(cancelled.length, waitingAtClose, 'every waiting task cancelled with PoolClosedError');
  t.equal(
    settled.filter((r) => r.status === 'fulfilled').length,
    4 - waitingAtClose,
    'a task already running finished',
  );
  t.ok((await firstDone)[0].status === 'fulfilled', 'the running task finished');
});

t.test('the workers start with the first task, stop when idle, and come back for the next', async (t) => {
  const pool = new CodecPool({ workers: 2, codec: 'lz4', idleWorkerMs: 20 });
  t.equal(pool.runningWorkers, 0, 'no worker before the first task');
  const input = batch(64);
  const copy = new Uint8Array(input).slice();
  const enc = pool.encode(input, BS);
  t.equal(pool.runningWorkers, 2, 'a background task starts them');
  t.equal(pool.queued.background, 0, 'and goes to one at once, not to the queue');
  const dec = await pool.decode(await enc);
  t.same(new Uint8Array(dec.blocks.buffer, dec.blocks.byteOffset, 64 * BS), copy, 'round trip');
  await until(() => pool.runningWorkers === 0, 'the idle workers have stopped');
  const again = await Promise.all([0, 1, 2, 3].map((i) => pool.encode(batch(64, i), BS)));
  t.ok(
    again.every((r) => r.entries.length === 64),
    'workers came back for the next tasks',
  );
  await pool.close();
  t.equal(pool.runningWorkers, 0);
});

t.test('an urgent task after the workers stopped runs at once on the calling thread', async (t) => {
  const pool = new CodecPool({ workers: 1, codec: 'lz4', idleWorkerMs: 20 });
  const input = batch(64);
  const copy = new Uint8Array(input).slice();
  const encoded = await pool.encode(input, BS);
  await until(() => pool.runningWorkers === 0, 'the idle worker has stopped');
  t.ok(64 * BS > pool.inlineUrgentBytes, 'larger than what always runs inline');
  const started = pool.decode(encoded, { urgent: true });
  t.equal(pool.runningWorkers, 0, 'no worker started for it');
  const dec = await started;
  t.same(dec.failed, [], 'decoded and verified');
  t.same(new Uint8Array(dec.blocks.buffer, dec.blocks.byteOffset, 64 * BS), copy, 'round trip');
  // Without inline tasks, an urgent task starts the workers and completes.
  const strict = new CodecPool({ workers: 1, codec: 'lz4', inlineUrgentBytes: 0 });
  const urgent = strict.encode(batch(4), BS, { urgent: true });
  t.equal(strict.runningWorkers, 1, 'the worker starts for it');
  t.equal((await urgent).entries.length, 4);
  await Promise.all([pool.close(), strict.close()]);
});

t.test('warm() starts the workers before the first task; unused, they stop', async (t) => {
  const pool = new CodecPool({ workers: 2, codec: 'lz4', idleWorkerMs: 20 });
  pool.warm();
  t.equal(pool.runningWorkers, 2);
  await until(() => pool.runningWorkers === 0, 'the unused workers have stopped');
  pool.warm();
  t.equal((await pool.encode(batch(8), BS)).entries.length, 8, 'warmed again, they take the task');
  await pool.close();
  pool.warm();
  t.equal(pool.runningWorkers, 0, 'a closed pool starts nothing');
});

/** The niceness of each of this process's threads (Linux: per thread, field 19 of its stat). */
function threadNiceness(): number[] {
  return readdirSync('/proc/self/task').map((tid) =>
    Number(readFileSync(`/proc/self/task/${tid}/stat`, 'utf8').split(') ')[1].split(' ')[16]),
  );
}

t.test('the workers run at the niceness asked for; the main thread keeps its own', async (t) => {
  if (process.platform !== 'linux') {
    t.plan(0, 'skipped: per-thread niceness is read from /proc (Linux)');
    return;
  }
  const main = getPriority(); // on Linux, of the calling thread
  t.notOk(threadNiceness().includes(7), 'no thread at 7 before');
  const pool = new CodecPool({ workers: 2, codec: 'lz4', workerNice: 7 });
  t.equal((await pool.encode(batch(8), BS)).entries.length, 8);
  await until(() => threadNiceness().filter((n) => n === 7).length === 2, 'both workers at 7');
  t.equal(getPriority(), main, 'the main thread keeps its niceness');
  await pool.close();
});

t.test('close waits for workers still stopping', async (t) => {
  const pool = new CodecPool({ workers: 1, codec: 'lz4', idleWorkerMs: 0 });
  await pool.encode(batch(8), BS);
  await until(() => pool.runningWorkers === 0, 'the idle worker is stopping');
  await pool.close();
  await t.rejects(pool.encode(batch(1), BS), PoolClosedError);
});

t.test('options are validated', async (t) => {
  t.throws(() => new CodecPool({ idleWorkerMs: -1 }), /idleWorkerMs must be a number >= 0 or Infinity \(got -1\)/);
  t.throws(() => new CodecPool({ idleWorkerMs: NaN }), /idleWorkerMs must be/);
  t.throws(() => new CodecPool({ codec: 'zstd' }), /unknown codec "zstd"/);
  t.throws(() => new CodecPool({ workers: 0 }), /workers must be an integer >= 1 \(got 0\)/);
  t.throws(() => new CodecPool({ pipelineDepth: 0 }), /pipelineDepth must be an integer >= 1/);
  t.throws(() => new CodecPool({ workerNice: 20 }), /workerNice must be an integer from 0 to 19 \(got 20\)/);
  t.throws(() => new CodecPool({ workerNice: -1 }), /workerNice must be an integer from 0 to 19/);
  const pool = new CodecPool({ workers: 1 });
  await t.rejects(pool.encode(new ArrayBuffer(4096), 1000), /blockSize must be a power of two/);
  await pool.close();
});
