/**
 * The checksum (xxh64) each block of the destination's image landed with,
 * for blocks nothing has changed since: a reference to one of them needs no
 * rehash. Kept in memory only (a restart starts empty) and bounded: a
 * direct-mapped table of `slots` entries, block b in slot b % slots.
 *
 * A stale entry cannot be read, by construction:
 * - every change to the image goes through changing()/changed() (the
 *   ChecksumGuardDevice around the image calls them), and changing() drops
 *   the slot's entry before the change is issued;
 * - a landing records its checksum only if, between its start and its end,
 *   its own write was the only change to the slot and none is in flight;
 * - a reader that trusts an entry checks, after reading the bytes, that no
 *   change to the slot started meanwhile (watch()/unchanged()).
 * Blocks sharing a slot share its counters: they only cost each other entries.
 */

/** Slots by default: the source's dedupe table names at most 2^18 blocks, the last ones it sent. */
export const DEFAULT_LANDED_SLOTS = 1 << 18;
/** Bytes per slot: tag (4), checksum (8), change count (4), changes in flight (4). */
export const LANDED_SLOT_BYTES = 20;

/** A landing in progress: records the checksums once its write is done. */
export interface Landing {
  /** The write went through; `sums[from + k]` is block first+k's checksum (0n: unknown). */
  landed(sums: BigUint64Array, from: number): void;
}

export class LandedChecksums {
  readonly slots: number;
  /** 1 + floor(block / slots) of the block whose checksum the slot holds; 0: none. */
  private readonly tags: Uint32Array;
  private readonly sums: BigUint64Array;
  /** Bumped when a change to the slot starts and when it ends (wraps after 2^32: far more than one read lasts). */
  private readonly changes: Uint32Array;
  /** Changes to the slot in flight. */
  private readonly busy: Uint32Array;

  constructor(
    readonly blockCount: number,
    maxSlots = DEFAULT_LANDED_SLOTS,
  ) {
    if (!Number.isInteger(maxSlots) || maxSlots < 1) throw new RangeError(`landed checksums: ${maxSlots} slots`);
    this.slots = Math.max(1, Math.min(blockCount, maxSlots));
    this.tags = new Uint32Array(this.slots);
    this.sums = new BigUint64Array(this.slots);
    this.changes = new Uint32Array(this.slots);
    this.busy = new Uint32Array(this.slots);
  }

  /** Memory the table takes. */
  get bytes(): number {
    return this.slots * LANDED_SLOT_BYTES;
  }

  /** A change to blocks [first, first+count) is about to be issued: their entries go now. */
  changing(first: number, count: number): void {
    this.eachSlot(first, count, (s) => {
      this.tags[s] = 0;
      this.changes[s]++;
      this.busy[s]++;
    });
  }

  /**
   * The change begun by changing(first, count) has completed, or failed
   * (`ok` false: it counts twice, so no landing can record what it left).
   */
  changed(first: number, count: number, ok: boolean): void {
    this.eachSlot(first, count, (s) => {
      this.busy[s]--;
      this.changes[s] += ok ? 1 : 2;
    });
  }

  /** Call before writing landed blocks [first, first+count) (through the guard device). */
  landing(first: number, count: number): Landing {
    const before = new Uint32Array(count);
    for (let k = 0; k < count; k++) before[k] = this.changes[this.slotOf(first + k)];
    return {
      landed: (sums, from) => {
        for (let k = 0; k < count; k++) {
          const block = first + k;
          const s = this.slotOf(block);
          const sum = sums[from + k];
          // Exactly one change (this landing's own write: +2) and none in flight, else nothing is known.
          if (sum === 0n || this.busy[s] !== 0 || this.changes[s] !== (before[k] + 2) >>> 0) continue;
          this.tags[s] = this.tagOf(block);
          this.sums[s] = sum;
        }
      },
    };
  }

  /**
   * The change count to pass to unchanged() when `block` is recorded with
   * `checksum` and nothing is changing it, else -1 (read and hash it).
   */
  watch(block: number, checksum: bigint): number {
    if (block < 0 || block >= this.blockCount || checksum === 0n) return -1;
    const s = this.slotOf(block);
    if (this.tags[s] !== this.tagOf(block) || this.sums[s] !== checksum || this.busy[s] !== 0) return -1;
    return this.changes[s];
  }

  /** No change to `block`'s slot started since watch() returned `count`. */
  unchanged(block: number, count: number): boolean {
    return count >= 0 && this.changes[this.slotOf(block)] === count;
  }

  /** The recorded checksum of `block`, or null. */
  checksumOf(block: number): bigint | null {
    if (block < 0 || block >= this.blockCount) return null;
    const s = this.slotOf(block);
    return this.tags[s] === this.tagOf(block) ? this.sums[s] : null;
  }

  private slotOf(block: number): number {
    return block % this.slots;
  }

  private tagOf(block: number): number {
    return Math.floor(block / this.slots) + 1;
  }

  private eachSlot(first: number, count: number, fn: (slot: number) => void): void {
    // A range wider than the table touches every slot (once is enough: the counters only need to move).
    const n = Math.min(count, this.slots);
    for (let k = 0; k < n; k++) fn(this.slotOf(first + k));
  }
}
