import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import t from 'tap';
import { BlockEncoding, BlockStatus, checkBlockSize, payloadOffsets } from '../src/codec/batch';
import { BatchCodec, type BatchColumns } from '../src/codec/batch-codec';
import { codecNames, createCodec } from '../src/codec/registry';
import { xxh64 } from '../src/kernels/index';
import { Kernels } from '../src/kernels/kernel-loader';

const BS = 4096;
const TEXT = new Uint8Array(readFileSync(require.resolve('typescript/lib/typescript.js')).subarray(0, 1 << 20));

function prng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
}

/** 64 blocks: zeros, text, random, a block that is zero but for its last byte, repeats. */
function mixedBatch(count = 64): Uint8Array {
  const buf = new Uint8Array(count * BS);
  for (let i = 0; i < count; i++) {
    const block = buf.subarray(i * BS, (i + 1) * BS);
    switch (i % 5) {
      case 0:
        break;
      case 1:
        block.set(TEXT.subarray(i * BS, (i + 1) * BS));
        break;
      case 2:
        block.set(randomBytes(BS));
        break;
      case 3:
        block[BS - 1] = 1;
        break;
      case 4:
        block.fill(i);
        break;
    }
  }
  return buf;
}

function clone(cols: BatchColumns): BatchColumns {
  return { encodings: cols.encodings.slice(), lengths: cols.lengths.slice(), checksums: cols.checksums.slice() };
}

t.test('every codec round-trips a mixed batch and tags blocks correctly', async (t) => {
  const input = mixedBatch();
  t.same(codecNames().sort(), ['deflate', 'lz4', 'lz4-wasm', 'none']);
  for (const name of codecNames()) {
    const codec = new BatchCodec({ codec: name });
    const enc = codec.encode(input, BS);
    t.equal(enc.encodings.length, 64, `${name}: 64 entries`);
    t.equal(
      enc.payload.length,
      payloadOffsets(Array.from(enc.lengths, (length) => ({ encoding: 0, checksum: 0n, length }))).at(-1),
    );
    for (let i = 0; i < 64; i++) {
      const block = input.subarray(i * BS, (i + 1) * BS);
      if (enc.checksums[i] !== xxh64(block)) t.fail(`${name}: checksum of block ${i}`);
      if (i % 5 === 0 && enc.encodings[i] !== BlockEncoding.Zero) t.fail(`${name}: block ${i} should be zero`);
      if (i % 5 === 2 && enc.encodings[i] !== BlockEncoding.Raw) t.fail(`${name}: random block ${i} should be raw`);
      if (i % 5 === 3 && enc.encodings[i] === BlockEncoding.Zero) t.fail(`${name}: block ${i} is not all zero`);
    }
    if (name !== 'none') {
      t.ok(enc.payload.length < input.length / 2, `${name}: compresses (${enc.payload.length} bytes)`);
      t.ok(enc.encodings.includes(codec.codec.encoding), `${name}: uses its encoding`);
    } else {
      t.notOk(enc.encodings.includes(BlockEncoding.Lz4), 'none: never compresses');
    }
    const dec = codec.decode(enc.payload, enc, BS);
    t.equal(dec.failed, 0, `${name}: no failures`);
    t.ok(Buffer.from(dec.blocks).equals(input), `${name}: bytes round-trip`);
  }
});

t.test('batches decode across codecs (lz4 ↔ lz4-wasm, deflate by an lz4 pool)', async (t) => {
  const input = mixedBatch(32);
  const codecs = Object.fromEntries(codecNames().map((n) => [n, new BatchCodec({ codec: n })]));
  for (const from of codecNames()) {
    const enc = codecs[from].encode(input, BS);
    for (const to of codecNames()) {
      const dec = codecs[to].decode(enc.payload, clone(enc), BS);
      t.equal(dec.failed, 0, `${from} → ${to}`);
      if (!Buffer.from(dec.blocks).equals(input)) t.fail(`${from} → ${to}: bytes differ`);
    }
  }
});

t.test('a corrupted block is reported by index; the others decode', async (t) => {
  const input = mixedBatch();
  for (const name of codecNames()) {
    const codec = new BatchCodec({ codec: name });
    const enc = codec.encode(input, BS);
    const offsets = payloadOffsets(Array.from(enc.lengths, (length) => ({ encoding: 0, checksum: 0n, length })));
    const victim = 6; // text or raw block with a payload
    t.ok(enc.lengths[victim] > 0);
    const payload = enc.payload.slice();
    payload[offsets[victim] + Math.floor(enc.lengths[victim] / 2)] ^= 0x40;
    const cols = clone(enc);
    cols.checksums[10] ^= 1n; // a zero block with a wrong checksum
    const dec = codec.decode(payload, cols, BS);
    t.equal(dec.status[10], BlockStatus.ChecksumMismatch, `${name}: block 10 checksum`);
    t.not(dec.status[victim], BlockStatus.Ok, `${name}: block ${victim} fails`);
    t.equal(dec.failed, 2, `${name}: exactly two failures`);
    for (let i = 0; i < 64; i++) {
      if (i === victim || i === 10) continue;
      if (!Buffer.from(dec.blocks.subarray(i * BS, (i + 1) * BS)).equals(input.subarray(i * BS, (i + 1) * BS))) {
        t.fail(`${name}: block ${i} damaged by its neighbour`);
      }
    }
  }
});

t.test('truncated payload, wrong lengths and unknown encodings fail cleanly', async (t) => {
  const codec = new BatchCodec({ codec: 'lz4' });
  const input = mixedBatch(10);
  const enc = codec.encode(input, BS);
  const cut = codec.decode(enc.payload.subarray(0, enc.payload.length - 100), clone(enc), BS);
  t.equal(cut.status[9], BlockStatus.Malformed, 'last block beyond the payload');
  t.equal(cut.status[0], BlockStatus.Ok);
  const cols = clone(enc);
  cols.encodings[2] = 9;
  const unknown = codec.decode(enc.payload, cols, BS);
  t.equal(unknown.status[2], BlockStatus.UnknownEncoding);
  t.equal(unknown.failed, 1);
  const lied = clone(enc);
  lied.lengths[0] = 5; // a zero block with a payload
  t.equal(codec.decode(enc.payload, lied, BS).status[0], BlockStatus.Malformed);
  const huge = clone(enc);
  huge.lengths[1] = 0xffffffff;
  const h = codec.decode(enc.payload, huge, BS);
  t.equal(h.failed, 9, 'every block from the bad length on fails (offsets are lost)');
  t.throws(() => codec.decode(enc.payload, { ...clone(enc), lengths: new Uint32Array(3) }, BS), /columns disagree/);
});

t.test('fuzz: the batch decoder returns an error or the right bytes for every block', async (t) => {
  const rnd = prng(99);
  const input = mixedBatch(16);
  const started = Date.now();
  let blocksOk = 0;
  let blocksFailed = 0;
  const CASES = 3000;
  for (const name of ['lz4', 'deflate', 'lz4-wasm']) {
    const codec = new BatchCodec({ codec: name });
    const enc = codec.encode(input, BS);
    for (let c = 0; c < CASES / 3; c++) {
      let payload = enc.payload.slice();
      const cols = clone(enc);
      const mutations = 1 + Math.floor(rnd() * 4);
      for (let m = 0; m < mutations; m++) {
        const kind = Math.floor(rnd() * 6);
        const i = Math.floor(rnd() * 16);
        if (kind <= 1 && payload.length) payload[Math.floor(rnd() * payload.length)] ^= 1 << Math.floor(rnd() * 8);
        else if (kind === 2) payload = payload.subarray(0, Math.floor(rnd() * payload.length));
        else if (kind === 3) cols.lengths[i] = Math.floor(rnd() * 2 * BS);
        else if (kind === 4) cols.encodings[i] = Math.floor(rnd() * 5);
        else payload = randomBytes(payload.length);
      }
      const dec = codec.decode(payload, cols, BS);
      for (let i = 0; i < 16; i++) {
        if (dec.status[i] === BlockStatus.Ok) {
          blocksOk++;
          if (!Buffer.from(dec.blocks.subarray(i * BS, (i + 1) * BS)).equals(input.subarray(i * BS, (i + 1) * BS))) {
            t.fail(`${name} case ${c}: block ${i} reported Ok with wrong bytes`);
          }
        } else {
          blocksFailed++;
        }
      }
    }
  }
  t.ok(blocksFailed > 0 && blocksOk > 0, `${blocksOk} blocks ok, ${blocksFailed} failed`);
  t.ok(Date.now() - started < 30_000, 'bounded time');
});

t.test('hash gives checksums and zero flags only', async (t) => {
  const codec = new BatchCodec({ codec: 'none' });
  const input = mixedBatch(10);
  const h = codec.hash(input, BS);
  for (let i = 0; i < 10; i++) {
    t.equal(h.checksums[i], xxh64(input.subarray(i * BS, (i + 1) * BS)));
    t.equal(h.zero[i], i % 5 === 0 ? 1 : 0);
  }
});

t.test('validation errors name the value', async (t) => {
  t.throws(() => checkBlockSize(1000, 'x'), /x: blockSize must be a power of two from 512 to 1048576 \(got 1000\)/);
  t.throws(() => new BatchCodec({ codec: 'zstd' }), /unknown codec "zstd" \(known: none, lz4, lz4-wasm, deflate\)/);
  t.throws(() => new BatchCodec({ codec: 'deflate', level: 12 }), /level must be an integer from 0 to 9 \(got 12\)/);
  t.throws(() => new BatchCodec({ codec: 'lz4', acceleration: 0 }), /acceleration/);
  t.throws(
    () => new BatchCodec({ codec: 'lz4' }).encode(new Uint8Array(5000), BS),
    /not a whole number of 4096-byte blocks/,
  );
  t.throws(() => createCodec('nope', { kernels: new Kernels() }), /unknown codec/);
});

t.test('deflate level changes the ratio', async (t) => {
  const input = TEXT.subarray(0, 64 * BS);
  const fast = new BatchCodec({ codec: 'deflate', level: 1 }).encode(input, BS).payload.length;
  const best = new BatchCodec({ codec: 'deflate', level: 9 }).encode(input, BS).payload.length;
  t.ok(best < fast, `level 9 (${best}) < level 1 (${fast})`);
});
