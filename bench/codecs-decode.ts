// Where the batch decode path spends its time against the LZ4 kernel alone,
// per corpus, in alternating rounds of one run (CPU time of this thread):
// the kernel called once per 4 KiB block on data already in linear memory,
// the same plus xxh64 of every block, and BatchCodec.decode (what a worker
// runs: entries laid out, payload copied in, blocks copied out, checksums
// verified). `kernelPath` (optional) measures another build of the kernels.
import { BatchCodec } from '../src/codec/batch-codec';
import { BlockEncoding } from '../src/codec/batch';
import { Kernels } from '../src/kernels/kernel-loader';
import type { Corpus } from './codecs-corpora';
import { cpuRates } from './codecs-timing';

export interface DecodeRow {
  corpus: string;
  ratio: number;
  kernelMBs: number;
  kernelHashMBs: number;
  batchMBs: number;
}

export function measureDecodePath(
  corpus: Corpus,
  options: { blockSize: number; batchBlocks: number; rounds: number; minMs: number; kernelPath?: string },
): DecodeRow {
  const { blockSize: bs, batchBlocks: n, rounds, minMs } = options;
  const batch = bs * n;
  const count = Math.min(64, Math.floor(corpus.bytes.length / batch));
  const total = count * batch;
  const codec = new BatchCodec({ codec: 'lz4', kernelPath: options.kernelPath });
  const encoded = Array.from({ length: count }, (_, i) =>
    codec.encode(corpus.bytes.subarray(i * batch, (i + 1) * batch), bs),
  );
  const payloadBytes = encoded.reduce((s, e) => s + e.payload.length, 0);
  // Every payload laid out in one kernel instance's memory once, for the kernel-only rows.
  const k = new Kernels(options.kernelPath);
  const base = k.reserve(payloadBytes + batch + 64);
  const dst = base + ((payloadBytes + 15) & ~15);
  const blocks: Array<[number, number, number]> = [];
  let at = base;
  for (const e of encoded) {
    let p = at;
    for (let i = 0; i < n; i++) {
      blocks.push([p, e.lengths[i], e.encodings[i]]);
      p += e.lengths[i];
    }
    k.memory.set(e.payload, at);
    at += e.payload.length;
  }
  const kernel = (hash: boolean) => () => {
    for (let j = 0; j < blocks.length; j++) {
      const [p, len, enc] = blocks[j];
      const out = dst + (j % n) * bs;
      if (enc === BlockEncoding.Lz4) k.raw.lz4Decompress(p, len, out, bs);
      else if (enc === BlockEncoding.Raw) k.memory.copyWithin(out, p, p + bs);
      if (hash) k.raw.xxh64(out, bs, 0n);
    }
  };
  const into = new Uint8Array(batch);
  const [kernelOnly, kernelHash, batchPath] = cpuRates(total, rounds, minMs, [
    kernel(false),
    kernel(true),
    () =>
      encoded.forEach((e) => {
        if (codec.decode(e.payload, e, bs, into).failed) throw new Error('decode path: a block failed');
      }),
  ]);
  return {
    corpus: corpus.name,
    ratio: total / payloadBytes,
    kernelMBs: kernelOnly / 1e6,
    kernelHashMBs: kernelHash / 1e6,
    batchMBs: batchPath / 1e6,
  };
}
