/**
 * Resolves a batch's references: to a block earlier in the batch, or to the
 * destination's own copy, read in runs and hashed in one pool task (the VM
 * may have overwritten it since). A reference is honoured only when the
 * content it names checks out; else its block is fetched again as bytes.
 */
import type { CodecPool } from '../pool';
import type { BatchFrame } from '../wire/wire-stream';
import { WireEncoding } from '../wire/protocol';
import type { LocalBlocks } from './upstream';
import { placeBlock, whenQueued, type FetchOutput } from './wire-batch-decoder';

export class ReferenceResolver {
  private local: LocalBlocks | null = null;

  constructor(
    private readonly pool: CodecPool,
    private readonly blockSize: number,
    /** The image size (known once connected). */
    private readonly imageSize: () => number,
  ) {}

  attachLocal(local: LocalBlocks): void {
    this.local = local;
  }

  /** Returns [entry index, resolved] pairs for the entries `references` of the batch. */
  async resolve(
    references: number[],
    meta: BatchFrame['meta'],
    blocks: Buffer,
    status: number[],
    output: FetchOutput,
    urgent: boolean,
  ): Promise<Array<[number, boolean]>> {
    const bs = this.blockSize;
    const size = this.imageSize();
    const first = meta.offset / bs;
    const results: Array<[number, boolean]> = [];
    const local: Array<{ i: number; target: number }> = [];
    for (const i of references) {
      const { reference: target, checksum } = meta.entries[i];
      const inBatch = target - first;
      if (inBatch >= 0 && inBatch < meta.count && meta.entries[inBatch].encoding !== WireEncoding.Reference) {
        const ok = status[inBatch] === 0 && meta.entries[inBatch].checksum === checksum;
        if (ok) placeBlock(output, (first + i) * bs, blocks.subarray(inBatch * bs, (inBatch + 1) * bs));
        results.push([i, ok]);
      } else if (this.local && target * bs < size && this.local.isHeld(target)) local.push({ i, target });
      else results.push([i, false]);
    }
    if (local.length === 0) return results;
    const copy = new ArrayBuffer(local.length * bs);
    const reads: Array<Promise<void>> = [];
    // Consecutive references often point to consecutive blocks (a file copied earlier): one read per run.
    for (let k = 0; k < local.length;) {
      let n = 1;
      while (k + n < local.length && local[k + n].target === local[k].target + n) n++;
      const offset = local[k].target * bs;
      reads.push(this.local!.read(offset, Buffer.from(copy, k * bs, Math.min(n * bs, size - offset))));
      k += n;
    }
    await Promise.all(reads);
    const hashed = await whenQueued(this.pool, () => this.pool.hash(copy, bs, { urgent }), urgent);
    const bytes = Buffer.from(hashed.blocks);
    local.forEach(({ i }, k) => {
      const ok = hashed.checksums[k] === meta.entries[i].checksum;
      if (ok) placeBlock(output, (first + i) * bs, bytes.subarray(k * bs, (k + 1) * bs));
      results.push([i, ok]);
    });
    return results;
  }
}
