/**
 * Measures what the link delivers while it is the bottleneck: every half
 * second, the bytes the kernel took from sockets whose send queues stayed
 * backed up. Without a backlog the link is not what limits the copy, and
 * there is nothing to measure.
 */
import type net from 'node:net';

const BACKLOG = 256 * 1024;

export class LinkMeter {
  private readonly last = new Map<net.Socket, number>();
  private timer: NodeJS.Timeout | null = null;
  private lastTick = performance.now();

  constructor(
    private readonly sockets: () => Iterable<net.Socket>,
    private readonly onRate: (bytesPerSecond: number) => void,
    private readonly intervalMs = 500,
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
    const seconds = (now - this.lastTick) / 1000;
    this.lastTick = now;
    let delivered = 0;
    let backlogged = false;
    const seen = new Set<net.Socket>();
    for (const s of this.sockets()) {
      seen.add(s);
      const written = s.bytesWritten - s.writableLength;
      const before = this.last.get(s) ?? written;
      delivered += written - before;
      this.last.set(s, written);
      if (s.writableLength > BACKLOG) backlogged = true;
    }
    for (const s of [...this.last.keys()]) if (!seen.has(s)) this.last.delete(s);
    if (backlogged && seconds > 0 && delivered > 0) this.onRate(delivered / seconds);
  }
}
