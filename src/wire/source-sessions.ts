/**
 * The source's destinations, by session id, and its write tracking: each
 * session's DirtyTracker, the DIRTY reports sent on its urgent connection,
 * and the fence and final write sets of a cutover. Every change of that
 * state happens here; the connections only pass messages in and frames out.
 *
 * A session is created by the first HELLO with its id and lives across
 * reconnects; tracking for it starts then. A session forgotten (idle too
 * long) and created again gets a new tracking epoch, so its destination
 * knows that reports may have been lost.
 */
import crypto from 'node:crypto';
import type { Logger } from 'pino';
import type { TrackingDevice, WriteSink } from '../store/tracking-device';
import { DedupeTable } from './dedupe-table';
import { DirtyTracker } from './dirty-tracker';
import { encodeCutoverFrames, encodeDirty, type ByteRange, type Hello } from './messages';
import {
  type CutoverRecord,
  pairsToRanges,
  rangesToPairs,
  readCutoverRecord,
  removeCutoverRecord,
  writeCutoverRecord,
} from './cutover-record';
import { Tracking } from './protocol';
import { SendPacer } from './send-pacer';

/** Where a session's DIRTY and CUTOVER frames go: its urgent connection. */
export interface SessionLink {
  sendFrames(frames: Buffer[]): void;
}

interface CutoverEntry {
  seq: number;
  ranges: ByteRange[];
  acked: boolean;
}

export class SourceSession implements WriteSink {
  readonly dedupe = new DedupeTable();
  connections = 0;
  urgent: SessionLink | null = null;
  idleSince = Date.now();
  cutover: CutoverEntry | null = null;
  flushTimer: NodeJS.Timeout | null = null;
  /** DIRTY reports sent, for status. */
  reportsSent = 0;
  /** Spaces the background batches of every connection of this session (PACE). */
  readonly pacer = new SendPacer();

  constructor(
    readonly id: string,
    readonly blockSize: number,
    readonly epoch: string,
    readonly tracker: DirtyTracker | null,
    private readonly onDirty: (session: SourceSession) => void,
  ) {}

  markDirty(offset: number, length: number): void {
    this.tracker!.mark(offset, length);
    this.onDirty(this);
  }
}

export interface SessionStatus {
  id: string;
  blockSize: number;
  trackingEpoch: string;
  connections: number;
  urgentConnected: boolean;
  pendingBlocks: number;
  unackedReports: number;
  reportsSent: number;
  /** The rate its background batches are paced at (PACE), bytes per second; 0: unpaced. */
  pacedBytesPerSecond: number;
  /** The final write set sent at cutover, if fenced. */
  cutover: { seq: number; ranges: number; bytes: number; acked: boolean } | null;
}

export interface SourceStatus {
  role: 'source';
  tracking: 'stream' | 'none';
  fenced: boolean;
  cutoverRecord: string | null;
  refusedWrites: number;
  sessions: SessionStatus[];
}

export interface SourceSessionsOptions {
  imageSize: number;
  /** The image's path and identity, recorded with a cutover. */
  image: string;
  identity: string;
  /** The VM's view of the image when the source serves it over NBD; null when nothing can write. */
  device: TrackingDevice | null;
  /** The cutover record's file; null when the source does not track writes. */
  recordPath: string | null;
  log: Logger;
  /** Coalescing delay of DIRTY reports. */
  reportDelayMs?: number;
  /** A session without connections is forgotten after this long (one with a cutover set never is). */
  idleMs?: number;
  /** Sessions kept at once; beyond it the longest idle one is forgotten, or the HELLO refused. */
  maxSessions?: number;
}

const DEFAULT_MAX_SESSIONS = 64;

const DEFAULT_REPORT_DELAY_MS = 20;
const DEFAULT_IDLE_MS = 60 * 60 * 1000;
/** A session of a source that tracks nothing holds only its dedupe table: forget it sooner. */
const UNTRACKED_IDLE_MS = 60_000;

export class SourceSessions {
  private readonly sessions = new Map<string, SourceSession>();
  private record: CutoverRecord | null;
  private cutting: Promise<void> | null = null;
  private readonly sweeper: NodeJS.Timeout;
  readonly tracking: boolean;

  constructor(private readonly options: SourceSessionsOptions) {
    this.record = options.recordPath ? readCutoverRecord(options.recordPath) : null;
    this.tracking = options.device !== null || this.record !== null;
    if (this.record) this.restore(this.record);
    this.sweeper = setInterval(() => this.sweep(), 10_000);
    this.sweeper.unref();
  }

  /** Fenced by a cutover, one in progress, or one whose record could not be written (the VM stays fenced). */
  get fenced(): boolean {
    return this.record !== null || this.cutting !== null || this.options.device?.isFenced === true;
  }

  close(): void {
    clearInterval(this.sweeper);
    for (const s of this.sessions.values()) if (s.flushTimer) clearTimeout(s.flushTimer);
  }

  /** The session a HELLO belongs to, created at its first HELLO; a string says why the HELLO is refused. */
  open(hello: Hello): SourceSession | string {
    let session = this.sessions.get(hello.session);
    if (session) {
      if (session.blockSize !== hello.blockSize)
        return `session ${hello.session} uses block size ${session.blockSize}, not ${hello.blockSize}`;
      return session;
    }
    // Each session holds a bitmap of the image: a peer making up session ids must not grow them without bound.
    if (this.sessions.size >= (this.options.maxSessions ?? DEFAULT_MAX_SESSIONS) && !this.forgetLongestIdle())
      return `too many sessions (${this.sessions.size}, every one connected or cut over)`;
    const tracker = this.tracking ? new DirtyTracker(this.options.imageSize, hello.blockSize) : null;
    session = new SourceSession(hello.session, hello.blockSize, tracker ? crypto.randomUUID() : '', tracker, (s) =>
      this.scheduleReport(s),
    );
    this.sessions.set(hello.session, session);
    if (this.record) {
      // Created after the fence: no write can reach it, its final set is empty, and it must stay so after a restart.
      session.cutover = { seq: tracker!.takeSeq(), ranges: [], acked: false };
      this.persist();
    } else if (tracker) this.options.device?.addSink(session);
    this.options.log.info({ session: hello.session, blockSize: hello.blockSize }, 'new session');
    return session;
  }

  welcomeTracking(session: SourceSession): { tracking: number; trackingEpoch: string } {
    return session.tracker
      ? { tracking: Tracking.Stream, trackingEpoch: session.epoch }
      : { tracking: Tracking.None, trackingEpoch: '' };
  }

  connected(session: SourceSession): void {
    session.connections++;
  }

  /**
   * A new urgent connection of the session: reports not acknowledged on the
   * old one are sent again, and a fenced source sends the final set.
   */
  attachUrgent(session: SourceSession, link: SessionLink): void {
    session.urgent = link;
    if (!session.tracker) return;
    session.tracker.requeueUnacked();
    if (session.cutover) {
      if (!session.cutover.acked) this.sendCutover(session, link);
    } else this.scheduleReport(session);
  }

  disconnected(session: SourceSession, link: SessionLink): void {
    if (session.urgent === link) session.urgent = null;
    if (--session.connections === 0) session.idleSince = Date.now();
  }

  /** DIRTY_ACK: a report (or the final set) is durable at the destination. */
  ack(session: SourceSession, seq: number): void {
    if (!session.tracker) return;
    const cut = session.cutover;
    if (cut && cut.seq === seq) {
      if (!cut.acked) {
        cut.acked = true;
        this.persist();
        this.options.log.info({ session: session.id, seq }, 'destination acknowledged the final write set');
      }
      return;
    }
    if (session.tracker.ack(seq)) this.scheduleReport(session);
  }

  /**
   * CUTOVER_REQUEST: fences the source (once) and sends the session's final
   * set on `link`, even if it was pushed there already (the destination
   * ignores a set it holds).
   */
  async requestCutover(session: SourceSession, link: SessionLink): Promise<void> {
    if (!session.tracker) throw new Error('this source does not track writes: it has no final write set to send');
    await this.cutover();
    this.sendCutover(session, link);
  }

  /**
   * Fences the VM's disk, waits for the writes in progress, persists every
   * session's final set, and only then sends it to every connected session.
   * Asking again gives the same sets.
   */
  cutover(): Promise<void> {
    if (this.record) return Promise.resolve();
    if (!this.tracking) return Promise.reject(new Error('this source does not track writes (no --nbd-listen)'));
    this.cutting ??= this.fenceAndRecord().finally(() => (this.cutting = null));
    return this.cutting;
  }

  /** Takes writes again: only while no destination has acknowledged a final set (it would be a split brain). */
  unfence(): void {
    if (!this.fenced) throw new Error('the source is not fenced');
    if (this.cutting) throw new Error('a cutover is in progress; ask again once it is done');
    const acked = [...this.sessions.values()].filter((s) => s.cutover?.acked).map((s) => s.id);
    if (acked.length > 0)
      throw new Error(
        `refusing to unfence: destination session ${acked.join(', ')} acknowledged the cutover and is the authority now`,
      );
    removeCutoverRecord(this.options.recordPath!);
    this.record = null;
    for (const s of this.sessions.values()) {
      s.cutover = null;
      if (s.tracker) this.options.device?.addSink(s);
      this.scheduleReport(s);
    }
    this.options.device?.unfence();
    this.options.log.warn('unfenced: the source takes writes again and the cutover is void');
  }

  status(): SourceStatus {
    return {
      role: 'source',
      tracking: this.tracking ? 'stream' : 'none',
      fenced: this.fenced,
      cutoverRecord: this.record ? this.options.recordPath : null,
      refusedWrites: this.options.device?.refusedWrites ?? 0,
      sessions: [...this.sessions.values()].map((s) => ({
        id: s.id,
        blockSize: s.blockSize,
        trackingEpoch: s.epoch,
        connections: s.connections,
        urgentConnected: s.urgent !== null,
        pendingBlocks: s.tracker?.pendingBlocks ?? 0,
        unackedReports: s.tracker?.unackedReports ?? 0,
        reportsSent: s.reportsSent,
        pacedBytesPerSecond: s.pacer.bytesPerSecond,
        cutover: s.cutover && {
          seq: s.cutover.seq,
          ranges: s.cutover.ranges.length,
          bytes: s.cutover.ranges.reduce((n, r) => n + r.length, 0),
          acked: s.cutover.acked,
        },
      })),
    };
  }

  private async fenceAndRecord(): Promise<void> {
    const log = this.options.log;
    log.warn('fencing: the source takes no more writes from its VM');
    await this.options.device?.fence();
    for (const s of this.sessions.values()) {
      if (s.flushTimer) clearTimeout(s.flushTimer);
      s.flushTimer = null;
      if (s.tracker) s.cutover = { seq: s.tracker.takeSeq(), ranges: s.tracker.finalSet(), acked: false };
    }
    const record: CutoverRecord = {
      version: 1,
      image: this.options.image,
      identity: this.options.identity,
      imageSize: this.options.imageSize,
      fencedAt: new Date().toISOString(),
      sessions: {},
    };
    this.record = record;
    try {
      this.persist();
    } catch (e) {
      this.record = null; // the device stays fenced; the next request tries again
      for (const s of this.sessions.values()) s.cutover = null;
      throw e;
    }
    for (const s of this.sessions.values()) {
      this.options.device?.removeSink(s);
      if (s.urgent && s.cutover) this.sendCutover(s, s.urgent);
    }
    log.info(
      { record: this.options.recordPath, sessions: this.sessions.size },
      'cut over: final write sets recorded and sent',
    );
  }

  private persist(): void {
    const record = this.record!;
    record.sessions = {};
    for (const s of this.sessions.values()) {
      if (!s.cutover) continue;
      record.sessions[s.id] = {
        blockSize: s.blockSize,
        epoch: s.epoch,
        seq: s.cutover.seq,
        ranges: rangesToPairs(s.cutover.ranges),
        acked: s.cutover.acked,
      };
    }
    writeCutoverRecord(this.options.recordPath!, record);
  }

  /** A restarted source: the recorded sessions, fenced, with their epochs and final sets. */
  private restore(record: CutoverRecord): void {
    const { image, identity, imageSize } = this.options;
    if (record.identity !== identity || record.imageSize !== imageSize) {
      throw new Error(
        `cutover record ${this.options.recordPath} belongs to image ${record.identity} (${record.imageSize} bytes), ` +
          `not ${identity} (${imageSize} bytes) at ${image}; remove it if that migration is over`,
      );
    }
    for (const [id, r] of Object.entries(record.sessions)) {
      const tracker = new DirtyTracker(imageSize, r.blockSize, { firstSeq: r.seq + 1 });
      const ranges = pairsToRanges(r.ranges);
      tracker.markRanges(ranges); // reported again should the migration be abandoned (unfence)
      const session = new SourceSession(id, r.blockSize, r.epoch, tracker, (s) => this.scheduleReport(s));
      session.cutover = { seq: r.seq, ranges, acked: r.acked };
      this.sessions.set(id, session);
    }
    void this.options.device?.fence();
    this.options.log.warn(
      { record: this.options.recordPath, fencedAt: record.fencedAt, sessions: this.sessions.size },
      'fenced by an earlier cutover: NBD writes are refused (ferry ctl unfence to abandon that migration)',
    );
  }

  private scheduleReport(session: SourceSession): void {
    if (session.flushTimer || !session.urgent || this.fenced || !session.tracker?.hasReport) return;
    session.flushTimer = setTimeout(() => {
      session.flushTimer = null;
      this.sendReports(session);
    }, this.options.reportDelayMs ?? DEFAULT_REPORT_DELAY_MS);
  }

  private sendReports(session: SourceSession): void {
    const link = session.urgent;
    if (!link || this.fenced) return;
    const frames: Buffer[] = [];
    for (let report = session.tracker!.takeReport(); report; report = session.tracker!.takeReport())
      frames.push(encodeDirty(report));
    session.reportsSent += frames.length;
    if (frames.length) link.sendFrames(frames);
  }

  private sendCutover(session: SourceSession, link: SessionLink): void {
    const cut = session.cutover!;
    link.sendFrames(encodeCutoverFrames(cut.seq, cut.ranges));
  }

  /**
   * Forgets the session idle the longest (none with a cutover set): its
   * destination, if it comes back, gets a new tracking epoch and fetches
   * again what it copied. False when every session is in use.
   */
  private forgetLongestIdle(): boolean {
    let oldest: SourceSession | null = null;
    for (const s of this.sessions.values()) {
      if (s.connections > 0 || s.cutover) continue;
      if (!oldest || s.idleSince < oldest.idleSince) oldest = s;
    }
    if (!oldest) return false;
    this.forget(oldest);
    this.options.log.info({ session: oldest.id }, 'forgot an idle session to make room for a new one');
    return true;
  }

  private forget(s: SourceSession): void {
    this.options.device?.removeSink(s);
    if (s.flushTimer) clearTimeout(s.flushTimer);
    this.sessions.delete(s.id);
  }

  private sweep(): void {
    const now = Date.now();
    for (const [id, s] of this.sessions) {
      if (s.connections > 0 || s.cutover) continue;
      if (now - s.idleSince < (s.tracker ? (this.options.idleMs ?? DEFAULT_IDLE_MS) : UNTRACKED_IDLE_MS)) continue;
      this.forget(s);
      this.options.log.info({ session: id }, 'forgot an idle session');
    }
  }
}
