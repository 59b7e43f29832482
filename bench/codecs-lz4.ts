// LZ4 against lz4-wasm in one run: every corpus × input size, through the
// library's function and through the pool, with the compression ratio of each.
import { compress as refCompress, decompress as refDecompress } from 'lz4-wasm-nodejs';
import { lz4Compress, lz4Decompress } from '../src/kernels/index';
import { CodecPool } from '../src/pool';
import type { Corpus } from './codecs-corpora';
import { cpuRates } from './codecs-timing';

export const LZ4_SIZES = [4 << 10, 16 << 10, 64 << 10, 1 << 20];

export interface Lz4Row {
  corpus: string;
  inputBytes: number;
  path: 'function' | 'pool';
  oursMBs: number;
  refMBs: number;
  /** ours / lz4-wasm speed. */
  speed: number;
  oursRatio: number;
  refRatio: number;
}

const MB = 1e6;

/** Up to `budget` bytes of inputs of `size` bytes, spread evenly over the corpus (an image's start is mostly metadata). */
function pieces(bytes: Uint8Array, size: number, budget: number): Uint8Array[] {
  const available = Math.floor(bytes.length / size);
  const wanted = Math.max(1, Math.min(available, Math.floor(budget / size)));
  const stride = Math.floor(available / wanted);
  const out: Uint8Array[] = [];
  for (let i = 0; i < wanted; i++) out.push(bytes.subarray(i * stride * size, (i * stride + 1) * size));
  return out;
}

/** Fails loudly if either side cannot read the other's blocks: the comparison would be meaningless. */
function checkCompatible(input: Uint8Array): void {
  const ours = lz4Compress(input);
  const framed = new Uint8Array(ours.length + 4);
  new DataView(framed.buffer).setUint32(0, input.length, true);
  framed.set(ours, 4);
  if (!Buffer.from(refDecompress(framed)).equals(input)) throw new Error('lz4-wasm cannot read our block');
  const theirs = refCompress(input).subarray(4);
  if (!Buffer.from(lz4Decompress(theirs, input.length)).equals(input)) throw new Error('we cannot read lz4-wasm');
}

/** The plain functions, one call per input of `size` bytes (copies in and out included on both sides). */
function functionRow(corpus: Corpus, size: number, budget: number, rounds: number, minMs: number): Lz4Row {
  const inputs = pieces(corpus.bytes, size, budget);
  checkCompatible(inputs[0]);
  const bytes = inputs.length * size;
  const [ours, ref] = cpuRates(bytes, rounds, minMs, [
    () => inputs.forEach((b) => lz4Compress(b)),
    () => inputs.forEach((b) => refCompress(b)),
  ]);
  const oursSize = inputs.reduce((s, b) => s + lz4Compress(b).length, 0);
  const refSize = inputs.reduce((s, b) => s + refCompress(b).length - 4, 0);
  return {
    corpus: corpus.name,
    inputBytes: size,
    path: 'function',
    oursMBs: ours / MB,
    refMBs: ref / MB,
    speed: ours / ref,
    oursRatio: bytes / oursSize,
    refRatio: bytes / refSize,
  };
}

/**
 * One worker each, codec `lz4` against codec `lz4-wasm`, tasks of 1 MiB made
 * of blocks of `size` bytes (checksum and zero test included on both sides).
 * Rates are per CPU-second of the whole process, main thread and worker.
 */
async function poolRow(corpus: Corpus, size: number, budget: number, rounds: number, minMs: number): Promise<Lz4Row> {
  const task = Math.max(size, 1 << 20);
  const tasks = pieces(corpus.bytes, task, budget);
  const bytes = tasks.length * task;
  const pools = ['lz4', 'lz4-wasm'].map((codec) => new CodecPool({ workers: 1, codec, maxQueued: 4 }));
  const slots = pools.map(() => [new ArrayBuffer(task), new ArrayBuffer(task)]);
  const payloadBytes = [0, 0];
  const pass = async (k: number) => {
    let next = 0;
    let payload = 0;
    await Promise.all(
      slots[k].map(async (_, s) => {
        while (next < tasks.length) {
          const i = next++;
          new Uint8Array(slots[k][s]).set(tasks[i]);
          const r = await pools[k].encode(slots[k][s], size);
          payload += r.payload.length;
          slots[k][s] = r.payload.buffer as ArrayBuffer;
        }
      }),
    );
    payloadBytes[k] = payload;
  };
  const best = [0, 0];
  for (const k of [0, 1]) await pass(k); // warm up: workers started, kernels compiled
  for (let r = 0; r < rounds; r++) {
    for (const k of [0, 1]) {
      let n = 0;
      const cpu0 = process.cpuUsage();
      let spent: number;
      do {
        await pass(k);
        n++;
        const c = process.cpuUsage(cpu0);
        spent = (c.user + c.system) / 1e3;
      } while (spent < minMs);
      best[k] = Math.max(best[k], (bytes * n) / (spent / 1000));
    }
  }
  await Promise.all(pools.map((p) => p.close()));
  return {
    corpus: corpus.name,
    inputBytes: size,
    path: 'pool',
    oursMBs: best[0] / MB,
    refMBs: best[1] / MB,
    speed: best[0] / best[1],
    oursRatio: bytes / payloadBytes[0],
    refRatio: bytes / payloadBytes[1],
  };
}

export async function measureLz4Matrix(
  corpora: Corpus[],
  options: { budget: number; rounds: number; minMs: number; log: (line: string) => void },
): Promise<Lz4Row[]> {
  const rows: Lz4Row[] = [];
  for (const corpus of corpora) {
    for (const size of LZ4_SIZES) {
      options.log(`lz4 vs lz4-wasm: ${corpus.name}, ${size >> 10} KiB...`);
      rows.push(functionRow(corpus, size, options.budget, options.rounds, options.minMs));
      rows.push(await poolRow(corpus, size, options.budget, options.rounds, options.minMs));
    }
  }
  return rows;
}
