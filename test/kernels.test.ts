import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import xxhash from 'xxhash-wasm';
import { compress as refCompress, decompress as refDecompress } from 'lz4-wasm-nodejs';
import { isZero, lz4Bound, lz4Compress, lz4Decompress, xxh64 } from '../src/kernels/index';
import { Kernels, type KernelExports } from '../src/kernels/kernel-loader';

// Deterministic PRNG so a failure can be reproduced from its case number.
function prng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
}

const TEXT = new Uint8Array(readFileSync(require.resolve('typescript/lib/typescript.js')).subarray(0, 1 << 20));
const BINARY = new Uint8Array(readFileSync(process.execPath).subarray(1 << 20, 2 << 20));

function withPrefix(block: Uint8Array, length: number): Uint8Array {
  const framed = new Uint8Array(block.length + 4);
  new DataView(framed.buffer).setUint32(0, length, true);
  framed.set(block, 4);
  return framed;
}

/** Inputs that exercise LZ4's corner cases: sizes around the end-of-block rules, runs, periods. */
function lz4Cases(): Array<[string, Uint8Array]> {
  const cases: Array<[string, Uint8Array]> = [];
  for (let n = 0; n <= 70; n++) {
    cases.push([`random ${n}`, randomBytes(n)]);
    cases.push([`zeros ${n}`, new Uint8Array(n)]);
    cases.push([`text ${n}`, TEXT.subarray(1000, 1000 + n)]);
  }
  for (const period of [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 64, 255, 300]) {
    const pattern = randomBytes(period);
    const buf = new Uint8Array(5000);
    for (let i = 0; i < buf.length; i++) buf[i] = pattern[i % period];
    cases.push([`period ${period}`, buf]);
  }
  const rnd = prng(7);
  for (let i = 0; i < 40; i++) {
    const n = Math.floor(rnd() * 200_000);
    const off = Math.floor(rnd() * (TEXT.length - n));
    cases.push([`text ${n}@${off}`, TEXT.subarray(off, off + n)]);
    cases.push([`binary ${n}`, BINARY.subarray(0, n)]);
  }
  // Long literal runs then long matches (lengths that need 255-continuation bytes).
  const mixed = new Uint8Array(70_000);
  mixed.set(randomBytes(1000), 0);
  mixed.set(randomBytes(600), 30_000);
  mixed.set(mixed.subarray(30_000, 30_600), 31_000);
  cases.push(['mixed runs', mixed]);
  cases.push([
    '4 MiB text+zeros',
    (() => {
      const b = new Uint8Array(4 << 20);
      b.set(TEXT, 0);
      b.set(TEXT, 3 << 20);
      return b;
    })(),
  ]);
  return cases;
}

t.test('xxh64 matches xxhash-wasm h64 for every length 0..300 and many seeds', async (t) => {
  const ref = await xxhash();
  const seeds = [0n, 1n, 0x9e3779b185ebca87n, 0xffffffffffffffffn, 0x8000000000000000n];
  const data = randomBytes(400);
  let mismatches = 0;
  for (let n = 0; n <= 300; n++) {
    for (const seed of seeds) {
      // Unaligned views too: the kernel copies into its own memory anyway.
      const view = data.subarray(n % 7, (n % 7) + n);
      if (xxh64(view, seed) !== ref.h64Raw(view, seed)) mismatches++;
    }
  }
  t.equal(mismatches, 0, 'no mismatches over 301 lengths x 5 seeds');
});

t.test('xxh64 matches xxhash-wasm on random sizes and corpora', async (t) => {
  const ref = await xxhash();
  const rnd = prng(42);
  for (let i = 0; i < 60; i++) {
    const n = Math.floor(rnd() * 300_000);
    const seed = BigInt(Math.floor(rnd() * 2 ** 32)) * BigInt(Math.floor(rnd() * 2 ** 32));
    const buf = i % 2 ? randomBytes(n) : TEXT.subarray(0, n);
    t.equal(xxh64(buf, seed), ref.h64Raw(buf, seed), `size ${n}`);
  }
  t.equal(xxh64(new Uint8Array(0)), 0xef46db3751d8e999n, 'spec value for the empty input');
});

t.test('isZero', async (t) => {
  for (const n of [0, 1, 7, 8, 31, 32, 33, 4096, 65536]) {
    const buf = new Uint8Array(n);
    t.ok(isZero(buf), `zeros ${n}`);
    for (const at of [0, n >> 1, n - 1]) {
      if (n === 0) continue;
      buf[at] = 1;
      t.notOk(isZero(buf), `nonzero at ${at} of ${n}`);
      buf[at] = 0;
    }
  }
});

t.test('lz4: ours → lz4-wasm, lz4-wasm → ours, ours → ours', async (t) => {
  const failures: string[] = [];
  for (const [name, input] of lz4Cases()) {
    const ours = lz4Compress(input);
    if (ours.length > lz4Bound(input.length)) failures.push(`${name}: exceeds bound`);
    const theirs = refCompress(input).subarray(4);
    const a = refDecompress(withPrefix(ours, input.length));
    const b = lz4Decompress(theirs, input.length);
    const c = lz4Decompress(ours, input.length);
    if (!Buffer.from(a).equals(input)) failures.push(`${name}: lz4-wasm cannot read ours`);
    if (!Buffer.from(b).equals(input)) failures.push(`${name}: we cannot read lz4-wasm`);
    if (!Buffer.from(c).equals(input)) failures.push(`${name}: round trip`);
  }
  t.same(failures, []);
});

t.test('lz4: output depends only on the input, not on earlier calls', async (t) => {
  const a = TEXT.subarray(0, 4096);
  const first = lz4Compress(a);
  lz4Compress(TEXT.subarray(4096, 8192));
  lz4Compress(a.slice().reverse());
  t.same(lz4Compress(a), first);
  // Each table after calls that filled every table: the narrow one's entries name
  // positions of the earlier, longer input, past the end of a shorter one.
  for (const size of [4096, 65534, 65536, 100_000]) {
    const input = BINARY.subarray(size, 2 * size);
    const expected = lz4Compress(input);
    for (const before of [65534, 65536, 1 << 20]) lz4Compress(TEXT.subarray(0, before));
    const again = lz4Compress(input);
    t.same(again, expected, `${size} bytes after other calls`);
    t.ok(Buffer.from(lz4Decompress(again, size)).equals(input), `${size} bytes decode`);
  }
});

t.test('lz4: the hash table epoch wraps around cleanly', async (t) => {
  // The test build of the kernels (test/kernels/) also exports lz4SetEpoch.
  const k = new Kernels(join(__dirname, 'kernels.wasm'));
  const raw = k.raw as KernelExports & { lz4SetEpoch(value: number): void };
  // Inputs above 64 KiB: only the wide table has an epoch.
  const size = 80 << 10;
  const input = TEXT.subarray(8192, 8192 + size);
  const expected = k.lz4Compress(input);
  // The first start wraps at the compared call, the others at the filling one.
  for (const start of [0xffffffff - 3 * size, 0xffffffff - 70_000, 0xffffffff - 65_537, 0xffffffff - 1, 0xffffffff]) {
    raw.lz4SetEpoch(start >>> 0);
    k.lz4Compress(TEXT.subarray(0, size)); // fills the table near the wrap
    t.same(k.lz4Compress(input), expected, `epoch ${start}`);
    t.ok(Buffer.from(k.lz4Decompress(k.lz4Compress(input), input.length)).equals(input));
  }
});

t.test('lz4: acceleration trades ratio for speed and stays decodable', async (t) => {
  const input = TEXT.subarray(0, 256 << 10);
  let previous = 0;
  for (const accel of [1, 2, 8, 64, 1000]) {
    const out = lz4Compress(input, accel);
    t.ok(Buffer.from(refDecompress(withPrefix(out, input.length))).equals(input), `accel ${accel} decodes`);
    t.ok(out.length >= previous * 0.98, `accel ${accel}: ratio does not improve much (${out.length})`);
    previous = out.length;
  }
  t.throws(() => lz4Compress(input, 0), RangeError);
});

t.test('lz4: ratio within 1% of lz4-wasm on text and binary', async (t) => {
  for (const [name, corpus] of [
    ['text', TEXT],
    ['binary', BINARY],
  ] as const) {
    let ours = 0;
    let theirs = 0;
    for (let o = 0; o < corpus.length; o += 4096) {
      const block = corpus.subarray(o, o + 4096);
      ours += lz4Compress(block).length;
      theirs += refCompress(block).length - 4;
    }
    t.ok(ours <= theirs * 1.01, `${name}: ${ours} vs lz4-wasm ${theirs}`);
  }
});

t.test('lz4: ratio no more than 1% below lz4-wasm at 4 KiB to 1 MiB inputs, both table sizes', async (t) => {
  for (const [name, corpus] of [
    ['text', TEXT],
    ['binary', BINARY],
  ] as const) {
    for (const size of [4096, 16385, 65534, 65535, 65536, 65537, 1 << 20]) {
      let ours = 0;
      let theirs = 0;
      for (let o = 0; o + size <= corpus.length; o += size) {
        const input = corpus.subarray(o, o + size);
        const block = lz4Compress(input);
        ours += block.length;
        theirs += refCompress(input).length - 4;
        // The small and the large table are both plain LZ4 blocks to lz4-wasm.
        if (o === 0)
          t.ok(
            Buffer.from(refDecompress(withPrefix(block, size))).equals(input),
            `${name} ${size}: lz4-wasm reads ours`,
          );
      }
      t.ok(theirs > 0, `${name} ${size}: corpus large enough`);
      t.ok(ours <= theirs * 1.01, `${name} ${size}: ${ours} vs lz4-wasm ${theirs}`);
    }
  }
});

t.test('lz4Decompress rejects malformed blocks with a clear error', async (t) => {
  const good = lz4Compress(TEXT.subarray(0, 10_000));
  t.throws(() => lz4Decompress(new Uint8Array(0), 10), /malformed LZ4 block of 0 bytes: input truncated/);
  t.throws(() => lz4Decompress(good.subarray(0, good.length - 3), 10_000), /lz4Decompress/);
  t.throws(() => lz4Decompress(good, 9_999), /exceed the stated length/);
  t.throws(() => lz4Decompress(good, 10_001), /decodes to 10000 bytes, expected 10001/);
  // token: 1 literal + match; offset 5 points before the start of the output.
  t.throws(() => lz4Decompress(Uint8Array.of(0x10, 0x41, 0x05, 0x00, 0x00), 100), /offset/);
  t.throws(() => lz4Decompress(Uint8Array.of(0x10, 0x41, 0x00, 0x00, 0x00), 100), /offset/, 'offset 0');
  // Literal length made of 255-continuations that runs past the input.
  t.throws(() => lz4Decompress(Uint8Array.of(0xf0, 255, 255, 255), 100_000), /truncated/);
  t.same(lz4Decompress(Uint8Array.of(0x00), 0), new Uint8Array(0), 'empty block');
  t.throws(() => lz4Decompress(good, -1), RangeError);
});

t.test('fuzz: decompressor returns an error or exactly the stated length, never writes outside', async (t) => {
  const k = new Kernels();
  const rnd = prng(1234);
  const CANARY = 0xa5;
  const sources = [
    TEXT.subarray(0, 4096),
    TEXT.subarray(50_000, 70_000),
    BINARY.subarray(0, 4096),
    new Uint8Array(4096),
  ];
  const compressed = sources.map((s) => lz4Compress(s));
  let errors = 0;
  let decoded = 0;
  const started = Date.now();
  const CASES = 30_000;
  for (let c = 0; c < CASES; c++) {
    const which = c % sources.length;
    let input: Uint8Array;
    if (c % 5 === 4) {
      input = randomBytes(Math.floor(rnd() * 300));
    } else {
      input = compressed[which].slice();
      const mutations = 1 + Math.floor(rnd() * 4);
      for (let m = 0; m < mutations; m++) {
        const kind = Math.floor(rnd() * 4);
        const at = Math.floor(rnd() * input.length);
        if (kind === 0) input[at] ^= 1 << Math.floor(rnd() * 8);
        else if (kind === 1) input[at] = Math.floor(rnd() * 256);
        else if (kind === 2) input = input.subarray(0, at);
        else input[at] = 0xff;
      }
    }
    const length = c % 3 === 0 ? sources[which].length : Math.floor(rnd() * 70_000);
    // Layout: [input][gap canary][output][canary]; the kernel may touch only output.
    const src = k.reserve(input.length + 64 + length + 64 + 64);
    const dst = src + input.length + 64;
    k.memory.fill(CANARY, src, dst + length + 64);
    k.memory.set(input, src);
    const n = k.raw.lz4Decompress(src, input.length, dst, length);
    if (n < 0) errors++;
    else if (n <= length) decoded++;
    else t.fail(`case ${c}: wrote ${n} bytes, cap ${length}`);
    for (let i = dst + length; i < dst + length + 64; i++) {
      if (k.memory[i] !== CANARY) {
        t.fail(`case ${c}: byte ${i - dst - length} past the output overwritten`);
        break;
      }
    }
    for (let i = src + input.length; i < dst; i++) {
      if (k.memory[i] !== CANARY) {
        t.fail(`case ${c}: gap before the output overwritten`);
        break;
      }
    }
  }
  t.equal(errors + decoded, CASES, `${errors} errors, ${decoded} decoded`);
  t.ok(errors > CASES / 4, 'most hostile inputs are rejected');
  t.ok(Date.now() - started < 20_000, 'bounded time');
});
