/**
 * Spaces the background copy's sends at the link's measured delivery rate,
 * as BBR paces a flow: a window alone lets a whole window leave at once and
 * wait in the bottleneck's queue, where an on-demand fetch then waits behind
 * it; sends spread at the delivery rate arrive as the bottleneck drains them.
 * Until the rate stops growing (three rounds without +25%) the gain is 2, so
 * the rate found doubles each round (the copy opens its window by the same
 * gain). Start-up also ends as soon as a round's runs all show a queue forming
 * (a quarter of a round, at least QUEUE_SIGNAL_MS, above the smallest): the
 * link is full, and doubling once more would overflow a shallow router
 * buffer, whose drops cost the stream a retransmission timeout that every
 * on-demand fetch behind it waits out. Then the gain cycles per round trip, starting with a drain of what
 * start-up queued: one round at 0.75, six at 1, one at 1.25 (finds a link
 * that got faster), and so on.
 */
export const PACING_GAINS = [1.25, 0.75, 1, 1, 1, 1, 1, 1];
export const STARTUP_GAIN = 2;
/**
 * The window's gain in start-up: less than the pacing gain. Once the rate
 * estimate reaches the link, a window of twice the product keeps a whole
 * product queued at the bottleneck, more than a router buffer shorter than
 * a round trip holds (the emulated 100 Mbit/s × 25 ms link drops at 37 ms; a
 * product is 52 ms), and every drop costs the stream a retransmission
 * timeout. At 1.5 the queue stays under half a product, and the rate still
 * grows by half each round.
 */
export const STARTUP_WINDOW_GAIN = 1.5;
/**
 * How far behind its schedule the pacer may be and still keep it: the lateness of a timer, and
 * no more saved up as a burst after an idle spell.
 */
export const PACE_SLACK_MS = 2;
/** The least latency above the round trip that ends start-up (less is scheduling noise). */
export const QUEUE_SIGNAL_MS = 4;

export class Pacer {
  private nextAt = 0;
  private fullRate = 0;
  private flatRounds = 0;
  private roundStart: number;
  private cycleStart = 0;
  private full = false;
  private firstObserved: number | null = null;
  private roundMinLatency = Infinity;

  constructor(private readonly now: () => number = () => performance.now()) {
    this.roundStart = now();
  }

  /** Whether start-up is over (the rate stopped growing). */
  get filled(): boolean {
    return this.full;
  }

  /** The gain of the round trip now. */
  gain(roundMs: number): number {
    if (!this.full) return STARTUP_GAIN;
    const phase = Math.floor((this.now() - this.cycleStart) / Math.max(roundMs, 1)) % PACING_GAINS.length;
    return PACING_GAINS[phase];
  }

  /**
   * Feeds the delivery-rate estimate (and the latency of the run it came from); once per round it
   * decides whether start-up is over.
   */
  observe(rate: number, roundMs: number, latencyMs?: number): void {
    if (this.full || rate <= 0) return;
    const t = this.now();
    this.firstObserved ??= t;
    // Only runs sent once a rate was known: the first ones go out as full batches together, on a
    // connection still in TCP's slow start, and come back late whatever the path (a cold
    // connection's 256 KiB took 300 ms on a 50 ms round trip, and ended start-up at a tenth of the link).
    if (latencyMs !== undefined && t - latencyMs >= this.firstObserved)
      this.roundMinLatency = Math.min(this.roundMinLatency, latencyMs);
    // A round trip ends, as BBR counts them, when a run sent after it began arrives: on a path
    // slower than its smallest latency (a cold connection), a round counted in wall time at that
    // latency would see no growth for three rounds within one real round trip and end start-up.
    // Without a run's latency, a round is the smallest latency's time.
    const roundOver = latencyMs === undefined ? t - this.roundStart >= roundMs : t - latencyMs >= this.roundStart;
    if (!roundOver) return;
    this.roundStart = t;
    // Every run of the round late (its smallest latency): a standing queue, not one slow run. The
    // first runs go out together before any rate is known and queue behind each other: not a signal.
    const late = roundMs + Math.max(QUEUE_SIGNAL_MS, roundMs / 4);
    const queued = Number.isFinite(this.roundMinLatency) && this.roundMinLatency > late;
    const settled = t - this.firstObserved >= 2 * roundMs;
    this.roundMinLatency = Infinity;
    if (queued && settled) {
      this.full = true;
      this.cycleStart = t - Math.max(roundMs, 1); // drain what start-up queued first
      return;
    }
    if (rate >= 1.25 * this.fullRate) {
      this.fullRate = rate;
      this.flatRounds = 0;
      return;
    }
    if (++this.flatRounds >= 3) {
      this.full = true;
      this.cycleStart = t - Math.max(roundMs, 1); // the cycle's drain round first
    }
  }

  /** The gain the window opens by in the round trip now (the pacing gain once start-up is over). */
  windowGain(roundMs: number): number {
    return this.full ? this.gain(roundMs) : STARTUP_WINDOW_GAIN;
  }

  /** Milliseconds until the next send may go (0: now). */
  delay(): number {
    return Math.max(0, this.nextAt - this.now());
  }

  /**
   * Records a send of `bytes` at `rate` bytes/ms (times the round's gain): the next waits its time.
   * A send that went late (its timer fired after its time, as the event loop's timers do by a
   * millisecond or two) keeps the schedule, up to PACE_SLACK_MS: else every late timer is lost
   * time, the copy leaves below the rate it paces at, and the rates it measures, which set the
   * next pace, ratchet down (at 1 Gbit/s a 256 KiB run is 2 ms of the link, and the copy took
   * seconds to reach it).
   */
  sent(bytes: number, rate: number, roundMs: number): void {
    if (rate <= 0) return; // no rate measured yet: the window alone paces
    const t = this.now();
    this.nextAt = Math.max(this.nextAt, t - PACE_SLACK_MS) + bytes / (rate * this.gain(roundMs));
  }
}
