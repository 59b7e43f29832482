/**
 * What the link delivers, as the source sees it: the wire bytes it sent per
 * second. The destination paces background fetches to what arrives (its
 * window is about one bandwidth-delay product), so while the source's pool
 * keeps up, the rate at which it sends is the rate the path takes. While the
 * pool is the bottleneck the figure says nothing about the link and is not
 * reported.
 */
export class LinkMeter {
  private timer: NodeJS.Timeout | null = null;
  private lastBytes = 0;
  private lastTick = performance.now();

  constructor(
    private readonly bytesSent: () => number,
    private readonly cpuBound: () => boolean,
    private readonly onRate: (bytesPerSecond: number) => void,
    private readonly intervalMs = 1000,
  ) {}

  start(): void {
    this.timer ??= setInterval(() => this.tick(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private tick(): void {
    const now = performance.now();
    const sent = this.bytesSent();
    const rate = ((sent - this.lastBytes) * 1000) / (now - this.lastTick);
    this.lastBytes = sent;
    this.lastTick = now;
    if (rate > 0 && !this.cpuBound()) this.onRate(rate);
  }
}
