/**
 * One background window for every copy that crosses the same bottleneck.
 * Each copy's own WindowEstimator keeps about its own bandwidth-delay
 * product plus a batch in flight; N copies sharing one link would keep N of
 * those, and everything above the link's one product waits in its queue,
 * where an on-demand fetch then waits too. The host window bounds the sum of
 * background wire bytes on the link (sent, data not arrived yet) across its
 * members by one estimate of the shared path: the aggregate delivery rate
 * (every member's arrivals over the last eight round trips, at least 100 ms,
 * over the longer of their arrivals' and their sends' spans, or the rate of a probe round's
 * own runs when that is clearly more: see probeSample) times the smallest latency
 * of a run (which holds the path's round trip and the run's own time on the
 * wire, so the product keeps one run being serialised), plus a small
 * headroom (a tenth of the product, at least a run), with BBR's gain cycle (1.5 in
 * start-up, then 1.25 / 1) so it finds a faster path. The cycle's draining round (0.75) is
 * left out: with many members the headroom is all the queue there is, and a round below the
 * product left the link idle in a quarter of the samples (the 8-copy daemon bench at
 * 100 Mbit/s × 25 ms: goodput 0.84–0.87 of the link with it, 0.91–0.93 without; the latency
 * probe below drains any standing queue instead). It is learned
 * from the aggregate rate, so members whose paths turn out to be independent
 * raise it. A run sent while less than the product is in flight (the members offer less
 * than the link carries: cheap runs of zeros or references, tails) is app-limited, and its
 * sample may raise the rate but not lower it (see sample). A run
 * goes while the sum plus half of it is under the window, so the queue it
 * leaves is about the headroom.
 *
 * The window is shared by weight among the members that want to copy: a
 * member below its share may send while the host is under the window; a
 * member above it may send only when no member below its share is waiting,
 * so unused share is not wasted; room is offered first to the member that
 * sent least recently.
 *
 * Urgent (on-demand) fetches are not counted and never held back. An urgent
 * reply waits behind what was queued when its request left (the bottleneck
 * is first in, first out); the window, learned from the runs' arrivals
 * alone, leaves steady urgent traffic most of its room, since the runs'
 * rate is then the link's less the urgent rate. Urgent bursts shorter than
 * the rate's span (eight round trips, the largest of 2.5 s) find the window as
 * learned without them and queue on top of it. (Counting them in the sum,
 * against the member's share and in the rate was measured: no gain in the
 * daemon bench, whose VMs read 4 KiB at a time, and lower fairness in more runs.)
 *
 * Pure state (the clock is injected, nothing here sets a timer); members are
 * woken through their onWake callback when room appears.
 */
import { Pacer } from './pacer';
import { WindowedExtreme } from '../util/windowed-extreme';

export interface HostWindowOptions {
  /** Wire bytes the window starts at (before any sample). */
  initialBytes: number;
  /** The window never drops below this (one member may always have this much in flight). */
  floorBytes: number;
  /** The window never grows above this. */
  ceilingBytes: number;
  /** Whether a probe round's own runs may raise the rate (see probeSample; default true). */
  probeSamples?: boolean;
  /** Headroom above the aggregate product, as a fraction of it (at least floorBytes; default 0.1). */
  headroomFraction?: number;
  now?: () => number;
}

export class HostWindow {
  private readonly members = new Set<HostWindowMember>();
  private readonly pacer: Pacer;
  private readonly latencies = new WindowedExtreme('min', LATENCY_FILTER_MS);
  private readonly deliveries: Array<[number, number, number]> = []; // [arrived, wire bytes, sent]
  /** The sum of the wire bytes in `deliveries`. */
  private deliveriesBytes = 0;
  private rates = new WindowedExtreme('max', RATE_FILTER_MS);
  private bestRate = 0;
  private probeUntil = 0;
  private nextProbe: number;
  private readonly now: () => number;
  private readonly headroomFraction: number;
  private total = 0;
  /** The runs sent in the last probe round (see probeSample). */
  private probe: ProbeRound | null = null;

  constructor(private readonly options: HostWindowOptions) {
    this.now = options.now ?? (() => performance.now());
    this.headroomFraction = options.headroomFraction ?? 0.1;
    this.pacer = new Pacer(this.now);
    this.nextProbe = this.now() + FIRST_PROBE_MS; // early: the start-up ramp overshoots
  }

  /** A member with `weight` (> 0); see HostWindowMember.onWake. */
  join(weight: number): HostWindowMember {
    const m = new HostWindowMember(this, weight);
    this.members.add(m);
    return m;
  }

  /** Wire bytes in flight across every member. */
  get bytesInFlight(): number {
    return this.total;
  }

  /** The aggregate delivery rate, bytes per ms (0 before the first sample). */
  get rate(): number {
    return this.bestRate;
  }

  /** Whether the window is still in start-up (its rate not found yet). */
  get inStartup(): boolean {
    return !this.pacer.filled;
  }

  /** The smallest recent latency of a background run, ms (null before the first). */
  get baseLatencyMs(): number | null {
    return this.latencies.value;
  }

  /** The bound on the sum of background wire bytes in flight now. */
  get bytes(): number {
    const base = this.baseLatencyMs;
    const { floorBytes, ceilingBytes, initialBytes } = this.options;
    if (base === null || this.bestRate <= 0) return initialBytes;
    // Now and then the window drops to half the product for two round trips, so a standing
    // queue drains and the base latency is measured again (a queue hides it); the link still
    // carries half its rate meanwhile.
    const t = this.now();
    if (t >= this.nextProbe) {
      this.probeUntil = t + Math.max(2 * base, 50);
      this.nextProbe = t + PROBE_EVERY_MS;
    }
    const product = this.bestRate * base;
    if (t < this.probeUntil) return clamp(product / 2, floorBytes, ceilingBytes);
    const gain = Math.max(1, this.pacer.windowGain(base));
    // At least one run: on a fast link runs are full batches, and a pipeline bound by the cores
    // (read, compress, decode) needs one more run in it than the product of the rate it reaches.
    let run = 0;
    for (const m of this.members) if (m.counts) run = Math.max(run, m.runBytes);
    const headroom = Math.max(floorBytes, this.headroomFraction * product, run);
    return clamp(product * gain + headroom, floorBytes, ceilingBytes);
  }

  /** The member's share of the window now: by weight among the members that want to copy. */
  shareOf(member: HostWindowMember): number {
    return shareIn(member, this.bytes, this.countingWeights());
  }

  /** @internal */
  mayCopy(member: HostWindowMember, nextBytes: number): boolean {
    member.wanting = true;
    // One look at the window and the weights for the whole decision: each is a pass over the members.
    const window = this.bytes;
    // A run goes if half of it fits under the window: the sum stays within half a run of it, and
    // the window can grow (it holds the rate it measures); one run may always be in flight.
    let allowed = this.total === 0;
    if (!allowed && this.total + nextBytes / 2 < window) {
      const weights = this.countingWeights();
      allowed =
        member.inFlight < shareIn(member, window, weights) || !this.someoneRefusedUnderShare(member, window, weights);
    }
    member.refused = !allowed;
    return allowed;
  }

  /** The sum of the weights of the members counted in the share split. */
  private countingWeights(): number {
    let weights = 0;
    for (const m of this.members) if (m.counts) weights += m.weight;
    return weights;
  }

  private someoneRefusedUnderShare(asking: HostWindowMember, window: number, weights: number): boolean {
    for (const m of this.members)
      if (m !== asking && m.refused && m.inFlight < shareIn(m, window, weights)) return true;
    return false;
  }

  /** @internal */
  added(member: HostWindowMember, bytes: number): void {
    this.total += bytes;
    this.probeSent();
    // The one that sent goes last in line: room that appears is offered first to those that waited longest.
    this.members.delete(member);
    this.members.add(member);
  }

  /** @internal */
  removed(bytes: number): void {
    this.total = Math.max(0, this.total - bytes);
    this.wakeRefused();
  }

  /**
   * Whether a run sent with `hostInFlight` wire bytes in flight (its own included) went with less
   * than the aggregate product on the link: the members together offered less than the link
   * carries (cheap runs of zeros or references under their image ceilings, the last copies'
   * tails, a latency probe), so its delivery rate says what they offered, not what the link can do.
   */
  appLimited(hostInFlight: number): boolean {
    const base = this.baseLatencyMs;
    return base !== null && hostInFlight < this.bestRate * base;
  }

  /**
   * @internal: a background run of `bytes` sent with `hostInFlight` in flight came back after
   * `latencyMs`. An app-limited run's rate (see appLimited) may raise the rate, never lower it,
   * as in BBR, and it keeps the rate from expiring: otherwise a stretch of cheap runs longer
   * than the rate filter's span leaves the window at what they carried, and when data comes
   * again only the probe rounds regrow it, by a quarter per cycle of eight round trips.
   */
  sample(hostInFlight: number, latencyMs: number, bytes: number, appLimited = false): void {
    if (!(latencyMs > 0)) return;
    const t = this.now();
    this.latencies.record(t, latencyMs);
    const base = this.baseLatencyMs!;
    // The delivery rate is the bytes delivered over the last few round trips (a probe round at
    // 1.25 must show in it, or the window never finds more of a fast link), over the longer of
    // the span of their arrivals and the span of their sends: a busy process hands over many
    // deliveries at once, which over their arrivals alone would read as a faster link, but the
    // runs that carried them were sent over the time the bytes really took. The span's first
    // delivery marks its start: its bytes arrived before it, so they are left out. Before the
    // span is half a round trip long, the bytes in flight over the latency they saw stand in.
    const sentAt = t - latencyMs;
    const spanMs = Math.max(RATE_SPAN_ROUNDS * base, RATE_SPAN_MIN_MS);
    while (this.deliveries.length && this.deliveries[0][0] < t - spanMs)
      this.deliveriesBytes -= this.deliveries.shift()![1];
    this.deliveries.push([t, bytes, sentAt]);
    this.deliveriesBytes += bytes;
    const spanRate = this.rateSince(0, this.deliveriesBytes, hostInFlight, latencyMs, base);
    // In start-up the rate grows by half each round: over eight rounds (and a cold connection's
    // first slow runs) the average lags it by far more than the 25% a round must show, and
    // start-up ended at a fifth of a 1 Gbit/s link, which the probe rounds then took a second
    // or two to climb. Start-up counts the last two round trips only.
    let rate = spanRate;
    if (!this.pacer.filled) {
      let from = this.deliveries.length - 1;
      let bytesFrom = bytes;
      const shortMs = Math.max(STARTUP_SPAN_ROUNDS * base, STARTUP_SPAN_MIN_MS);
      while (from > 0 && this.deliveries[from - 1][0] >= t - shortMs) bytesFrom += this.deliveries[--from][1];
      rate = this.rateSince(from, bytesFrom, hostInFlight, latencyMs, base);
    }
    // An app-limited run below the rate renews the rate instead: the first full runs after a cheap
    // stretch count their span's cheap deliveries too, and must not find the rate expired.
    this.rates.record(t, appLimited ? Math.max(rate, this.bestRate) : rate);
    const withoutProbe = this.rates.value!;
    const probed = this.probeSample(t, sentAt, bytes);
    // Only a probe that found clearly more counts: one that found the link full reads a little
    // above the rate (the rate over eight round trips holds its idle moments), and a window
    // that took that in kept a longer queue at 100 Mbit/s (on-demand p50 +2–3 ms).
    if (probed > 0 && probed >= PROBE_GROWTH * withoutProbe) this.rates.record(t, probed);
    const best = Math.max(0, this.rates.value!);
    this.bestRate = best;
    // No latency signal here: members' runs queue behind each other's by design, and the rate is
    // measured over a long span that a short probe round hardly moves, so an early end would stick.
    const wasFilled = this.pacer.filled;
    this.pacer.observe(best, base);
    if (!wasFilled && this.pacer.filled) {
      // Start-up's short spans read high now and then, and the largest would hold the window
      // (and a queue) above the link for RATE_FILTER_MS: from here on, the long span's rate.
      this.rates = new WindowedExtreme('max', RATE_FILTER_MS);
      this.rates.record(t, spanRate);
      this.bestRate = spanRate;
    }
  }

  /**
   * The delivery rate of `this.deliveries` from index `from` on (`bytesFrom` their bytes), over
   * the longer of their arrivals' and their sends' spans; the first one's bytes arrived before
   * the span starts. Before the span is half a round trip long, the bytes in flight over the
   * latency they saw stand in.
   */
  private rateSince(from: number, bytesFrom: number, hostInFlight: number, latencyMs: number, base: number): number {
    const first = this.deliveries[from];
    const last = this.deliveries[this.deliveries.length - 1];
    if (last[0] - first[0] < base / 2) return hostInFlight / latencyMs;
    return (bytesFrom - first[1]) / Math.max(last[0] - first[0], last[2] - first[2]);
  }

  /** Notes a send in a probe round (the window at 1.25 × the product), past start-up. */
  private probeSent(): void {
    if (this.options.probeSamples === false) return;
    const base = this.baseLatencyMs;
    if (base === null || this.bestRate <= 0 || !this.pacer.filled || this.pacer.windowGain(base) <= 1) return;
    const t = this.now();
    if (t < this.probeUntil) return; // a latency probe's sends say nothing of the rate
    const p = this.probe;
    if (p && !p.done && t - p.lastSent <= base) p.lastSent = t;
    else
      this.probe = {
        firstSent: t,
        lastSent: t,
        delivered: 0,
        firstBytes: 0,
        firstArrived: 0,
        lastArrived: 0,
        done: false,
      };
  }

  /**
   * The delivery rate of the last probe round's runs once they have all arrived (0 otherwise).
   * Over eight round trips a probe round at 1.25 moves the rate by 3%, and past start-up that is
   * all the rate can grow by per cycle: at 1 Gbit/s × 5 ms the shared window took 2–3 s to climb
   * from half the link. The probe's own runs show what the link carried when offered 1.25 × the
   * rate. Over the longer of their arrivals' and their sends' spans as the rate is, and at most
   * the probe's gain above the rate: a busy process's bunched arrivals cannot raise it further.
   */
  private probeSample(t: number, sentAt: number, bytes: number): number {
    const p = this.probe;
    if (!p || p.done) return 0;
    if (sentAt >= p.firstSent - SEND_MATCH_MS && sentAt <= p.lastSent + SEND_MATCH_MS) {
      if (p.delivered === 0) {
        p.firstBytes = bytes;
        p.firstArrived = t;
      }
      p.delivered += bytes;
      p.lastArrived = t;
      return 0;
    }
    if (sentAt < p.firstSent) return 0; // a run sent before the probe
    // A run sent after the probe arrived: the probe's runs are in (one alone spans nothing).
    if (p.delivered === p.firstBytes) return 0;
    p.done = true;
    const span = Math.max(p.lastArrived - p.firstArrived, p.lastSent - p.firstSent);
    if (span < (this.baseLatencyMs ?? 0) / 4) return 0; // too short to say anything
    return Math.min((p.delivered - p.firstBytes) / span, this.bestRate * PROBE_GAIN);
  }

  /** @internal */
  left(member: HostWindowMember): void {
    this.members.delete(member);
    this.wakeRefused();
  }

  /** @internal */
  wakeRefused(): void {
    for (const m of [...this.members]) if (m.refused) m.wake();
  }
}

/** One copy's place in a HostWindow. */
export class HostWindowMember {
  /** Wire bytes this member has in flight. */
  inFlight = 0;
  /** It asked since it last went idle (counts for the share split). */
  wanting = false;
  /** It was refused room and waits for a wake. */
  refused = false;
  /** Wire bytes of the last run it sent. */
  runBytes = 0;
  private gone = false;
  private wakeUp: () => void = () => undefined;

  constructor(
    private readonly host: HostWindow,
    private weightNow: number,
  ) {
    if (!(weightNow > 0)) throw new Error(`host window: weight must be > 0 (got ${weightNow})`);
  }

  /** What to call when room may have appeared after a refusal (the copy looks again). */
  onWake(wake: () => void): void {
    this.wakeUp = wake;
  }

  /** @internal */
  wake(): void {
    this.wakeUp(); // still counted as refused until it asks again: others above their share keep off its room
  }

  get weight(): number {
    return this.weightNow;
  }

  /** Counted in the share split: wants to copy, or still has runs in flight. */
  get counts(): boolean {
    return !this.gone && (this.wanting || this.inFlight > 0);
  }

  /** Whether a background run of `nextBytes` wire bytes may be sent now (records the ask: a refused member is woken later). */
  mayCopy(nextBytes = 0): boolean {
    if (this.gone) return true;
    return this.host.mayCopy(this, nextBytes);
  }

  /** The shared path's delivery rate, bytes per ms (0 before the first sample). */
  get linkRate(): number {
    return this.host.rate;
  }

  /** The member's share of the host window now. */
  get share(): number {
    return this.host.shareOf(this);
  }

  /** A background run of `wireBytes` was sent; returns the host's wire bytes in flight with it. */
  sent(wireBytes: number): number {
    if (this.gone) return wireBytes;
    this.runBytes = wireBytes;
    this.inFlight += wireBytes;
    this.refused = false;
    this.host.added(this, wireBytes);
    return this.host.bytesInFlight;
  }

  /** Whether a run sent with `hostInFlightAtSend` (what `sent` returned) left the link under-used (see HostWindow.appLimited). */
  appLimited(hostInFlightAtSend: number): boolean {
    return !this.gone && this.host.appLimited(hostInFlightAtSend);
  }

  /**
   * The data of a run sent with `sent(wireBytes)` arrived `latencyMs` after it was sent;
   * `appLimited` as `appLimited(hostInFlightAtSend)` answered when it was sent.
   */
  delivered(wireBytes: number, hostInFlightAtSend: number, latencyMs: number, appLimited = false): void {
    if (this.gone) return;
    this.host.sample(hostInFlightAtSend, latencyMs, wireBytes, appLimited);
    this.done(wireBytes);
  }

  /** A run sent with `sent(wireBytes)` failed: its bytes leave the window without a sample. */
  failed(wireBytes: number): void {
    if (!this.gone) this.done(wireBytes);
  }

  /** It stopped wanting to copy (paused, all held): its weight goes to the others. */
  idle(): void {
    if (this.gone || !this.wanting) return;
    this.wanting = false;
    this.refused = false;
    this.host.wakeRefused();
  }

  setWeight(weight: number): void {
    if (!(weight > 0)) throw new Error(`host window: weight must be > 0 (got ${weight})`);
    this.weightNow = weight;
    this.host.wakeRefused();
  }

  /** Leaves the window: its bytes in flight stop counting, its share goes to the others. */
  leave(): void {
    if (this.gone) return;
    this.gone = true;
    this.host.removed(this.inFlight);
    this.inFlight = 0;
    this.wanting = false;
    this.refused = false;
    this.host.left(this);
  }

  private done(wireBytes: number): void {
    const bytes = Math.min(wireBytes, this.inFlight);
    this.inFlight -= bytes;
    this.host.removed(bytes);
  }
}

/** The base latency is the smallest of this long. */
const LATENCY_FILTER_MS = 10_000;
/** The rate is the largest of this long (a link that got slower is believed after it). */
const RATE_FILTER_MS = 2_500;
/** Deliveries are counted over this many round trips (a cycle of the gains)... */
const RATE_SPAN_ROUNDS = 8;
/** ...and over this long at least, next to a busy process's stalls. */
const RATE_SPAN_MIN_MS = 100;
/** In start-up, over this many round trips, and this long at least. */
const STARTUP_SPAN_ROUNDS = 2;
const STARTUP_SPAN_MIN_MS = 20;
const FIRST_PROBE_MS = 1_000;
/** A probe round's gain: its runs' rate counts up to this much above the rate. */
const PROBE_GAIN = 1.25;
/** ...and counts only if it is this much above it. */
const PROBE_GROWTH = 1.1;
/** A run's send time, recovered from its latency, matches a recorded send within this. */
const SEND_MATCH_MS = 0.5;
const PROBE_EVERY_MS = 8_000;

interface ProbeRound {
  firstSent: number;
  lastSent: number;
  /** Wire bytes of its runs delivered so far, and the first one's (the span starts at its arrival). */
  delivered: number;
  firstBytes: number;
  firstArrived: number;
  lastArrived: number;
  /** Its sample was taken. */
  done: boolean;
}

/** A member's share of `window` when the members counted in the split weigh `weights` (one asking counts as wanting). */
function shareIn(member: HostWindowMember, window: number, weights: number): number {
  return (window * member.weight) / (member.counts ? weights : weights + member.weight);
}

function clamp(x: number, lo: number, hi: number): number {
  return Math.round(Math.max(lo, Math.min(hi, x)));
}
