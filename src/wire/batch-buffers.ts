import { freeArrayBuffer } from '../util/free-array-buffer';

/**
 * Batch-sized buffers, reused: the source reads blocks into them and takes
 * them back once the socket has written what they carried; the destination
 * receives BATCH payloads into them, decodes each batch in place and takes
 * them back once its blocks are placed. No zero-filled allocation, page
 * faults and garbage per batch. Bounded in bytes, whatever the sizes: the
 * source's batches come in as many sizes as a fetch's runs have lengths, and
 * kept per size they added up to 14 MiB of a source's peak. What the budget
 * has no room for is freed at once (src/util/free-array-buffer.ts).
 */
export class BatchBuffers {
  private readonly free = new Map<number, ArrayBuffer[]>();
  private kept = 0;

  constructor(private readonly keepBytes: number) {}

  /** Bytes held for reuse. */
  get keptBytes(): number {
    return this.kept;
  }

  /** A buffer of `bytes` bytes; its contents are whatever it held before. */
  take(bytes: number): ArrayBuffer {
    const buffer = this.free.get(bytes)?.pop();
    if (!buffer) return new ArrayBuffer(bytes);
    this.kept -= bytes;
    return buffer;
  }

  /** Hands a buffer back; nothing may use it afterwards. */
  give(buffer: ArrayBuffer): void {
    const bytes = buffer.byteLength;
    if (bytes === 0) return; // detached: it went elsewhere
    if (this.kept + bytes > this.keepBytes) return freeArrayBuffer(buffer);
    let list = this.free.get(bytes);
    if (!list) this.free.set(bytes, (list = []));
    list.push(buffer);
    this.kept += bytes;
  }
}
