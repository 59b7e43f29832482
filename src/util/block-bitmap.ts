/**
 * One bit per block, with a byte per 32 words that says whether they may
 * hold a set bit, so finding the set bits of a sparse map skips the empty
 * stretches. Its memory is fixed by the block count, whatever is set.
 */

const CHUNK_WORDS = 32;

function popcount(v: number): number {
  v = v - ((v >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

/** Bits first..first+n-1 of a 32-bit word, as a mask (n ≥ 1, first + n ≤ 32). */
function mask(first: number, n: number): number {
  return n === 32 ? 0xffffffff : (((1 << n) - 1) << first) >>> 0;
}

export class BlockBitmap {
  private readonly words: Uint32Array;
  private readonly chunkMaybeSet: Uint8Array;
  /** Bits set. */
  count = 0;

  constructor(readonly blocks: number) {
    if (!Number.isSafeInteger(blocks) || blocks < 0) throw new RangeError(`BlockBitmap: bad block count ${blocks}`);
    this.words = new Uint32Array(Math.ceil(blocks / 32));
    this.chunkMaybeSet = new Uint8Array(Math.ceil(this.words.length / CHUNK_WORDS));
  }

  /** A copy with the same bits. */
  clone(): BlockBitmap {
    const c = new BlockBitmap(this.blocks);
    c.words.set(this.words);
    c.chunkMaybeSet.set(this.chunkMaybeSet);
    c.count = this.count;
    return c;
  }

  has(block: number): boolean {
    return (this.words[block >>> 5] & (1 << (block & 31))) !== 0;
  }

  /** Sets blocks [first, first + n), clipped to the map. */
  set(first: number, n: number): void {
    this.update(first, n, true);
  }

  clear(first: number, n: number): void {
    this.update(first, n, false);
  }

  /** The first set block at or after `from`, or -1. */
  nextSet(from: number): number {
    if (from >= this.blocks || this.count === 0) return -1;
    let w = from >>> 5;
    let bits = this.words[w] & (0xffffffff << (from & 31));
    for (;;) {
      if (bits !== 0) {
        const block = w * 32 + (31 - Math.clz32(bits & -bits));
        return block < this.blocks ? block : -1;
      }
      w++;
      if (w >= this.words.length) return -1;
      if (w % CHUNK_WORDS === 0) {
        // Skip whole chunks known to be empty; forget the hint of a chunk found empty.
        let c = w / CHUNK_WORDS;
        while (c < this.chunkMaybeSet.length && !this.chunkMaybeSet[c]) c++;
        if (c >= this.chunkMaybeSet.length) return -1;
        w = c * CHUNK_WORDS;
        const end = Math.min(w + CHUNK_WORDS, this.words.length);
        let any = false;
        for (let k = w; k < end; k++) if (this.words[k] !== 0) any = true;
        if (!any) {
          this.chunkMaybeSet[c] = 0;
          w = end - 1;
          bits = 0;
          continue;
        }
      }
      bits = this.words[w];
    }
  }

  /** The first clear block at or after `from`, or `blocks`. */
  nextClear(from: number): number {
    if (from >= this.blocks) return this.blocks;
    let w = from >>> 5;
    let bits = ~this.words[w] & (0xffffffff << (from & 31));
    for (;;) {
      if (bits !== 0) return Math.min(this.blocks, w * 32 + (31 - Math.clz32(bits & -bits)));
      w++;
      if (w >= this.words.length) return this.blocks;
      bits = ~this.words[w];
    }
  }

  /** Runs of set blocks, ascending, as [first, count]; at most `limit` of them. */
  runs(limit = Infinity): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    for (let at = this.nextSet(0); at >= 0 && out.length < limit; at = this.nextSet(at)) {
      const end = this.nextClear(at);
      out.push([at, end - at]);
      at = end;
      if (at >= this.blocks) break;
    }
    return out;
  }

  private update(first: number, n: number, value: boolean): void {
    const end = Math.min(this.blocks, first + n);
    for (let b = Math.max(0, first); b < end;) {
      const w = b >>> 5;
      const bit = b & 31;
      const take = Math.min(32 - bit, end - b);
      const m = mask(bit, take);
      const old = this.words[w];
      if (value) {
        this.count += popcount(m & ~old);
        this.words[w] = old | m;
        this.chunkMaybeSet[Math.floor(w / CHUNK_WORDS)] = 1;
      } else {
        this.count -= popcount(m & old);
        this.words[w] = old & ~m;
      }
      b += take;
    }
  }
}
