/**
 * What every block of a destination may hold while a VM writes to it and
 * the daemons are killed: after an acknowledged FLUSH each acknowledged write
 * is there; a write not yet flushed leaves its block old or new, never torn;
 * a block nobody wrote holds the source's bytes.
 *
 * The writer drives batches of whole-block writes, sub-block patches and
 * write-zeroes to distinct blocks, then a FLUSH; a batch cut by a kill leaves
 * its blocks with two possible contents until a later flushed write settles
 * them. Every random choice comes from the scenario's stream.
 */
import type { NbdClient } from '../../src/nbd/client';

export const BS = 4096;

export interface Mismatch {
  block: number;
  /** Whether the bytes are none of the allowed contents but partly one of them (a torn block). */
  torn: boolean;
}

export class BlockModel {
  readonly blocks: number;
  /** Blocks whose content after their last acknowledged FLUSH is known (absent: the source's). */
  private readonly settled = new Map<number, Buffer>();
  /** Blocks with a write not covered by a FLUSH: each content they may hold. */
  private readonly open = new Map<number, Buffer[]>();
  /** Whole-block checks made so far. */
  checks = 0;
  /** Writes acknowledged by a FLUSH. */
  flushedWrites = 0;

  constructor(
    readonly source: Buffer,
    private readonly random: () => number,
  ) {
    this.blocks = source.length / BS;
  }

  get touched(): number[] {
    return [...new Set([...this.settled.keys(), ...this.open.keys(), ...this.unspecified])].sort((a, b) => a - b);
  }

  /** Blocks a failed write left unspecified: anything is allowed until a flushed write settles them. */
  private readonly unspecified = new Set<number>();

  /** A write of `after` to `block` is in flight: the block may hold its old content or this. */
  begin(block: number, after: Buffer): void {
    this.open.set(block, [...this.allowed(block), after]);
  }

  /** A FLUSH acknowledged the write of `after` to `block`. */
  settle(block: number, after: Buffer): void {
    this.settled.set(block, after);
    this.open.delete(block);
    this.unspecified.delete(block);
    this.flushedWrites++;
  }

  /** A write to `block` failed (ENOSPC): NBD leaves its content unspecified. */
  forget(block: number): void {
    this.open.delete(block);
    this.settled.delete(block);
    this.unspecified.add(block);
  }

  /** The contents a block may hold now. */
  allowed(block: number): Buffer[] {
    return this.open.get(block) ?? [this.settled.get(block) ?? this.source.subarray(block * BS, (block + 1) * BS)];
  }

  /** Checks one block's bytes; null when allowed. */
  check(block: number, got: Buffer): Mismatch | null {
    this.checks++;
    if (this.unspecified.has(block)) return null;
    const allowed = this.allowed(block);
    if (allowed.some((a) => a.equals(got))) return null;
    return { block, torn: allowed.some((a) => sameBytes(a, got) > 0) };
  }

  /**
   * Reads every touched block through `client` (contiguous runs in one read)
   * and returns those that hold what they may not.
   */
  async checkTouched(client: NbdClient): Promise<Mismatch[]> {
    const bad: Mismatch[] = [];
    const touched = this.touched;
    const runs: Array<[number, number]> = [];
    for (const b of touched) {
      const last = runs[runs.length - 1];
      if (last && last[1] === b && last[1] - last[0] < 256) last[1] = b + 1;
      else runs.push([b, b + 1]);
    }
    for (let i = 0; i < runs.length; i += 16) {
      await Promise.all(
        runs.slice(i, i + 16).map(async ([first, end]) => {
          const data = await client.read(first * BS, (end - first) * BS);
          for (let b = first; b < end; b++) {
            const m = this.check(b, data.subarray((b - first) * BS, (b - first + 1) * BS));
            if (m) bad.push(m);
          }
        }),
      );
    }
    return bad;
  }

  /** Checks a whole final image: every block, touched or not. */
  checkImage(image: Buffer): Mismatch[] {
    const bad: Mismatch[] = [];
    for (let b = 0; b < this.blocks; b++) {
      const m = this.check(b, image.subarray(b * BS, (b + 1) * BS));
      if (m) bad.push(m);
    }
    return bad;
  }

  /**
   * One batch: `count` distinct blocks each get a whole-block write, a
   * sub-block patch or a write-zeroes, all in flight at once, then a FLUSH.
   * Rejects when the connection is cut (a kill); the model then keeps both
   * contents possible for the batch's blocks. `wholeBlocksOnly`: no patches
   * (a patch of a missing block needs the source's bytes first).
   */
  async writeBatch(client: NbdClient, count: number, wholeBlocksOnly = false): Promise<void> {
    const chosen = new Set<number>();
    while (chosen.size < Math.min(count, this.blocks)) chosen.add(Math.floor(this.random() * this.blocks));
    const done: Array<[number, Buffer]> = [];
    const writes = [...chosen].map((block) => {
      const before = this.allowed(block);
      const kind = this.random();
      let after: Buffer;
      let send: () => Promise<void>;
      if (kind < 0.2) {
        after = Buffer.alloc(BS);
        send = () => client.zero(block * BS, BS);
      } else if (kind < 0.5 && !wholeBlocksOnly && before.length === 1 && !this.unspecified.has(block)) {
        // A patch of an uncertain block would have several outcomes: only settled blocks get one.
        const at = Math.floor(this.random() * (BS - 1));
        const length = 1 + Math.floor(this.random() * (BS - at - 1));
        const patch = randomBytes(length, this.random);
        after = Buffer.from(before[0]);
        patch.copy(after, at);
        send = () => client.write(block * BS + at, patch);
      } else {
        after = randomBytes(BS, this.random);
        const data = after;
        send = () => client.write(block * BS, data);
      }
      this.open.set(block, [...before, after]);
      return send().then(() => void done.push([block, after]));
    });
    await Promise.all(writes);
    await client.flush();
    for (const [block, after] of done) this.settle(block, after);
  }

  /** The image every settled block says it must be, and whether any block is still open. */
  expectedIfSettled(): Buffer | null {
    if (this.open.size) return null;
    const image = Buffer.from(this.source);
    for (const [b, data] of this.settled) data.copy(image, b * BS);
    return image;
  }
}

/** Bytes of `a` equal to `b` at the same place (a block partly one content, partly another). */
function sameBytes(a: Buffer, b: Buffer): number {
  let n = 0;
  for (let i = 0; i < a.length; i += 512) if (a.subarray(i, i + 512).equals(b.subarray(i, i + 512))) n++;
  return n === a.length / 512 ? 0 : n;
}

export function randomBytes(length: number, random: () => number): Buffer {
  const b = Buffer.alloc(Math.ceil(length / 4) * 4);
  for (let i = 0; i < b.length; i += 4) b.writeUInt32LE((random() * 2 ** 32) >>> 0, i);
  return b.subarray(0, length);
}

/** A source image: random bytes with a run of zeros, as disks have. */
export function sourceImage(size: number, random: () => number): Buffer {
  const image = randomBytes(size, random);
  const zeros = Math.floor(random() * (size / BS / 2)) * BS;
  image.fill(0, zeros, zeros + size / 4);
  return image;
}
