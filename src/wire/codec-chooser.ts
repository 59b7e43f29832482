/**
 * Which codec the source encodes with. Fixed, or `auto`: the codec whose
 * effective rate is highest, where a codec's effective rate is the smaller of
 * the link rate times its compression factor and its encoding rate on the
 * pool — the trade-off `npm run bench:codecs` tabulates, measured live on
 * this link and these blocks. Every codec is tried on one batch in 16, so
 * the figures follow the data as it changes.
 */
export interface CodecFigures {
  /** Raw bytes per wire byte (≥ 1 when it compresses). */
  factor: number;
  /** Raw bytes per second one worker encodes. */
  bytesPerSecond: number;
  samples: number;
}

const ALPHA = 0.2;

export class CodecChooser {
  private chosen: string;
  private readonly figures = new Map<string, CodecFigures>();
  private linkBytesPerSecond: number | null = null;
  private batches = 0;
  private lastDecision = 0;

  constructor(
    readonly mode: string,
    private readonly candidates: string[],
    private readonly workers: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.chosen = mode === 'auto' ? (candidates.includes('lz4') ? 'lz4' : candidates[0]) : mode;
  }

  /** The codec for the next batch (in auto mode, now and then another, to measure it). */
  get current(): string {
    if (this.mode !== 'auto') return this.chosen;
    this.batches++;
    if (this.batches % 16 === 0) return this.candidates[(this.batches / 16) % this.candidates.length];
    return this.chosen;
  }

  /** The codec chosen for most batches. */
  get selected(): string {
    return this.chosen;
  }

  get link(): number | null {
    return this.linkBytesPerSecond;
  }

  figuresFor(codec: string): CodecFigures | undefined {
    return this.figures.get(codec);
  }

  recordEncode(codec: string, rawBytes: number, wireBytes: number, workerMs: number): void {
    if (rawBytes === 0 || workerMs <= 0) return;
    const factor = rawBytes / Math.max(wireBytes, 1);
    const rate = (rawBytes / workerMs) * 1000;
    const f = this.figures.get(codec);
    if (!f) this.figures.set(codec, { factor, bytesPerSecond: rate, samples: 1 });
    else {
      f.factor += ALPHA * (factor - f.factor);
      f.bytesPerSecond += ALPHA * (rate - f.bytesPerSecond);
      f.samples++;
    }
    this.maybeDecide();
  }

  /** The rate the link delivered while it was the bottleneck (sockets backlogged). */
  recordLinkRate(bytesPerSecond: number): void {
    this.linkBytesPerSecond =
      this.linkBytesPerSecond === null
        ? bytesPerSecond
        : this.linkBytesPerSecond + ALPHA * (bytesPerSecond - this.linkBytesPerSecond);
  }

  /** Effective raw bytes per second a codec would give now. */
  effectiveRate(codec: string): number | null {
    const f = this.figures.get(codec);
    if (!f) return null;
    const cpu = f.bytesPerSecond * this.workers;
    return this.linkBytesPerSecond === null ? cpu : Math.min(cpu, this.linkBytesPerSecond * f.factor);
  }

  private maybeDecide(): void {
    if (this.mode !== 'auto') return;
    const t = this.now();
    if (t - this.lastDecision < 2000) return;
    this.lastDecision = t;
    let best = this.chosen;
    let bestRate = this.effectiveRate(best) ?? 0;
    for (const c of this.candidates) {
      const r = this.effectiveRate(c);
      if (r !== null && r > bestRate * 1.05) {
        best = c;
        bestRate = r;
      }
    }
    this.chosen = best;
  }
}
