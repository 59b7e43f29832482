import t from 'tap';
import { BatchBuffers } from '../src/wire/batch-buffers';
import { freeArrayBuffer } from '../src/util/free-array-buffer';

t.test('buffers beyond the byte budget are released at once; kept ones are reused whole', async (t) => {
  const buffers = new BatchBuffers(8192);
  const taken = [buffers.take(4096), buffers.take(4096), buffers.take(4096)];
  new Uint8Array(taken[0]).fill(7);
  for (const b of taken) buffers.give(b);
  t.equal(buffers.keptBytes, 8192);
  t.equal(taken[2].byteLength, 0, 'the third is detached: its memory is freed');
  t.equal(taken[0].byteLength, 4096);
  const again = buffers.take(4096);
  t.ok(again === taken[0] || again === taken[1], 'a kept buffer is handed out again');
  t.equal(buffers.keptBytes, 4096);
  t.equal(buffers.take(8192).byteLength, 8192, 'another size: new memory');
});

t.test('the budget counts every size together', async (t) => {
  const buffers = new BatchBuffers(64 * 1024);
  const sizes = [4096, 8192, 12288, 16384, 20480, 24576];
  const taken = sizes.map((n) => buffers.take(n));
  for (const b of taken) buffers.give(b);
  t.ok(buffers.keptBytes <= 64 * 1024, `kept ${buffers.keptBytes} bytes`);
  t.equal(buffers.keptBytes, 4096 + 8192 + 12288 + 16384 + 20480, 'the sizes that fit are kept');
  t.equal(taken[5].byteLength, 0, 'the one that did not fit is freed');
});

t.test('a detached buffer is neither kept nor released twice', async (t) => {
  const buffers = new BatchBuffers(1 << 20);
  const b = buffers.take(4096);
  freeArrayBuffer(b);
  t.equal(b.byteLength, 0);
  t.doesNotThrow(() => freeArrayBuffer(b));
  buffers.give(b);
  t.equal(buffers.keptBytes, 0, 'a detached buffer is not pooled');
});
