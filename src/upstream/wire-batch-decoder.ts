/**
 * Decodes and verifies one BATCH on the worker pool into a fetch's output.
 * A block that fails its checksum is reported for fetching again, never
 * placed; references are handed to the ReferenceResolver.
 */
import { whenQueued, type CodecPool } from '../pool';
import { BlockEncoding, type BlockEntry } from '../codec/batch';
import type { BatchFrame } from '../wire/wire-stream';
import { WireEncoding } from '../wire/protocol';
import { toBlockEncoding, wireEncodingName } from '../wire/encoding-map';
import type { WireStats } from './wire-stats';
import type { ReferenceResolver } from './wire-references';

/** Where decoded blocks go: a fetch's output buffer and the image offset it starts at. */
export interface FetchOutput {
  out: Buffer;
  outOffset: number;
  /** The checksum each placed block was verified against, by block from outOffset (0n: not placed). */
  checksums: BigUint64Array;
}

/** Copies a block's verified bytes into the fetch's output, trimmed at its end, and notes their checksum. */
export function placeBlock(output: FetchOutput, blockOffset: number, bytes: Buffer, checksum: bigint): void {
  const at = blockOffset - output.outOffset;
  bytes.copy(output.out, at, 0, Math.min(bytes.length, output.out.length - at));
  output.checksums[at / bytes.length] = checksum;
}

export class WireBatchDecoder {
  constructor(
    private readonly pool: CodecPool,
    private readonly blockSize: number,
    private readonly stats: WireStats,
    private readonly references: ReferenceResolver,
    /** Takes back the buffer a batch was decoded in, once its blocks are placed. */
    private readonly done: (buffer: ArrayBuffer) => void = () => undefined,
  ) {}

  /** Decodes and verifies one batch into `output`; returns the absolute blocks that failed. */
  async decode(batch: BatchFrame, urgent: boolean, output: FetchOutput): Promise<number[]> {
    const bs = this.blockSize;
    const { meta } = batch;
    const first = meta.offset / bs;
    const failed: number[] = [];
    // References are resolved here, not by the kernels: hand them over as empty zero blocks and ignore their status.
    const entries: BlockEntry[] = meta.entries.map((e) =>
      e.encoding === WireEncoding.Reference
        ? { encoding: BlockEncoding.Zero, length: 0, checksum: 0n }
        : { encoding: toBlockEncoding(e.encoding), length: e.length, checksum: e.checksum },
    );
    for (const e of meta.entries) {
      const name = wireEncodingName(e.encoding);
      this.stats.blocksByEncoding[name] = (this.stats.blocksByEncoding[name] ?? 0) + 1;
    }
    const payload = new Uint8Array(batch.payload.buffer, batch.payload.byteOffset, batch.payload.byteLength);
    const decoded = await whenQueued(
      this.pool,
      () => this.pool.decode({ blockSize: bs, entries, payload }, { urgent }),
      urgent,
    );
    const blocks = Buffer.from(decoded.blocks.buffer, decoded.blocks.byteOffset, decoded.blocks.byteLength);
    const references: number[] = [];
    for (let i = 0; i < meta.count; i++) {
      const e = meta.entries[i];
      if (e.encoding === WireEncoding.Reference) {
        references.push(i);
        continue;
      }
      if (decoded.status[i] !== 0) {
        this.stats.checksumFailures++;
        failed.push(first + i);
        continue;
      }
      placeBlock(output, (first + i) * bs, blocks.subarray(i * bs, (i + 1) * bs), e.checksum);
    }
    const resolved = await this.references.resolve(references, meta, blocks, decoded.status, output, urgent);
    // Every block was copied out: the buffer (back from the worker, or never sent) is free again.
    if (decoded.blocks.buffer instanceof ArrayBuffer) this.done(decoded.blocks.buffer);
    for (const [i, ok] of resolved) {
      if (ok) this.stats.referencesUsed++;
      else {
        this.stats.referencesRefused++;
        failed.push(first + i);
      }
    }
    return failed;
  }
}
