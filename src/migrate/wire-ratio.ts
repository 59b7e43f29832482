/**
 * Wire bytes per image byte, from the upstream's cumulative counters. The
 * background copy claims runs of image blocks but the bottleneck carries
 * wire bytes: a run of references or zero blocks costs a few bytes, a run of
 * raw data its full size. The copy counts its window in wire bytes, so it
 * needs to predict what a run it has not sent yet will cost: the ratio of
 * the most recent deliveries. Predictions lean high (the larger of the
 * recent and the latest ratio) so that the step from cheap to costly data
 * does not put a deep queue of it in flight before the ratio catches up.
 */
export interface LinkCounters {
  /** Bytes received from the source, framing included. */
  bytesOnWire: number;
  /** Image bytes those carried once decoded. */
  bytesBeforeEncoding: number;
}

export class WireRatio {
  private last: LinkCounters | null = null;
  private readonly deltas: Array<[number, number]> = []; // [wire, image]
  private recent = 1;
  private latest = 1;

  constructor(
    /** Deliveries the recent ratio averages over. */
    private readonly span = 8,
    /** Never predicts below this (a run of references still costs its batch headers). */
    private readonly min = 1 / 256,
    /** Never predicts above this (framing on tiny runs; a counter that went backwards). */
    private readonly max = 2,
  ) {}

  /** Takes the counters after a delivery; ignores a sample that carried no image bytes. */
  observe(counters: LinkCounters): void {
    const last = this.last;
    this.last = { bytesOnWire: counters.bytesOnWire, bytesBeforeEncoding: counters.bytesBeforeEncoding };
    if (!last) return;
    const wire = counters.bytesOnWire - last.bytesOnWire;
    const image = counters.bytesBeforeEncoding - last.bytesBeforeEncoding;
    if (image <= 0 || wire < 0) return;
    this.deltas.push([wire, image]);
    if (this.deltas.length > this.span) this.deltas.shift();
    let w = 0;
    let i = 0;
    for (const [dw, di] of this.deltas) {
      w += dw;
      i += di;
    }
    this.recent = this.clamp(w / i);
    this.latest = this.clamp(wire / image);
  }

  /** Wire bytes per image byte to plan with. */
  get ratio(): number {
    return Math.max(this.recent, this.latest);
  }

  /** Predicted wire bytes for `imageBytes` not sent yet. */
  wireBytes(imageBytes: number): number {
    return Math.ceil(imageBytes * this.ratio);
  }

  private clamp(r: number): number {
    return Math.min(this.max, Math.max(this.min, r));
  }
}
