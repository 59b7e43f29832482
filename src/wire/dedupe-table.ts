/**
 * Which block (by index) first carried a given content in a session, so a
 * later block with the same checksum can be sent as a reference. Bounded:
 * the oldest entries are forgotten first.
 */
export class DedupeTable {
  private readonly byChecksum = new Map<bigint, number>();

  constructor(private readonly capacity = 1 << 18) {}

  get size(): number {
    return this.byChecksum.size;
  }

  /** The block that carried this content before, or -1 (and remembers this one). */
  lookupOrAdd(checksum: bigint, block: number): number {
    const seen = this.byChecksum.get(checksum);
    if (seen !== undefined && seen !== block) return seen;
    if (seen === undefined) {
      if (this.byChecksum.size >= this.capacity) this.byChecksum.delete(this.byChecksum.keys().next().value!);
      this.byChecksum.set(checksum, block);
    }
    return -1;
  }

  /** Forgets that `block` carried this content (it was never sent after all). */
  forget(checksum: bigint, block: number): void {
    if (this.byChecksum.get(checksum) === block) this.byChecksum.delete(checksum);
  }
}
