import { freeArrayBuffer } from '../util/free-array-buffer';

/**
 * READ reply and WRITE payload buffers of 4 KiB and up (Node's own slab only
 * serves smaller ones), reused once the socket has copied a reply out or the
 * device's write has settled: a fresh large buffer each time costs page
 * faults, and the external memory churn drives V8 into back-to-back major
 * GCs (a third of the CPU at 1 MiB requests). Shared by every connection of
 * the process, up to a byte budget.
 *
 * Memory comes in size classes, four per power of two in 4 KiB steps: a
 * buffer of one length serves every length of its class. Kept per exact
 * length, the lengths a copy reads (batches cut short by holes and the image's
 * end, a reply chunk's 8 bytes more) left a destination holding 11 MiB in 62
 * lengths, most never asked for again (docs/benchmarks.md, "Memory").
 */
export class LargeBufferPool {
  private readonly free = new Map<number, ArrayBuffer[]>();
  private pooled = 0;

  constructor(
    private readonly minLength: number,
    private readonly maxPooledBytes: number,
  ) {}

  /** Bytes held for reuse. */
  get pooledBytes(): number {
    return this.pooled;
  }

  /** A buffer of `length` bytes; its contents are whatever it held before. */
  take(length: number): Buffer {
    if (length < this.minLength) return Buffer.allocUnsafe(length);
    const size = sizeClass(length);
    const memory = this.free.get(size)?.pop();
    if (memory) this.pooled -= size;
    // allocUnsafeSlow: memory of its own, never a slice of Node's shared slab.
    return memory ? Buffer.from(memory, 0, length) : Buffer.allocUnsafeSlow(size).subarray(0, length);
  }

  /**
   * Hands a buffer back; nothing may use its memory afterwards. Kept only
   * when it spans the start of memory of its class's size, as take() makes
   * them: anything else (a slab slice, a view into a larger buffer) is left
   * to the collector. Memory take() made that the budget has no room for is
   * released at once (src/util/free-array-buffer.ts).
   */
  give(buffer: Buffer): void {
    const memory = buffer.buffer;
    if (buffer.length < this.minLength || buffer.byteOffset !== 0 || !(memory instanceof ArrayBuffer)) return;
    const size = memory.byteLength;
    if (sizeClass(buffer.length) !== size) return;
    if (this.pooled + size > this.maxPooledBytes) return freeArrayBuffer(memory);
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    list.push(memory);
    this.pooled += size;
  }
}

const PAGE = 4096;

/** The smallest class holding `length`: a multiple of a quarter of the power of two below it, and of 4 KiB. */
export function sizeClass(length: number): number {
  if (length <= PAGE) return PAGE;
  const step = Math.max(PAGE, 2 ** (Math.floor(Math.log2(length - 1)) - 2));
  return Math.ceil(length / step) * step;
}

/** One pool for every connection of the process. */
export const largeBuffers = new LargeBufferPool(4096, 64 * 1024 * 1024);
