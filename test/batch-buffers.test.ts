import t from 'tap';
import { BatchBuffers } from '../src/wire/batch-buffers';
import { freeArrayBuffer } from '../src/util/free-array-buffer';

t.test('buffers beyond the kept number are released at once; kept ones are reused whole', async (t) => {
  const buffers = new BatchBuffers(2);
  const taken = [buffers.take(4096), buffers.take(4096), buffers.take(4096)];
  new Uint8Array(taken[0]).fill(7);
  for (const b of taken) buffers.give(b);
  t.equal(taken[2].byteLength, 0, 'the third is detached: its memory is freed');
  t.equal(taken[0].byteLength, 4096);
  const again = buffers.take(4096);
  t.ok(again === taken[0] || again === taken[1], 'a kept buffer is handed out again');
  t.equal(buffers.take(8192).byteLength, 8192, 'another size: new memory');
});

t.test('a detached buffer is neither kept nor released twice', async (t) => {
  const buffers = new BatchBuffers(1);
  const b = buffers.take(4096);
  freeArrayBuffer(b);
  t.equal(b.byteLength, 0);
  t.doesNotThrow(() => freeArrayBuffer(b));
  buffers.give(b);
  t.not(buffers.take(4096), b, 'a detached buffer is not pooled');
});
