/**
 * The unconsumed bytes of a stream, kept as the chunks they arrived in, so a
 * parser can resume at any split without concatenating whole chunks.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // read position inside chunks[0]
  private total = 0;

  get length(): number {
    return this.total;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /** Takes n bytes (n ≤ length): a view when they sit in one chunk, else a copy. */
  take(n: number): Buffer {
    if (n > this.total) throw new RangeError(`ByteQueue: want ${n} bytes, have ${this.total}`);
    const first = this.chunks[0];
    if (n === 0) return Buffer.alloc(0);
    if (first.length - this.head >= n) {
      const view = first.subarray(this.head, this.head + n);
      this.advance(n);
      return view;
    }
    const out = Buffer.allocUnsafe(n);
    this.copyInto(out, 0, n);
    return out;
  }

  /** The first n bytes (n ≤ length) without consuming them. */
  peek(n: number): Buffer {
    if (n > this.total) throw new RangeError(`ByteQueue: want ${n} bytes, have ${this.total}`);
    const first = this.chunks[0];
    if (first.length - this.head >= n) return first.subarray(this.head, this.head + n);
    const out = Buffer.allocUnsafe(n);
    let done = 0;
    for (let i = 0, from = this.head; done < n; i++, from = 0) {
      const chunk = this.chunks[i];
      const step = Math.min(n - done, chunk.length - from);
      chunk.copy(out, done, from, from + step);
      done += step;
    }
    return out;
  }

  /** Copies n bytes (n ≤ length) into target at targetOffset and consumes them. */
  copyInto(target: Buffer, targetOffset: number, n: number): void {
    let done = 0;
    while (done < n) {
      const chunk = this.chunks[0];
      const step = Math.min(n - done, chunk.length - this.head);
      chunk.copy(target, targetOffset + done, this.head, this.head + step);
      done += step;
      this.advance(step);
    }
  }

  /** Drops up to n bytes; returns how many were dropped. */
  skip(n: number): number {
    const step = Math.min(n, this.total);
    let left = step;
    while (left > 0) {
      const chunk = this.chunks[0];
      const inChunk = Math.min(left, chunk.length - this.head);
      this.advance(inChunk);
      left -= inChunk;
    }
    return step;
  }

  private advance(n: number): void {
    this.head += n;
    this.total -= n;
    if (this.head === this.chunks[0].length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}
