/** Paces the background copy to a byte rate; a null rate means no pacing. */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    private rate: number | null,
    private readonly now: () => number = Date.now,
  ) {
    this.tokens = 0;
    this.last = now();
  }

  get bytesPerSecond(): number | null {
    return this.rate;
  }

  setRate(rate: number | null): void {
    this.refill();
    this.rate = rate;
    this.tokens = 0;
  }

  /** Milliseconds to wait before `bytes` may be sent; takes them if 0. Burst is at most 1/4 s. */
  take(bytes: number): number {
    if (this.rate === null) return 0;
    this.refill();
    if (this.tokens >= bytes || this.tokens >= this.rate / 4) {
      this.tokens -= bytes;
      return 0;
    }
    return Math.ceil(((Math.min(bytes, this.rate / 4) - this.tokens) / this.rate) * 1000);
  }

  private refill(): void {
    const t = this.now();
    if (this.rate !== null) this.tokens = Math.min(this.tokens + ((t - this.last) / 1000) * this.rate, this.rate / 4);
    this.last = t;
  }
}
