// npm run bench:codecs [-- --quick] [--json FILE] [--workers N] [--only lz4,stages,decode,references]
// Measures the data plane: kernels against their references, every codec on
// every corpus, pool scaling, and the link-rate trade-off table.
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { compress as refCompress, decompress as refDecompress } from 'lz4-wasm-nodejs';
import xxhash from 'xxhash-wasm';
import type { BlockEntry } from '../src/codec/batch';
import { BatchCodec, type EncodedColumns } from '../src/codec/batch-codec';
import { codecNames } from '../src/codec/registry';
import { lz4Compress, lz4Decompress, xxh64 } from '../src/kernels/index';
import { CodecPool } from '../src/pool';
import { Kernels } from '../src/kernels/kernel-loader';
import { type Corpus, buildCorpora } from './codecs-corpora';
import { measureLz4Matrix } from './codecs-lz4';
import { measureStages } from './codecs-stages';
import { measureDecodePath, type DecodeRow } from './codecs-decode';
import { measureReferences, type ReferenceRow } from './codecs-references';
import { lineChartSvg } from './codecs-svg';

const args = process.argv.slice(2);
if (args.includes('--help')) {
  process.stdout.write(
    [
      'usage: node build/bench/codecs.js [--quick] [--json FILE] [--workers N] [--only SECTIONS]',
      '  --quick            4 MiB corpora and shorter rounds',
      '  --json FILE        also write the figures as JSON',
      '  --workers N        pool scaling up to N workers (default: cores, at most 2)',
      '  --only SECTIONS    comma-separated: lz4, stages, decode, references (default: everything)',
      '',
    ].join('\n'),
  );
  process.exit(0);
}
const QUICK = args.includes('--quick');
const jsonAt = args.indexOf('--json');
const JSON_FILE = jsonAt >= 0 ? args[jsonAt + 1] : undefined;
const workersAt = args.indexOf('--workers');
const MAX_WORKERS = workersAt >= 0 ? Number(args[workersAt + 1]) : Math.min(2, availableParallelism());
const onlyAt = args.indexOf('--only');
const ONLY = onlyAt >= 0 ? new Set(args[onlyAt + 1].split(',')) : undefined;
const runs = (section: string) => !ONLY || ONLY.has(section);
const BS = 4096;
const BATCH_BLOCKS = 64;
const BATCH = BS * BATCH_BLOCKS;
const CORPUS_SIZE = QUICK ? 4 << 20 : 32 << 20;
const MIN_TIME_MS = QUICK ? 150 : 800;
const MB = 1e6;
const LINKS: Array<[string, number]> = [
  ['10 Mbit/s', 10e6 / 8],
  ['100 Mbit/s', 100e6 / 8],
  ['1 Gbit/s', 1e9 / 8],
  ['10 Gbit/s', 10e9 / 8],
];

const log = (line: string) => process.stderr.write(line + '\n');

// The machine may be shared (other benchmarks, tests): each figure is the
// best of ROUNDS short rounds, which filters out bursts of interference.
const ROUNDS = QUICK ? 3 : 7;

/** Best rate (bytes/s) of fn, which processes `bytes` bytes per call. */
function rate(bytes: number, fn: () => void): number {
  fn(); // warm up
  let best = 0;
  for (let r = 0; r < ROUNDS; r++) {
    let n = 0;
    const start = process.hrtime.bigint();
    let elapsed: number;
    do {
      fn();
      n++;
      elapsed = Number(process.hrtime.bigint() - start) / 1e6;
    } while (elapsed < MIN_TIME_MS / ROUNDS);
    best = Math.max(best, (bytes * n) / (elapsed / 1000));
  }
  return best;
}

/** Best rate of each function, measured in alternating rounds so both see the same conditions. */
function rates(bytes: number, fns: Array<() => void>): number[] {
  fns.forEach((fn) => fn());
  const best = fns.map(() => 0);
  for (let r = 0; r < ROUNDS; r++) {
    fns.forEach((fn, i) => {
      let n = 0;
      const start = process.hrtime.bigint();
      let elapsed: number;
      do {
        fn();
        n++;
        elapsed = Number(process.hrtime.bigint() - start) / 1e6;
      } while (elapsed < MIN_TIME_MS / ROUNDS);
      best[i] = Math.max(best[i], (bytes * n) / (elapsed / 1000));
    });
  }
  return best;
}

const mbs = (v: number) => (v / MB).toFixed(v >= 100 * MB ? 0 : 1);
const table = (head: string[], rows: string[][]) =>
  [
    `| ${head.join(' | ')} |`,
    `|${head.map((_, i) => (i ? '---:' : ':---')).join('|')}|`,
    ...rows.map((r) => `| ${r.join(' | ')} |`),
  ].join('\n');

function batches(bytes: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let o = 0; o + BATCH <= bytes.length; o += BATCH) out.push(bytes.subarray(o, o + BATCH));
  return out;
}

interface CodecResult {
  corpus: string;
  codec: string;
  ratio: number;
  compressMBs: number;
  decompressMBs: number;
}

interface PoolResult {
  codec: string;
  op: 'encode' | 'decode';
  workers: number;
  MBs: number;
  /** MB processed per CPU-second of the whole process (main thread + workers). */
  MBperCpuSecond: number;
}

function measureCodec(codec: BatchCodec, corpus: Corpus): CodecResult {
  const parts = batches(corpus.bytes);
  const total = parts.length * BATCH;
  // Output buffers are recycled, as the pool's workers do.
  const outputs = parts.map(() => new Uint8Array(BATCH));
  const blocksOut = new Uint8Array(BATCH);
  let encoded: EncodedColumns[] = [];
  const compress = rate(total, () => {
    encoded = parts.map((p, i) => codec.encode(p, BS, outputs[i]));
  });
  const payload = encoded.reduce((s, e) => s + e.payload.length, 0);
  const decompress = rate(total, () => {
    for (const e of encoded) {
      if (codec.decode(e.payload, e, BS, blocksOut).failed) throw new Error(`${codec.codec.name}: decode failed`);
    }
  });
  return {
    corpus: corpus.name,
    codec: codec.codec.name,
    ratio: total / payload,
    compressMBs: compress / MB,
    decompressMBs: decompress / MB,
  };
}

/**
 * Pool throughput for 1..MAX_WORKERS workers. The pools for every worker count
 * are measured in alternating rounds (best of ROUNDS each), so that load from
 * other processes hits all of them alike.
 */
async function measurePools(codecName: string, corpus: Corpus): Promise<PoolResult[]> {
  const parts = batches(corpus.bytes);
  const total = parts.length * BATCH;
  // Batches to decode, encoded beforehand on this thread (not timed).
  const direct = new BatchCodec({ codec: codecName });
  const encoded: Array<{ entries: BlockEntry[]; payload: Uint8Array }> = parts.map((p) => {
    const e = direct.encode(p, BS);
    const entries = Array.from(e.encodings, (encoding, i) => ({
      encoding,
      checksum: e.checksums[i],
      length: e.lengths[i],
    }));
    return { entries, payload: e.payload };
  });
  const results: PoolResult[] = [];
  const pools = Array.from({ length: MAX_WORKERS }, (_, i) => {
    const workers = i + 1;
    // Each in-flight slot recycles one batch-sized buffer, as a pipeline
    // reading from disk would: encode hands the input's buffer back holding the
    // payload, decode hands the payload's buffer back holding the blocks.
    const slots = Array.from({ length: 2 * workers }, () => new ArrayBuffer(BATCH));
    return { workers, pool: new CodecPool({ workers, codec: codecName, maxQueued: 4 * workers }), slots };
  });
  const pass = async (p: (typeof pools)[number], op: 'encode' | 'decode') => {
    let next = 0;
    await Promise.all(
      p.slots.map(async (_, slot) => {
        while (next < parts.length) {
          const i = next++;
          if (op === 'encode') {
            new Uint8Array(p.slots[slot]).set(parts[i]);
            const r = await p.pool.encode(p.slots[slot], BS);
            p.slots[slot] = r.payload.buffer as ArrayBuffer;
          } else {
            const payload = new Uint8Array(p.slots[slot], 0, encoded[i].payload.length);
            payload.set(encoded[i].payload);
            const r = await p.pool.decode({ blockSize: BS, entries: encoded[i].entries, payload });
            if (r.failed.length) throw new Error(`${codecName}: pool decode failed`);
            p.slots[slot] = r.blocks.buffer as ArrayBuffer;
          }
        }
      }),
    );
  };
  for (const op of ['encode', 'decode'] as const) {
    const best = pools.map(() => 0);
    const perCpu = pools.map(() => 0);
    for (const p of pools) await pass(p, op); // warm up
    for (let r = 0; r < ROUNDS; r++) {
      for (const [k, p] of pools.entries()) {
        let n = 0;
        const start = process.hrtime.bigint();
        const cpu0 = process.cpuUsage();
        let elapsed: number;
        do {
          await pass(p, op);
          n++;
          elapsed = Number(process.hrtime.bigint() - start) / 1e6;
        } while (elapsed < MIN_TIME_MS / ROUNDS);
        const cpu = process.cpuUsage(cpu0);
        const rateNow = (total * n) / (elapsed / 1000);
        if (rateNow > best[k]) {
          best[k] = rateNow;
          // All threads of this process: main thread plus workers.
          perCpu[k] = (total * n) / ((cpu.user + cpu.system) / 1e6);
        }
      }
    }
    pools.forEach((p, k) =>
      results.push({ codec: codecName, op, workers: p.workers, MBs: best[k] / MB, MBperCpuSecond: perCpu[k] / MB }),
    );
  }
  await Promise.all(pools.map((p) => p.pool.close()));
  return results;
}

async function main(): Promise<void> {
  const started = Date.now();
  const loadavgAtStart = loadavg();
  log(`building corpora of ${CORPUS_SIZE >> 20} MiB...`);
  const corpora = buildCorpora(CORPUS_SIZE, log);
  const out: string[] = [];
  const cpu = cpus()[0]?.model ?? 'unknown CPU';
  out.push(`# Codec benchmark${QUICK ? ' (--quick)' : ''}`, '');
  out.push(
    `Load average at start: ${loadavgAtStart
      .map((l) => l.toFixed(2))
      .join(', ')} (figures are best-of-${ROUNDS} rounds).`,
    '',
  );
  out.push(
    `${cpu}, ${availableParallelism()} cores, Node ${process.version}; blocks of ${BS} B in batches of ${BATCH_BLOCKS}; corpora of ${CORPUS_SIZE >> 20} MiB.`,
    '',
  );
  for (const c of corpora) out.push(`- **${c.name}**: ${c.description}`);
  out.push('');

  const lz4Corpora = ['text', 'elf', 'binary', 'ext4']
    .map((name) => corpora.find((c) => c.name === name))
    .filter((c): c is Corpus => c !== undefined);
  let lz4Rows: Awaited<ReturnType<typeof measureLz4Matrix>> = [];
  if (runs('lz4')) {
    lz4Rows = await measureLz4Matrix(lz4Corpora, {
      budget: QUICK ? 2 << 20 : 8 << 20,
      rounds: ROUNDS,
      minMs: QUICK ? 40 : 100,
      log,
    });
    out.push('## LZ4 against lz4-wasm, same run (per corpus × input size)', '');
    out.push(
      'MB of input per CPU-second of the whole process (best of alternating rounds). **function**: ' +
        '`lz4Compress` against `lz4-wasm-nodejs` `compress`, one call per input, copies in and out included. ' +
        '**pool**: one worker with codec `lz4` against one with codec `lz4-wasm`, 1 MiB tasks of blocks of the input size ' +
        '(checksum and zero test included on both sides). Ratio: input / output bytes.',
      '',
    );
    out.push(
      table(
        [
          'corpus',
          'input',
          'path',
          'ours MB/s',
          'lz4-wasm MB/s',
          'ours / lz4-wasm',
          'ratio ours',
          'ratio lz4-wasm',
          'ratio Δ',
        ],
        lz4Rows.map((r) => [
          r.corpus,
          r.inputBytes >= 1 << 20 ? `${r.inputBytes >> 20} MiB` : `${r.inputBytes >> 10} KiB`,
          r.path,
          mbs(r.oursMBs * MB),
          mbs(r.refMBs * MB),
          `**${r.speed.toFixed(2)}**`,
          r.oursRatio.toFixed(3),
          r.refRatio.toFixed(3),
          `${((r.oursRatio / r.refRatio - 1) * 100).toFixed(2)}%`,
        ]),
      ),
      '',
    );
  }
  let stageRows: Awaited<ReturnType<typeof measureStages>> = [];
  const stageCorpus = corpora.find((c) => c.name === 'ext4') ?? corpora.find((c) => c.name === 'binary')!;
  if (runs('stages')) {
    log(`pipeline stages on ${stageCorpus.name}...`);
    stageRows = await measureStages(stageCorpus, {
      blockSize: BS,
      batchBlocks: BATCH_BLOCKS,
      rounds: ROUNDS,
      minMs: QUICK ? 40 : 100,
    });
    out.push(`## Pipeline stages, one core each (${stageCorpus.name}, batches of ${BATCH_BLOCKS} × ${BS} B)`, '');
    out.push(
      'MB of disk data per CPU-second, one batch at a time on this thread: the stage with the lowest rate bounds a core.',
      '',
    );
    out.push(
      table(
        ['side', 'stage', 'MB/s per core'],
        stageRows.map((r) => [r.side, r.stage, mbs(r.MBs * MB)]),
      ),
      '',
    );
  }

  const decodeRows: DecodeRow[] = [];
  if (runs('decode')) {
    log('decode path against the LZ4 kernel...');
    for (const corpus of corpora.filter((c) => ['text', 'binary', 'elf', 'ext4'].includes(c.name)))
      decodeRows.push(
        measureDecodePath(corpus, {
          blockSize: BS,
          batchBlocks: BATCH_BLOCKS,
          rounds: ROUNDS,
          minMs: QUICK ? 40 : 100,
        }),
      );
    out.push('## LZ4 decode path against the kernel alone (one thread, batches of 64 × 4 KiB)', '');
    out.push(
      'MB of decoded data per CPU-second, alternating rounds. **kernel**: `lz4Decompress` once per block on payloads already in linear memory; **+ xxh64**: and the checksum of every decoded block; **batch path**: `BatchCodec.decode` as a worker runs it (entries laid out, payload copied in, blocks copied out, every checksum verified).',
      '',
    );
    out.push(
      table(
        ['corpus', 'ratio', 'kernel', 'kernel + xxh64', 'batch path', 'batch / kernel'],
        decodeRows.map((r) => [
          r.corpus,
          r.ratio.toFixed(2),
          mbs(r.kernelMBs * MB),
          mbs(r.kernelHashMBs * MB),
          mbs(r.batchMBs * MB),
          (r.batchMBs / r.kernelMBs).toFixed(2),
        ]),
      ),
      '',
    );
  }
  let referenceRows: ReferenceRow[] = [];
  if (runs('references')) {
    log('references to held blocks...');
    referenceRows = await measureReferences(stageCorpus, {
      blockSize: BS,
      batchBlocks: BATCH_BLOCKS,
      rounds: ROUNDS,
      minMs: QUICK ? 40 : 100,
    });
    out.push(`## Resolving 64 references to held blocks (${stageCorpus.name}, one pool worker)`, '');
    out.push('Per batch of 64 references to consecutive blocks in the page cache; best of alternating rounds.', '');
    out.push(
      table(
        ['path', 'CPU µs per batch', 'wall µs per batch', 'MB per CPU-s'],
        referenceRows.map((r) => [
          r.path,
          r.usPerBatchCpu.toFixed(0),
          r.usPerBatchWall.toFixed(0),
          mbs(r.MBsPerCpuSecond * MB),
        ]),
      ),
      '',
    );
  }

  if (ONLY) {
    // Only the sections asked for: the rest takes most of the run.
    process.stdout.write(out.join('\n'));
    if (JSON_FILE) {
      writeFileSync(
        JSON_FILE,
        JSON.stringify(
          {
            quick: QUICK,
            loadavgAtStart,
            loadavgAtEnd: loadavg(),
            cpu,
            lz4: lz4Rows,
            stages: stageRows,
            decode: decodeRows,
            references: referenceRows,
          },
          null,
          2,
        ),
      );
    }
    return;
  }

  // 1. Kernels against their references, per 4 KiB block through the plain functions.
  log('kernels vs references...');
  const xx = await xxhash();
  const text = corpora.find((c) => c.name === 'text')!.bytes;
  const blocks: Uint8Array[] = [];
  for (let o = 0; o + BS <= text.length && blocks.length < 1024; o += BS) blocks.push(text.subarray(o, o + BS));
  const bytes = blocks.length * BS;
  const [xxOurs, xxRef] = rates(bytes, [
    () => blocks.forEach((b) => xxh64(b)),
    () => blocks.forEach((b) => xx.h64Raw(b, 0n)),
  ]);
  const binary = corpora.find((c) => c.name === 'binary')!.bytes;
  const kernelRows: string[][] = [];
  const kernelJson: Record<string, number> = { xxh64OursMBs: xxOurs / MB, xxh64RefMBs: xxRef / MB };
  kernelRows.push(['xxh64 (4 KiB, text)', mbs(xxOurs), mbs(xxRef), (xxOurs / xxRef).toFixed(2)]);
  for (const [name, corpus] of [
    ['text', text],
    ['binary', binary],
  ] as const) {
    const bl: Uint8Array[] = [];
    for (let o = 0; o + BS <= corpus.length && bl.length < 1024; o += BS) bl.push(corpus.subarray(o, o + BS));
    const n = bl.length * BS;
    const [ours, ref] = rates(n, [() => bl.forEach((b) => lz4Compress(b)), () => bl.forEach((b) => refCompress(b))]);
    const oc = bl.map((b) => lz4Compress(b));
    const rc = bl.map((b) => refCompress(b));
    const oursSize = oc.reduce((s, c) => s + c.length, 0);
    const refSize = rc.reduce((s, c) => s + c.length - 4, 0);
    const [dOurs, dRef] = rates(n, [
      () => oc.forEach((c) => lz4Decompress(c, BS)),
      () => rc.forEach((c) => refDecompress(c)),
    ]);
    // The kernel alone, on data already in linear memory (no copies in or out).
    const k = new Kernels();
    const inPtr = k.reserve(3 * n + 64);
    const outPtr = inPtr + n;
    const decPtr = outPtr + n;
    bl.forEach((b, i) => k.memory.set(b, inPtr + i * BS));
    const lens = bl.map((_, i) => k.raw.lz4Compress(inPtr + i * BS, BS, outPtr + i * BS, BS, 1));
    const rawC = rate(n, () => bl.forEach((_, i) => k.raw.lz4Compress(inPtr + i * BS, BS, outPtr + i * BS, BS, 1)));
    const rawD = rate(n, () =>
      bl.forEach((_, i) => {
        if (lens[i] > 0 && k.raw.lz4Decompress(outPtr + i * BS, lens[i], decPtr + i * BS, BS) !== BS)
          throw new Error('kernel decode');
      }),
    );
    kernelRows.push([`LZ4 compress (4 KiB, ${name})`, mbs(ours), mbs(ref), (ours / ref).toFixed(2)]);
    kernelRows.push([`LZ4 compress, kernel in linear memory (4 KiB, ${name})`, mbs(rawC), '', '']);
    kernelRows.push([`LZ4 decompress, kernel in linear memory (4 KiB, ${name})`, mbs(rawD), '', '']);
    kernelRows.push([`LZ4 decompress (4 KiB, ${name})`, mbs(dOurs), mbs(dRef), (dOurs / dRef).toFixed(2)]);
    kernelRows.push([
      `LZ4 ratio (4 KiB, ${name})`,
      (n / oursSize).toFixed(3),
      (n / refSize).toFixed(3),
      (refSize / oursSize).toFixed(3),
    ]);
    Object.assign(kernelJson, {
      [`lz4Compress_${name}_OursMBs`]: ours / MB,
      [`lz4Compress_${name}_KernelMBs`]: rawC / MB,
      [`lz4Decompress_${name}_KernelMBs`]: rawD / MB,
      [`lz4Compress_${name}_RefMBs`]: ref / MB,
      [`lz4Decompress_${name}_OursMBs`]: dOurs / MB,
      [`lz4Decompress_${name}_RefMBs`]: dRef / MB,
      [`lz4Ratio_${name}_Ours`]: n / oursSize,
      [`lz4Ratio_${name}_Ref`]: n / refSize,
    });
  }
  out.push('## Kernels against their references (plain functions, one call per 4 KiB block)', '');
  out.push(table(['kernel', 'ferry (AssemblyScript)', 'reference', 'ferry / reference'], kernelRows), '');
  out.push(
    'MB/s, one thread; references: `xxhash-wasm` `h64Raw`, `lz4-wasm-nodejs` `compress`/`decompress`. Ratio rows: uncompressed / compressed.',
    '',
  );

  // 2. Every codec on every corpus, one thread (what one worker does).
  log('codecs x corpora...');
  const codecResults: CodecResult[] = [];
  const codecs = codecNames().map((name) => new BatchCodec({ codec: name }));
  for (const corpus of corpora) {
    for (const codec of codecs) codecResults.push(measureCodec(codec, corpus));
  }
  out.push('## Codecs on one worker (batches of 64 × 4 KiB: checksum + zero test + compression)', '');
  out.push(
    table(
      ['corpus', 'codec', 'ratio', 'compress MB/s', 'decompress + verify MB/s'],
      codecResults.map((r) => [
        r.corpus,
        r.codec,
        Number.isFinite(r.ratio) ? r.ratio.toFixed(2) : 'all zero',
        mbs(r.compressMBs * MB),
        mbs(r.decompressMBs * MB),
      ]),
    ),
    '',
  );

  // 3. Pool scaling: on the most realistic corpus, and on text (more CPU per batch).
  const real = corpora.find((c) => c.name === 'ext4') ?? corpora.find((c) => c.name === 'binary')!;
  const poolCorpora = [real, corpora.find((c) => c.name === 'text')!];
  const poolResults: Array<PoolResult & { corpus: string }> = [];
  for (const corpus of poolCorpora) {
    log(`pool scaling on ${corpus.name}...`);
    for (const name of codecNames()) {
      for (const r of await measurePools(name, corpus)) poolResults.push({ ...r, corpus: corpus.name });
    }
  }
  const wCols = Array.from({ length: MAX_WORKERS }, (_, i) => i + 1);
  out.push(`## Pool throughput (MB/s of uncompressed data, 1..${MAX_WORKERS} workers)`, '');
  out.push(
    'Main thread: copies each batch into a recycled buffer, submits it, takes the result; up to 2 batches in flight per worker. ' +
      'MB per CPU-s: data processed per CPU-second of the whole process (main thread and workers); ' +
      'if it holds steady from 1 to N workers, adding workers costs no extra CPU per byte and throughput is bounded by the cores available.',
    '',
  );
  out.push(
    table(
      [
        'corpus',
        'codec',
        'op',
        ...wCols.map((w) => `${w} worker${w > 1 ? 's' : ''}`),
        `${MAX_WORKERS} / 1`,
        ...wCols.map((w) => `MB per CPU-s, ${w} w`),
      ],
      poolCorpora.flatMap((corpus) =>
        codecNames().flatMap((name) =>
          (['encode', 'decode'] as const).map((op) => {
            const found = wCols.map((w) =>
              poolResults.find((p) => p.corpus === corpus.name && p.codec === name && p.op === op && p.workers === w)!,
            );
            const row = found.map((p) => p.MBs);
            return [
              corpus.name,
              name,
              op,
              ...row.map((v) => mbs(v * MB)),
              (row[row.length - 1] / row[0]).toFixed(2),
              ...found.map((p) => mbs(p.MBperCpuSecond * MB)),
            ];
          }),
        ),
      ),
    ),
    '',
  );

  // 4. Trade-off: effective rate = min(link × ratio, CPU rate of the pool), per link.
  const tradeoff = LINKS.map(([label, linkBps]) => {
    const perCodec = codecNames().map((name) => {
      const ratio = codecResults.find((r) => r.corpus === real.name && r.codec === name)!.ratio;
      const at = (op: string) =>
        poolResults.find((p) => p.corpus === real.name && p.codec === name && p.op === op && p.workers === MAX_WORKERS)!
          .MBs * MB;
      const cpuBps = Math.min(at('encode'), at('decode'));
      const effective = Math.min(linkBps * ratio, cpuBps);
      return {
        codec: name,
        effectiveMBs: effective / MB,
        cpuMBs: cpuBps / MB,
        limitedBy: linkBps * ratio <= cpuBps ? 'link' : 'CPU',
      };
    });
    // Within 2% of the best rate counts as a tie, won by the codec that costs
    // the least CPU per byte (one-worker compress + decompress time).
    const cpuCost = (name: string) => {
      const r = codecResults.find((c) => c.corpus === real.name && c.codec === name)!;
      return 1 / r.compressMBs + 1 / r.decompressMBs;
    };
    const top = Math.max(...perCodec.map((c) => c.effectiveMBs));
    const best = perCodec
      .filter((c) => c.effectiveMBs >= top * 0.98)
      .reduce((a, b) => (cpuCost(b.codec) < cpuCost(a.codec) ? b : a));
    return { link: label, linkMBs: linkBps / MB, perCodec, best: best.codec };
  });
  out.push(`## Trade-off: effective transfer rate on ${real.name} with ${MAX_WORKERS} workers each side`, '');
  out.push(
    'Effective rate of the uncompressed disk = min(link rate × ratio, pool encode rate, pool decode rate). Best: highest rate; within 2% counts as a tie, won by the codec with the lowest CPU cost per byte (one worker, compress + decompress).',
    '',
  );
  out.push(
    table(
      ['link', ...codecNames(), 'best'],
      tradeoff.map((t) => [
        `${t.link} (${mbs(t.linkMBs * MB)} MB/s)`,
        ...t.perCodec.map((c) => `${mbs(c.effectiveMBs * MB)} (${c.limitedBy})`),
        `**${t.best}**`,
      ]),
    ),
    '',
  );

  const svg = lineChartSvg(
    `Effective transfer rate, ${real.name} corpus, ${MAX_WORKERS} workers`,
    LINKS.map(([l]) => l),
    [
      { name: 'link', points: LINKS.map(([, b]) => b / MB) },
      ...codecNames().map((name) => ({
        name,
        points: tradeoff.map((t) => t.perCodec.find((c) => c.codec === name)!.effectiveMBs),
      })),
    ],
    'MB/s of disk data (log)',
  );
  const outDir = join(__dirname, '..', '..', 'bench', 'out');
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'codecs.svg'), svg);
  if (!QUICK) {
    const docsImg = join(__dirname, '..', '..', 'docs', 'img');
    mkdirSync(docsImg, { recursive: true });
    copyFileSync(join(outDir, 'codecs.svg'), join(docsImg, 'codecs.svg'));
  }
  out.push(
    `Plot: bench/out/codecs.svg${QUICK ? '' : ' (copied to docs/img/codecs.svg)'}. Run time ${((Date.now() - started) / 1000).toFixed(0)} s.`,
    '',
  );
  process.stdout.write(out.join('\n'));
  if (JSON_FILE) {
    writeFileSync(
      JSON_FILE,
      JSON.stringify(
        {
          quick: QUICK,
          loadavgAtStart,
          loadavgAtEnd: loadavg(),
          cpu,
          cores: availableParallelism(),
          node: process.version,
          blockSize: BS,
          batchBlocks: BATCH_BLOCKS,
          corpusBytes: CORPUS_SIZE,
          kernels: kernelJson,
          lz4: lz4Rows,
          stages: stageRows,
          codecs: codecResults,
          pool: poolResults,
          tradeoff,
        },
        null,
        2,
      ),
    );
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
