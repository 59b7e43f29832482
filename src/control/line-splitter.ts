/**
 * Splits a byte stream into newline-terminated lines with a cap on line length.
 * A line over the cap is reported once and skipped up to its newline, so one bad
 * line never costs the connection nor unbounded memory.
 */
export type SplitLine = { line: string } | { tooLong: true };

export class LineSplitter {
  private parts: Buffer[] = [];
  private pendingBytes = 0;
  private skipping = false;

  constructor(private readonly maxLineBytes: number) {}

  /** Lines completed by this chunk, in order. */
  push(chunk: Buffer): SplitLine[] {
    const out: SplitLine[] = [];
    let start = 0;
    while (start <= chunk.length) {
      const nl = chunk.indexOf(0x0a, start);
      const end = nl === -1 ? chunk.length : nl;
      if (!this.skipping) {
        const piece = chunk.subarray(start, end);
        if (this.pendingBytes + piece.length > this.maxLineBytes) {
          this.parts = [];
          this.pendingBytes = 0;
          this.skipping = true;
          out.push({ tooLong: true });
        } else if (piece.length > 0) {
          this.parts.push(piece);
          this.pendingBytes += piece.length;
        }
      }
      if (nl === -1) break;
      if (!this.skipping) {
        const line = Buffer.concat(this.parts).toString('utf8').replace(/\r$/, '');
        if (line.trim() !== '') out.push({ line });
      }
      this.parts = [];
      this.pendingBytes = 0;
      this.skipping = false;
      start = nl + 1;
    }
    return out;
  }
}
