import t from 'tap';
import { LargeBufferPool, sizeClass } from '../src/nbd/buffer-pool';

const KiB = 1024;

t.test('size classes: whole pages, at most a quarter more than asked, four per power of two', async (t) => {
  let classes = 0;
  let last = 0;
  const wrong: string[] = [];
  for (let length = 4 * KiB; length <= 4096 * KiB; length += 512) {
    const size = sizeClass(length);
    if (size < length || size % 4096 !== 0) wrong.push(`${length} → ${size}: too small or not whole pages`);
    if (length > 16 * KiB && size > length * 1.25 + 4096) wrong.push(`${length} → ${size}: more than a quarter more`);
    if (size < last) wrong.push(`${length} → ${size}: smaller than the class before`);
    if (size !== last) classes++;
    last = size;
  }
  t.same(wrong, []);
  // 4 KiB..16 KiB in 4 KiB steps (4), then 4 per octave from 16 KiB to 4 MiB (8 octaves).
  t.equal(classes, 4 + 8 * 4);
  t.equal(sizeClass(256 * KiB), 256 * KiB, 'a power of two is its own class');
  t.equal(sizeClass(256 * KiB + 8), 320 * KiB, 'a reply chunk of 256 KiB (8 bytes more) is one class up');
});

t.test('a buffer given back serves every length of its class, and its bytes are not cleared', async (t) => {
  const pool = new LargeBufferPool(4096, 1 << 20);
  const a = pool.take(230 * KiB);
  t.equal(a.length, 230 * KiB);
  t.equal(a.buffer.byteLength, 256 * KiB);
  a.fill(0xee);
  pool.give(a);
  t.equal(pool.pooledBytes, 256 * KiB);
  const b = pool.take(250 * KiB);
  t.equal(b.buffer, a.buffer, 'the same memory, for another length of the class');
  t.equal(b.length, 250 * KiB);
  t.equal(b[0], 0xee, 'take() promises nothing about the contents');
  t.equal(pool.pooledBytes, 0);
  const c = pool.take(250 * KiB);
  t.not(c.buffer, b.buffer, 'memory in use is never handed out twice');
  const d = pool.take(257 * KiB);
  t.equal(d.buffer.byteLength, 320 * KiB, 'another class, new memory');
});

t.test('only what take() could have made is kept', async (t) => {
  const pool = new LargeBufferPool(4096, 1 << 20);
  pool.give(Buffer.allocUnsafe(100)); // a slice of Node's shared slab
  pool.give(Buffer.allocUnsafe(8 * KiB).subarray(4 * KiB)); // a view past the start
  pool.give(Buffer.allocUnsafe(64 * KiB).subarray(0, 8 * KiB)); // a view into a larger buffer
  pool.give(Buffer.allocUnsafe(9 * KiB)); // memory of no class's size
  t.equal(pool.pooledBytes, 0);
  const full = new LargeBufferPool(4096, 0);
  const slab = Buffer.allocUnsafe(100);
  const larger = Buffer.allocUnsafe(64 * KiB);
  full.give(slab);
  full.give(larger.subarray(0, 8 * KiB));
  t.ok(slab.buffer.byteLength > 0 && larger.length === 64 * KiB, 'memory the pool did not make is never released');
  const own = Buffer.allocUnsafe(64 * KiB); // memory of its own, of a class's size
  pool.give(own);
  t.equal(pool.pooledBytes, 64 * KiB);
  t.equal(pool.take(60 * KiB).buffer, own.buffer);
});

t.test('the byte budget holds', async (t) => {
  const pool = new LargeBufferPool(4096, 600 * KiB);
  const taken = [pool.take(256 * KiB), pool.take(256 * KiB), pool.take(256 * KiB)];
  for (const b of taken) pool.give(b);
  t.equal(pool.pooledBytes, 512 * KiB, 'the third is not kept');
  t.equal(taken[2].buffer.byteLength, 0, 'its memory is released at once: the buffer is detached');
  t.equal(taken[0].buffer.byteLength, 256 * KiB, 'kept memory stays whole');
  const small = pool.take(1000);
  t.equal(small.length, 1000, 'below the pool minimum: a plain buffer');
  pool.give(small);
  t.equal(pool.pooledBytes, 512 * KiB);
});
