/**
 * One direction of an emulated WAN link, shared by every connection through it.
 *
 * A segment entering the link waits for the wire to be free, occupies it for
 * length / bandwidth, then arrives `latency` later. Keeping the time the wire is
 * next free is a token bucket with no burst: the aggregate rate never exceeds the
 * cap, and since arrival times only grow, one FIFO queue and one timer suffice.
 */
import { performance } from 'node:perf_hooks';

/** Segments this size or smaller, so a large chunk trickles out as a link would deliver it. */
const SEGMENT_BYTES = 16 * 1024;

export interface LinkSegment<C> {
  conn: C;
  /** null is the sender's FIN, delivered in order after its data. */
  data: Buffer | null;
  deliverAt: number;
}

export class LinkDirection<C> {
  private queue: Array<LinkSegment<C>> = [];
  private head = 0;
  private timer: NodeJS.Timeout | null = null;
  private wireFreeAt = 0;
  /** Bytes accepted but not yet delivered. */
  queuedBytes = 0;
  deliveredBytes = 0;

  constructor(
    private bytesPerMs: number,
    private latencyMs: number,
    private readonly deliver: (segment: LinkSegment<C>) => void,
    /** Called after deliveries, so senders paused for a full queue can go on. */
    private readonly drained: () => void,
  ) {}

  /** About one bandwidth-delay product (round trip) plus 256 KiB: above this, senders are paused. */
  get highWaterBytes(): number {
    return Math.ceil(this.bytesPerMs * 2 * this.latencyMs) + 256 * 1024;
  }

  get full(): boolean {
    return this.queuedBytes > this.highWaterBytes;
  }

  setBandwidth(bytesPerMs: number): void {
    this.bytesPerMs = bytesPerMs;
  }

  send(conn: C, data: Buffer): void {
    for (let off = 0; off < data.length; off += SEGMENT_BYTES) {
      const piece = data.subarray(off, Math.min(data.length, off + SEGMENT_BYTES));
      const start = Math.max(performance.now(), this.wireFreeAt);
      this.wireFreeAt = start + piece.length / this.bytesPerMs;
      this.push({ conn, data: piece, deliverAt: this.wireFreeAt + this.latencyMs });
      this.queuedBytes += piece.length;
    }
  }

  end(conn: C): void {
    this.push({ conn, data: null, deliverAt: Math.max(performance.now(), this.wireFreeAt) + this.latencyMs });
  }

  /** Drops everything queued and stops the timer. */
  clear(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.queue = [];
    this.head = 0;
    this.queuedBytes = 0;
  }

  private push(segment: LinkSegment<C>): void {
    this.queue.push(segment);
    this.arm();
  }

  private arm(): void {
    if (this.timer || this.head >= this.queue.length) return;
    const wait = Math.max(0, this.queue[this.head].deliverAt - performance.now());
    this.timer = setTimeout(() => this.flush(), Math.ceil(wait));
  }

  private flush(): void {
    this.timer = null;
    const now = performance.now();
    while (this.head < this.queue.length && this.queue[this.head].deliverAt <= now) {
      const segment = this.queue[this.head++];
      if (segment.data) {
        this.queuedBytes -= segment.data.length;
        this.deliveredBytes += segment.data.length;
      }
      this.deliver(segment);
    }
    // Compact once the consumed prefix dominates, so the array does not grow for ever.
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    this.drained();
    this.arm();
  }
}
