/**
 * Spaces a session's background batches at the rate its destination asks
 * (PACE). The destination counts its window in wire bytes it predicts from
 * what recent batches cost; after a stretch of zero blocks or references it
 * asks for megabytes of image at once, and if those turn out to be raw data
 * the source would write them all into its socket, past a shallow router's
 * drop point (every drop costs a stream a retransmission timeout, and an
 * on-demand reply caught in it waits that out). Paced here, by the bytes
 * each batch really costs, such a surprise leaves at the link's rate and
 * waits at the source instead. All of a session's background connections
 * share one pacer: they share the link.
 */
export class SendPacer {
  /** Bytes per ms; 0: unpaced. */
  private rate = 0;
  /** When the bytes reserved so far have left at the rate. */
  private nextAt = 0;

  constructor(private readonly now: () => number = () => performance.now()) {}

  /** The rate asked, bytes per second (0: unpaced). */
  get bytesPerSecond(): number {
    return this.rate * 1000;
  }

  /** Takes a rate in bytes per second; 0 stops pacing. A rate below the floor paces at the floor. */
  setRate(bytesPerSecond: number): void {
    this.rate = bytesPerSecond > 0 ? Math.max(bytesPerSecond, MIN_PACED_BYTES_PER_SECOND) / 1000 : 0;
    if (this.rate === 0) this.nextAt = 0;
  }

  /**
   * Reserves the link's time for `bytes` after what is reserved already and
   * returns the ms to wait before writing them (0: now). A batch may go up to
   * BURST_MS early, so the timer's granularity does not cost rate.
   */
  reserve(bytes: number): number {
    if (this.rate === 0) return 0;
    const t = this.now();
    const start = Math.max(t, this.nextAt);
    this.nextAt = start + bytes / this.rate;
    return Math.max(0, start - BURST_MS - t);
  }
}

/** How early a batch may leave ahead of its time. */
export const BURST_MS = 5;
/**
 * The least rate a source paces at, whatever is asked (16 KiB/s): a
 * destination's mistake must not stall its own fetches.
 */
export const MIN_PACED_BYTES_PER_SECOND = 16 * 1024;
