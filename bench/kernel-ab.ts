// The source's encode stage (BatchCodec.encode of 64 × 4 KiB batches, codec
// lz4) with several builds of kernels.wasm in one process, in alternating
// rounds: how much a kernel change moved the stage that bounds the source.
//
//   node build/bench/kernel-ab.js OLD.wasm NEW.wasm [...]
//
// Build an older kernel with that commit's assembly/lz4.ts in place of the
// current one: npx asc assembly/index.ts --target release --outFile OLD.wasm
import { basename } from 'node:path';
import { BatchCodec } from '../src/codec/batch-codec';
import { buildCorpora } from './codecs-corpora';
import { cpuRates } from './codecs-timing';

const kernels = process.argv.slice(2);
if (kernels.length < 2 || kernels.some((k) => k.startsWith('-'))) {
  console.error('usage: node build/bench/kernel-ab.js A.wasm B.wasm [...]  (first = the baseline)');
  process.exit(2);
}

const BS = 4096;
const BATCH = BS * 64;
const corpora = buildCorpora(32 << 20, () => {});
const header = ['corpus', ...kernels.map((k) => `${basename(k)} MB/s`), 'last ÷ first', 'ratio first → last'];
console.log(`| ${header.join(' | ')} |`);
console.log(`|${header.map(() => ' ---: ').join('|')}|`);
for (const name of ['ext4', 'elf', 'binary', 'text']) {
  const corpus = corpora.find((c) => c.name === name);
  if (!corpus) continue;
  // The image's start, as the stage table measures it.
  const count = Math.min(64, Math.floor(corpus.bytes.length / BATCH));
  const batches = Array.from({ length: count }, (_, i) => corpus.bytes.subarray(i * BATCH, (i + 1) * BATCH));
  const codecs = kernels.map((kernelPath) => new BatchCodec({ codec: 'lz4', kernelPath }));
  const scratch = new Uint8Array(BATCH);
  const bytes = count * BATCH;
  const ratios = codecs.map((c) => bytes / batches.reduce((s, b) => s + c.encode(b, BS).payload.length, 0));
  const rates = cpuRates(
    bytes,
    7,
    100,
    codecs.map((c) => () => batches.forEach((b) => c.encode(b, BS, scratch))),
  );
  const cells = [
    name,
    ...rates.map((r) => (r / 1e6).toFixed(0)),
    (rates[rates.length - 1] / rates[0]).toFixed(2),
    `${ratios[0].toFixed(3)} → ${ratios[ratios.length - 1].toFixed(3)}`,
  ];
  console.log(`| ${cells.join(' | ')} |`);
}
