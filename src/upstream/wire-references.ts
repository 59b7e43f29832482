/**
 * Resolves a batch's references: to a block earlier in the batch, or to the
 * destination's own copy, read in runs. A block whose landed checksum is on
 * record and equals the reference's, and that nothing changed before the
 * read was done, is taken as read; the rest are hashed in one pool task (the
 * VM may have overwritten them since). A reference is honoured only when the
 * content it names checks out; else its block is fetched again as bytes.
 */
import type { CodecPool } from '../pool';
import type { BatchFrame } from '../wire/wire-stream';
import { WireEncoding } from '../wire/protocol';
import type { LocalBlocks } from './upstream';
import { placeBlock, whenQueued, type FetchOutput } from './wire-batch-decoder';

/** How references to the destination's own blocks were checked. */
export interface ReferenceChecks {
  /** Taken on the landed-checksum record, without hashing. */
  fromRecord: number;
  /** Read back and hashed. */
  hashed: number;
}

export class ReferenceResolver {
  private local: LocalBlocks | null = null;
  readonly checks: ReferenceChecks = { fromRecord: 0, hashed: 0 };

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
    const wanted: Array<{ i: number; target: number; checksum: bigint }> = [];
    for (const i of references) {
      const { reference: target, checksum } = meta.entries[i];
      const inBatch = target - first;
      if (inBatch >= 0 && inBatch < meta.count && meta.entries[inBatch].encoding !== WireEncoding.Reference) {
        const ok = status[inBatch] === 0 && meta.entries[inBatch].checksum === checksum;
        if (ok) placeBlock(output, (first + i) * bs, blocks.subarray(inBatch * bs, (inBatch + 1) * bs), checksum);
        results.push([i, ok]);
      } else if (this.local && target * bs < size && this.local.isHeld(target)) wanted.push({ i, target, checksum });
      else results.push([i, false]);
    }
    if (wanted.length === 0) return results;
    const local = this.local!;
    // Watched before the read starts: a change to the block issued from here on shows in unchanged().
    const watched = wanted.map(({ target, checksum }) => local.landed?.watch(target, checksum) ?? -1);
    const copy = new ArrayBuffer(wanted.length * bs);
    const bytes = Buffer.from(copy);
    const reads: Array<Promise<void>> = [];
    // Consecutive references often point to consecutive blocks (a file copied earlier): one read per run.
    for (let k = 0; k < wanted.length;) {
      let n = 1;
      while (k + n < wanted.length && wanted[k + n].target === wanted[k].target + n) n++;
      const offset = wanted[k].target * bs;
      reads.push(local.read(offset, Buffer.from(copy, k * bs, Math.min(n * bs, size - offset))));
      k += n;
    }
    await Promise.all(reads);
    const toHash: number[] = [];
    wanted.forEach(({ i, target, checksum }, k) => {
      if (watched[k] >= 0 && local.landed!.unchanged(target, watched[k])) {
        placeBlock(output, (first + i) * bs, bytes.subarray(k * bs, (k + 1) * bs), checksum);
        results.push([i, true]);
        this.checks.fromRecord++;
      } else toHash.push(k);
    });
    if (toHash.length === 0) return results;
    this.checks.hashed += toHash.length;
    let hashInput = copy;
    if (toHash.length < wanted.length) {
      hashInput = new ArrayBuffer(toHash.length * bs);
      const into = Buffer.from(hashInput);
      toHash.forEach((k, j) => bytes.copy(into, j * bs, k * bs, (k + 1) * bs));
    }
    const hashed = await whenQueued(this.pool, () => this.pool.hash(hashInput, bs, { urgent }), urgent);
    const hashedBytes = Buffer.from(hashed.blocks);
    toHash.forEach((k, j) => {
      const { i, checksum } = wanted[k];
      const ok = hashed.checksums[j] === checksum;
      if (ok) placeBlock(output, (first + i) * bs, hashedBytes.subarray(j * bs, (j + 1) * bs), checksum);
      results.push([i, ok]);
    });
    return results;
  }
}
