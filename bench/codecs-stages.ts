// Per-core rate of each stage of the wire's data path, on one corpus: what the
// source spends per batch (read, hash + zero test, dedupe, compress, frame,
// TLS) and what the destination spends (TLS, decode + verify, write). Rates
// are MB of disk data per CPU-second of this process, one batch at a time.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BatchCodec } from '../src/codec/batch-codec';
import { FileDevice } from '../src/store/file-device';
import { DedupeTable } from '../src/wire/dedupe-table';
import { toWireEncoding } from '../src/wire/encoding-map';
import { encodeBatchHead, type WireEntry } from '../src/wire/messages';
import type { Corpus } from './codecs-corpora';
import { cpuRates } from './codecs-timing';

export interface StageRow {
  side: 'source' | 'destination';
  stage: string;
  MBs: number;
}

const MB = 1e6;
/** TLS 1.3 records carry at most 16 KiB; AES-256-GCM is what ferry's TLS negotiates on x86. */
const TLS_RECORD = 16 << 10;

function tlsSeal(key: Buffer, data: Uint8Array): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < data.length; at += TLS_RECORD) {
    const c = createCipheriv('aes-256-gcm', key, randomBytes(12));
    out.push(c.update(data.subarray(at, at + TLS_RECORD)), c.final(), c.getAuthTag());
  }
  return out;
}

async function asyncRate(bytes: number, rounds: number, minMs: number, fn: () => Promise<void>): Promise<number> {
  await fn();
  let best = 0;
  for (let r = 0; r < rounds; r++) {
    let n = 0;
    const cpu0 = process.cpuUsage();
    let spent: number;
    do {
      await fn();
      n++;
      const c = process.cpuUsage(cpu0);
      spent = (c.user + c.system) / 1e3;
    } while (spent < minMs);
    best = Math.max(best, (bytes * n) / (spent / 1000));
  }
  return best;
}

export async function measureStages(
  corpus: Corpus,
  options: { blockSize: number; batchBlocks: number; rounds: number; minMs: number },
): Promise<StageRow[]> {
  const { blockSize: bs, batchBlocks, rounds, minMs } = options;
  const batch = bs * batchBlocks;
  const count = Math.min(64, Math.floor(corpus.bytes.length / batch));
  const bytes = count * batch;
  const batches = Array.from({ length: count }, (_, i) => corpus.bytes.subarray(i * batch, (i + 1) * batch));
  const codec = new BatchCodec({ codec: 'lz4' });
  const encoded = batches.map((b) => codec.encode(b, bs));
  const scratch = new Uint8Array(batch);
  const dir = mkdtempSync(join(tmpdir(), 'ferry-stages-'));
  const rows: StageRow[] = [];
  try {
    const imagePath = join(dir, 'image');
    writeFileSync(imagePath, corpus.bytes.subarray(0, bytes));
    const source = FileDevice.open(imagePath, { readOnly: true });
    const target = FileDevice.open(join(dir, 'copy'), { createSize: bytes });
    const readBuf = Buffer.alloc(batch);
    const read = await asyncRate(bytes, rounds, minMs, async () => {
      for (let i = 0; i < count; i++) await source.read(i * batch, readBuf);
    });
    const write = await asyncRate(bytes, rounds, minMs, async () => {
      for (let i = 0; i < count; i++) await target.write(i * batch, Buffer.from(batches[i]), false);
    });
    await source.close();
    await target.close();
    const key = randomBytes(32);
    const sealed = encoded.map((e) => tlsSeal(key, e.payload));
    const entriesOf = (e: (typeof encoded)[number]): WireEntry[] =>
      Array.from(e.encodings, (enc, i) => ({
        encoding: toWireEncoding(enc),
        length: e.lengths[i],
        checksum: e.checksums[i],
        reference: 0,
      }));
    const hashed = batches.map((b) => codec.hash(b, bs));
    const [hash, dedupe, compress, frame, seal] = cpuRates(bytes, rounds, minMs, [
      () => batches.forEach((b) => codec.hash(b, bs)),
      () => {
        const table = new DedupeTable();
        hashed.forEach((h, k) => h.checksums.forEach((c, i) => table.lookupOrAdd(c, k * batchBlocks + i)));
      },
      () => batches.forEach((b) => codec.encode(b, bs, scratch)),
      () =>
        encoded.forEach((e, i) =>
          encodeBatchHead(
            { requestId: 1, offset: i * batch, count: batchBlocks, lastLength: bs, entries: entriesOf(e) },
            false,
            e.payload.length,
          ),
        ),
      () => encoded.forEach((e) => tlsSeal(key, e.payload)),
    ]);
    const [open, decode] = cpuRates(bytes, rounds, minMs, [
      () =>
        sealed.forEach((parts) => {
          for (let p = 0; p < parts.length; p += 3) {
            const d = createDecipheriv('aes-256-gcm', key, randomBytes(12));
            d.setAuthTag(parts[p + 2]);
            d.update(parts[p]);
            // The tag cannot match with a fresh IV: the cost is the same, the failure is expected.
            try {
              d.final();
            } catch {
              /* expected */
            }
          }
        }),
      () =>
        encoded.forEach((e) => {
          if (codec.decode(e.payload, e, bs, scratch).failed) throw new Error('stages: decode failed');
        }),
    ]);
    rows.push(
      { side: 'source', stage: 'read (page cache, 256 KiB reads)', MBs: read / MB },
      { side: 'source', stage: 'hash + zero test (xxh64)', MBs: hash / MB },
      { side: 'source', stage: 'dedupe lookup', MBs: dedupe / MB },
      { side: 'source', stage: 'encode (hash + zero test + LZ4)', MBs: compress / MB },
      { side: 'source', stage: 'frame (BATCH head)', MBs: frame / MB },
      { side: 'source', stage: 'TLS seal (AES-256-GCM of the payload)', MBs: seal / MB },
      { side: 'destination', stage: 'TLS open (AES-256-GCM of the payload)', MBs: open / MB },
      { side: 'destination', stage: 'decode + verify (LZ4 + xxh64)', MBs: decode / MB },
      { side: 'destination', stage: 'write (page cache, 256 KiB writes)', MBs: write / MB },
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}
