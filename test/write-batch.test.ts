import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { WriteBatcher } from '../src/store/write-batch';
import { fileOps } from '../src/store/fileops';
import { tempDir } from './helpers/temp-dir';

type Call = { buffers: Buffer[]; positions: number[]; done: (errors: number[]) => void };

function fakeOps(): {
  ops: { writeBatch: (...a: [number, Buffer[], number[], (e: number[]) => void]) => void };
  calls: Call[];
} {
  const calls: Call[] = [];
  return {
    calls,
    ops: { writeBatch: (_fd, buffers, positions, done) => void calls.push({ buffers, positions, done }) },
  };
}

t.test('writes started in one turn share one task; each settles with its own errno', async (t) => {
  const { ops, calls } = fakeOps();
  const batcher = new WriteBatcher(7, ops, (err) => new Error(`mapped ${err.code}`));
  const a = batcher.write(Buffer.alloc(4096), 0);
  const b = batcher.write(Buffer.alloc(4096), 8192);
  t.equal(calls.length, 0, 'nothing sent before the turn ends');
  await new Promise((r) => process.nextTick(r));
  t.equal(calls.length, 1, 'one task for both');
  t.same(calls[0].positions, [0, 8192]);
  let idle = false;
  const idleWait = batcher.idle().then(() => (idle = true));
  await Promise.resolve();
  t.notOk(idle, 'not idle while a task runs');
  calls[0].done([0, 28]);
  await a;
  await t.rejects(b, { message: 'mapped ENOSPC' });
  await idleWait;
  t.ok(idle);
});

t.test('a batch that reaches its byte budget leaves at once', async (t) => {
  const { ops, calls } = fakeOps();
  const batcher = new WriteBatcher(7, ops, (err) => err);
  const big = batcher.write(Buffer.alloc(1 << 20), 0);
  t.equal(calls.length, 1, 'sent without waiting for the turn to end');
  calls[0].done([0]);
  await big;
});

t.test('the addon writes every buffer at its position', { skip: fileOps ? false : 'no fileops addon' }, async (t) => {
  const file = path.join(tempDir(t), 'img');
  fs.writeFileSync(file, Buffer.alloc(65536));
  const fd = fs.openSync(file, 'r+');
  t.teardown(() => fs.closeSync(fd));
  const batcher = new WriteBatcher(fd, fileOps!, (err) => err);
  await Promise.all([batcher.write(Buffer.alloc(4096, 1), 4096), batcher.write(Buffer.alloc(100, 2), 60000)]);
  const image = fs.readFileSync(file);
  t.ok(image.subarray(4096, 8192).equals(Buffer.alloc(4096, 1)));
  t.ok(image.subarray(60000, 60100).equals(Buffer.alloc(100, 2)));
  t.ok(image.subarray(0, 4096).equals(Buffer.alloc(4096)));
  const bad = new WriteBatcher(-1, fileOps!, (err) => err);
  await t.rejects(bad.write(Buffer.alloc(10), 0), { code: 'EBADF' });
});
