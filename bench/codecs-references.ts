// Cost of resolving references to the destination's own blocks, per batch of
// 64 references to 64 consecutive held blocks: read back (page cache) and
// hashed on the pool, against read back only, as a block whose landed
// checksum is on record is. CPU of the whole process (main thread and worker)
// and wall time per batch, in alternating rounds.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BatchCodec } from '../src/codec/batch-codec';
import { CodecPool } from '../src/pool';
import { FileDevice } from '../src/store/file-device';
import { ChecksumGuardDevice } from '../src/store/checksum-guard-device';
import { LandedChecksums } from '../src/store/landed-checksums';
import { WireEncoding } from '../src/wire/protocol';
import type { BatchMeta } from '../src/wire/messages';
import { ReferenceResolver } from '../src/upstream/wire-references';
import type { Corpus } from './codecs-corpora';

export interface ReferenceRow {
  path: string;
  usPerBatchCpu: number;
  usPerBatchWall: number;
  MBsPerCpuSecond: number;
}

export async function measureReferences(
  corpus: Corpus,
  options: { blockSize: number; batchBlocks: number; rounds: number; minMs: number },
): Promise<ReferenceRow[]> {
  const { blockSize: bs, batchBlocks: n, rounds, minMs } = options;
  const batches = Math.min(64, Math.floor(corpus.bytes.length / (n * bs)));
  const blocks = batches * n;
  const dir = mkdtempSync(join(tmpdir(), 'ferry-refs-'));
  const pool = new CodecPool({ workers: 1, codec: 'lz4' });
  try {
    const imagePath = join(dir, 'image');
    const bytes = corpus.bytes.subarray(0, blocks * bs);
    writeFileSync(imagePath, bytes);
    const image = FileDevice.open(imagePath, {});
    const sums = new BatchCodec({ codec: 'lz4' }).hash(bytes, bs).checksums;
    // Every block lands through the guard with its checksum, as the copy lands them.
    const record = new LandedChecksums(blocks);
    const guarded = new ChecksumGuardDevice(image, record, bs);
    for (let k = 0; k < batches; k++) {
      const landing = record.landing(k * n, n);
      await guarded.write(k * n * bs, Buffer.from(bytes.subarray(k * n * bs, (k + 1) * n * bs)), false);
      landing.landed(sums, k * n);
    }
    // The batch for blocks [blocks + k*n, ...) repeats blocks [k*n, ...): all references.
    const metas: BatchMeta[] = Array.from({ length: batches }, (_, k) => ({
      requestId: 1,
      offset: (blocks + k * n) * bs,
      count: n,
      lastLength: bs,
      entries: Array.from({ length: n }, (_, i) => ({
        encoding: WireEncoding.Reference,
        length: 0,
        checksum: sums[k * n + i],
        reference: k * n + i,
      })),
    }));
    const resolvers = [false, true].map((withRecord) => {
      const r = new ReferenceResolver(pool, bs, () => 2 * blocks * bs);
      r.attachLocal({
        isHeld: () => true,
        read: (offset, into) => image.read(offset, into),
        ...(withRecord ? { landed: record } : {}),
      });
      return r;
    });
    const out = Buffer.alloc(n * bs);
    const indexes = [...Array(n).keys()];
    const pass = async (r: ReferenceResolver) => {
      for (const meta of metas) {
        const output = { out, outOffset: meta.offset, checksums: new BigUint64Array(n) };
        const res = await r.resolve(indexes, meta, Buffer.alloc(0), [], output, false);
        if (!res.every(([, ok]) => ok)) throw new Error('references: a reference was refused');
        if (r === resolvers[1] && r.checks.hashed > 0) throw new Error('references: a block on record was hashed');
      }
    };
    const best = resolvers.map(() => ({ cpu: Infinity, wall: Infinity }));
    for (const r of resolvers) await pass(r);
    for (let round = 0; round < rounds; round++) {
      for (const [i, r] of resolvers.entries()) {
        let passes = 0;
        const cpu0 = process.cpuUsage();
        const t0 = performance.now();
        let cpuMs: number;
        do {
          await pass(r);
          passes++;
          const c = process.cpuUsage(cpu0);
          cpuMs = (c.user + c.system) / 1e3;
        } while (cpuMs < minMs);
        const per = batches * passes;
        best[i].cpu = Math.min(best[i].cpu, (cpuMs * 1e3) / per);
        best[i].wall = Math.min(best[i].wall, ((performance.now() - t0) * 1e3) / per);
      }
    }
    await image.close();
    const row = (path: string, b: { cpu: number; wall: number }): ReferenceRow => ({
      path,
      usPerBatchCpu: b.cpu,
      usPerBatchWall: b.wall,
      MBsPerCpuSecond: (n * bs) / b.cpu,
    });
    return [row('read back + hash on the pool', best[0]), row('read back, checksum on record', best[1])];
  } finally {
    await pool.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
