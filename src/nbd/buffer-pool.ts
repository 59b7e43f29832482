/**
 * READ reply and WRITE payload buffers of 4 KiB and up (Node's own slab only
 * serves smaller ones), reused once the socket has copied a reply out or the
 * device's write has settled: a fresh large buffer each time costs page
 * faults, and the external memory churn drives V8 into back-to-back major
 * GCs (a third of the CPU at 1 MiB requests). Kept per exact length, up to a
 * byte budget shared by every connection of the process.
 */
export class LargeBufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private pooledBytes = 0;

  constructor(
    private readonly minLength: number,
    private readonly maxPooledBytes: number,
  ) {}

  take(length: number): Buffer {
    if (length >= this.minLength) {
      const buffer = this.free.get(length)?.pop();
      if (buffer) {
        this.pooledBytes -= length;
        return buffer;
      }
    }
    return Buffer.allocUnsafe(length);
  }

  give(buffer: Buffer): void {
    const length = buffer.length;
    if (length < this.minLength || this.pooledBytes + length > this.maxPooledBytes) return;
    let list = this.free.get(length);
    if (!list) this.free.set(length, (list = []));
    list.push(buffer);
    this.pooledBytes += length;
  }
}

/** One pool for every connection of the process. */
export const largeBuffers = new LargeBufferPool(4096, 64 * 1024 * 1024);
