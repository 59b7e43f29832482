/**
 * Delivery-rate samples of background runs, as BBR takes them: a run's
 * sample is the bytes the upstream's sockets read from the last run's
 * arrival before it was sent to its own arrival, over the longer of that
 * time and the time between the sends of those two runs.
 *
 * Over the arrival times alone, bytes that waited in the kernel while the
 * destination was busy look as if they had come in the moment it read them:
 * a loaded destination read a second's backlog within 135 ms and measured
 * twice the link, and a window of twice the product queued until the router
 * dropped. The sends of the runs that carried those bytes were spread over
 * the time the bytes really took, so the longer of the two spans cannot run
 * ahead of the link. Counting from the last arrival (not from the send) keeps
 * both ends of a sample at moments the counts were fresh.
 *
 * A send with nothing of the copy's in flight starts the clock again: the
 * link was idle, and the time since the last arrival is not delivery time.
 */

/** What a run carries from its send to its arrival. */
export interface SendStamp {
  sentAt: number;
  /** The bytes counted at the last arrival before the send, and when that was. */
  bytes: number;
  at: number;
  /** When the run that arrived last before this send was sent. */
  firstSentAt: number;
}

export class DeliveryClock {
  private last: { bytes: number; at: number; firstSentAt: number } | null = null;

  /** Stamps a run sent at `sentAt`; `bytes` is the count now, `idle` says nothing of the copy's was in flight. */
  sent(sentAt: number, bytes: number, idle: boolean): SendStamp {
    if (idle || !this.last || bytes < this.last.bytes) this.last = { bytes, at: sentAt, firstSentAt: sentAt };
    return { sentAt, ...this.last };
  }

  /**
   * The run stamped `stamp` arrived at `now` with the count at `bytes`: the sample's bytes and
   * interval, or null when the counts cannot be compared (a new upstream counts from zero).
   */
  arrived(stamp: SendStamp, now: number, bytes: number): { bytes: number; intervalMs: number } | null {
    if (!this.last || now >= this.last.at) this.last = { bytes, at: now, firstSentAt: stamp.sentAt };
    const delivered = bytes - stamp.bytes;
    const intervalMs = Math.max(now - stamp.at, stamp.sentAt - stamp.firstSentAt);
    if (delivered <= 0 || intervalMs <= 0) return null;
    return { bytes: delivered, intervalMs };
  }
}
