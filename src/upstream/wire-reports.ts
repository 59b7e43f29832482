/**
 * The source's write reports on a ferry-wire upstream: DIRTY reports while
 * it runs and its final write set at cutover (docs/wire-protocol.md). Each
 * is checked against the image and block size, handed on as a DirtyReport,
 * and acknowledged on the stream it came on (the final set on the urgent
 * stream of the moment). Reports that come before anyone listens are held
 * and handed to the first listener.
 */
import type { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { Dirty } from '../wire/messages';
import { CorruptFrameError, type CutoverSet, type WireStream } from '../wire/wire-stream';
import type { DirtyReport } from './upstream';
import type { WireStats } from './wire-stats';

export class WireReports {
  /** cutover() calls waiting for the final set, and the urgent stream the request went out on. */
  private cutoverWaiters: Array<{ resolve: (r: DirtyReport) => void; reject: (e: Error) => void }> = [];
  private cutoverAskedOn: WireStream | null = null;
  /** The final set received and not yet acknowledged: asking again gives it. */
  private cutoverReport: { seq: number; report: DirtyReport } | null = null;
  /** The final set acknowledged, sent again on every new urgent stream (the source ignores a repeat). */
  private cutoverAcked: number | null = null;
  /** Reports that came before anyone listened (during open()): handed over to the first listener. */
  private undelivered: { dirty: DirtyReport[]; cutover: DirtyReport | null } = { dirty: [], cutover: null };

  constructor(
    /** Emits 'dirty' and 'cutover' (the upstream). */
    private readonly events: EventEmitter,
    private readonly blockSize: number,
    private readonly stats: WireStats,
    /** The urgent stream now, if up. */
    private readonly urgent: () => WireStream | null,
    private readonly log: Logger,
  ) {
    events.on('newListener', (event: string) => {
      if (event !== 'dirty' && event !== 'cutover') return;
      setImmediate(() => this.deliver()); // the listener is added after this event
    });
  }

  /** The final set, when one was received and not acknowledged yet. */
  get pendingCutover(): DirtyReport | null {
    return this.cutoverReport?.report ?? null;
  }

  /** Waits for the final write set, asking for it on the urgent stream. */
  requestCutover(): Promise<DirtyReport> {
    const answer = new Promise<DirtyReport>((resolve, reject) => this.cutoverWaiters.push({ resolve, reject }));
    this.askCutover();
    return answer;
  }

  /** Every cutover() waiting fails with `err` (the upstream closed or failed for good). */
  failWaiters(err: Error): void {
    for (const w of this.cutoverWaiters.splice(0)) w.reject(err);
  }

  /** Listens to a new stream's reports. */
  watch(stream: WireStream): void {
    stream.on('dirty', (d: Dirty) => this.onDirty(stream, d));
    stream.on('cutover', (set: CutoverSet) => this.onCutover(stream, set));
  }

  /** A new urgent stream: the source resends what was not acknowledged; so do we. */
  onUrgentStream(stream: WireStream): void {
    if (this.cutoverAcked !== null) stream.ackDirty(this.cutoverAcked);
    this.askCutover();
  }

  /** A DIRTY report: checked against the image and block size, then handed on; its ack goes back on its stream. */
  private onDirty(stream: WireStream, d: Dirty): void {
    const bs = this.blockSize;
    const size = stream.welcome?.imageSize ?? 0; // the upstream's size is not set yet during open()
    for (const r of d.ranges) {
      const end = r.offset + r.length;
      if (r.offset % bs !== 0 || end > size || (end % bs !== 0 && end !== size)) {
        stream.destroy(
          new CorruptFrameError(`DIRTY ${d.seq} range ${r.offset}+${r.length} is not whole blocks of the image`),
        );
        this.stats.corruptFrames++;
        return;
      }
    }
    let acked = false;
    const report: DirtyReport = {
      ranges: d.ranges,
      ack: () => {
        if (acked) return;
        acked = true;
        stream.ackDirty(d.seq); // a stream gone by then sends nothing: the source sends the report again
      },
    };
    this.undelivered.dirty.push(report);
    this.deliver();
  }

  /** Emits the reports held back while nobody listened. The source sends at most its window of them unacked. */
  private deliver(): void {
    const events = this.events;
    if (events.listenerCount('dirty') > 0) for (const r of this.undelivered.dirty.splice(0)) events.emit('dirty', r);
    const cut = this.undelivered.cutover;
    if (cut && events.listenerCount('cutover') > 0) {
      this.undelivered.cutover = null;
      if (this.cutoverReport?.report === cut) events.emit('cutover', cut);
    }
  }

  /** A final write set: the answer to cutover(), or the source's own cutover ('cutover' event). */
  private onCutover(stream: WireStream, set: CutoverSet): void {
    if (set.seq === this.cutoverAcked || set.seq === this.cutoverReport?.seq) return; // a repeat
    const bs = this.blockSize;
    const size = stream.welcome?.imageSize ?? 0;
    const bad = set.ranges.find((r) => r.offset % bs !== 0 || r.offset + r.length > size);
    if (bad) {
      this.stats.corruptFrames++;
      stream.destroy(new CorruptFrameError(`CUTOVER range ${bad.offset}+${bad.length} outside the image`));
      return;
    }
    const report: DirtyReport = {
      ranges: set.ranges,
      ack: () => {
        if (this.cutoverReport?.seq !== set.seq) return;
        this.cutoverReport = null;
        this.cutoverAcked = set.seq;
        this.urgent()?.ackDirty(set.seq); // else sent when the urgent stream is back
      },
    };
    this.cutoverReport = { seq: set.seq, report };
    this.cutoverAskedOn = null;
    const waiters = this.cutoverWaiters.splice(0);
    this.log.info({ seq: set.seq, ranges: set.ranges.length, solicited: waiters.length > 0 }, 'final write set');
    if (waiters.length) for (const w of waiters) w.resolve(report);
    else {
      this.undelivered.cutover = report;
      this.deliver();
    }
  }

  /** Sends CUTOVER_REQUEST once per urgent stream while a cutover() waits. */
  private askCutover(): void {
    const urgent = this.urgent();
    if (this.cutoverWaiters.length === 0 || !urgent || this.cutoverAskedOn === urgent) return;
    if (urgent.requestCutover()) this.cutoverAskedOn = urgent;
  }
}
