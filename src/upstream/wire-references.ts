/**
 * Resolves a batch's references: to a block earlier in the batch, or to the
 * destination's own copy, read in runs. A block whose landed checksum is on
 * record and equals the reference's is read straight into the fetch's output
 * and taken as read if nothing changed it before the read was done; the rest
 * are hashed in one pool task (the VM may have overwritten them since). A reference is honoured only when the
 * content it names checks out; else its block is fetched again as bytes.
 */
import { whenQueued, type CodecPool } from '../pool';
import type { BatchFrame } from '../wire/wire-stream';
import { WireEncoding } from '../wire/protocol';
import type { LocalBlocks } from './upstream';
import { placeBlock, type FetchOutput } from './wire-batch-decoder';

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
    const out = output.out;
    // Watched before the reads start: a change to a block issued from here on shows in unchanged().
    const watched = wanted.map(({ target, checksum }) => local.landed?.watch(target, checksum) ?? -1);
    // Whole blocks on record are read straight into the fetch's output; the rest into a scratch buffer to hash.
    const at = (k: number): number => (first + wanted[k].i) * bs - output.outOffset;
    const direct: number[] = [];
    const scratch: number[] = [];
    wanted.forEach(({ target }, k) => {
      const whole = (target + 1) * bs <= size && at(k) + bs <= out.length;
      (watched[k] >= 0 && whole ? direct : scratch).push(k);
    });
    const copy = new ArrayBuffer(scratch.length * bs);
    const reads: Array<Promise<void>> = [];
    // Where in the output each target read so far lands, and the places to fill from there once read:
    // a block repeated through a stretch of the image is read once per batch, not once per reference.
    const readAt = new Map<number, number>();
    const copies: Array<[from: number, to: number]> = [];
    // Consecutive references often point to consecutive blocks (a file copied earlier): one read per run.
    for (let j = 0; j < direct.length;) {
      let n = 1;
      const k = direct[j];
      // One read per run of consecutive targets whose places in the output are consecutive too: two
      // references to neighbouring blocks with a block of bytes between them are two reads.
      while (
        j + n < direct.length &&
        direct[j + n] === k + n &&
        wanted[k + n].target === wanted[k].target + n &&
        wanted[k + n].i === wanted[k].i + n
      )
        n++;
      const from = n === 1 ? readAt.get(wanted[k].target) : undefined;
      if (from !== undefined) copies.push([from, at(k)]);
      else {
        reads.push(local.read(wanted[k].target * bs, out.subarray(at(k), at(k) + n * bs)));
        for (let m = 0; m < n; m++) if (!readAt.has(wanted[k + m].target)) readAt.set(wanted[k + m].target, at(k + m));
      }
      j += n;
    }
    for (let j = 0; j < scratch.length;) {
      let n = 1;
      const target = wanted[scratch[j]].target;
      while (j + n < scratch.length && wanted[scratch[j + n]].target === target + n) n++;
      const offset = target * bs;
      reads.push(local.read(offset, Buffer.from(copy, j * bs, Math.min(n * bs, size - offset))));
      j += n;
    }
    await Promise.all(reads);
    // The copies hold what the read found; the watch, taken before it, covers them as it covers the read.
    for (const [from, to] of copies) out.copy(out, to, from, from + bs);
    const toHash = [...scratch];
    const recheck: number[] = [];
    for (const k of direct) {
      const { i, target, checksum } = wanted[k];
      if (local.landed!.unchanged(target, watched[k])) {
        output.checksums[at(k) / bs] = checksum;
        results.push([i, true]);
        this.checks.fromRecord++;
      } else recheck.push(k);
    }
    if (toHash.length + recheck.length === 0) return results;
    let hashInput = copy;
    if (recheck.length) {
      // Changed while read: the bytes leave the output (only verified blocks stay placed) and are hashed.
      hashInput = new ArrayBuffer((scratch.length + recheck.length) * bs);
      const into = Buffer.from(hashInput);
      Buffer.from(copy).copy(into);
      recheck.forEach((k, j) => {
        out.copy(into, (scratch.length + j) * bs, at(k), at(k) + bs);
        out.fill(0, at(k), at(k) + bs);
        toHash.push(k);
      });
    }
    this.checks.hashed += toHash.length;
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
