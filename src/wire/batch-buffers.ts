import { freeArrayBuffer } from '../util/free-array-buffer';

/**
 * Batch-sized buffers, reused: the source reads blocks into them and takes
 * them back once the socket has written what they carried; the destination
 * receives BATCH payloads into them, decodes each batch in place and takes
 * them back once its blocks are placed. No zero-filled allocation, page
 * faults and garbage per batch. Bounded: beyond `keep` buffers of a size, returned ones
 * are released at once (src/util/free-array-buffer.ts).
 */
export class BatchBuffers {
  private readonly free = new Map<number, ArrayBuffer[]>();

  constructor(private readonly keep = 8) {}

  /** A buffer of `bytes` bytes; its contents are whatever it held before. */
  take(bytes: number): ArrayBuffer {
    return this.free.get(bytes)?.pop() ?? new ArrayBuffer(bytes);
  }

  /** Hands a buffer back; nothing may use it afterwards. */
  give(buffer: ArrayBuffer): void {
    if (buffer.byteLength === 0) return; // detached: it went elsewhere
    let list = this.free.get(buffer.byteLength);
    if (!list) this.free.set(buffer.byteLength, (list = []));
    if (list.length < this.keep) list.push(buffer);
    else freeArrayBuffer(buffer);
  }
}
