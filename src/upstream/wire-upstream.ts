/**
 * A ferry source as the upstream of a migrating destination: its streams
 * (one urgent, several background), replaced with backoff when they drop
 * (each slot's delays start over only after a stream that carried data),
 * and the fetches that run on them. A fetch is cut into FETCH requests
 * (wire-fetch-plan), every batch is decoded and verified on the worker pool
 * (wire-batch-decoder); a block that fails its checksum is fetched again
 * (and counted), never returned; a reference is honoured only when the
 * destination still holds that content (wire-references), else the block is
 * fetched as bytes. A source that tracks its VM's writes sends them as DIRTY
 * reports and, at cutover, its final write set (wire-reports).
 */
import { EventEmitter } from 'node:events';
import crypto from 'node:crypto';
import type { Logger } from 'pino';
import type { CodecPool } from '../pool';
import type {
  FetchPriority,
  LinkStats,
  LocalBlocks,
  Upstream,
  WriteTracking,
  DirtyReport,
  ZeroRangeAnswer,
} from './upstream';
import type { WireAuth } from '../wire/auth';
import { Backoff, Gate, pause, retry } from '../util/backoff';
import { WireRefusedError, WireStream } from '../wire/wire-stream';
import { RefuseCode, Role, Tracking, WelcomeFlag, WIRE_VERSION, WireEncoding } from '../wire/protocol';
import { parseFerryUrl, type FerryTarget } from './ferry-url';
import { emptyWireStats, wireLinkStats, type WireStats } from './wire-stats';
import { fetchFlags, fetchPieces } from './wire-fetch-plan';
import { WireBatchDecoder, type FetchOutput } from './wire-batch-decoder';
import { ReferenceResolver, type ReferenceChecks } from './wire-references';
import { WireReports } from './wire-reports';
import { welcomeProblem } from './wire-welcome';
import { BatchBuffers } from '../wire/batch-buffers';
import { LargeBufferPool } from '../nbd/buffer-pool';

export { parseFerryUrl, type FerryTarget } from './ferry-url';
export type { WireStats } from './wire-stats';
export { fetchFlags } from './wire-fetch-plan';

export interface WireUpstreamOptions {
  blockSize: number;
  backgroundStreams: number;
  maxBatchBlocks: number;
  connectTimeoutMs: number;
  minBackoffMs: number;
  maxBackoffMs: number;
  /** A stream whose source sends no frame for this long while requests wait is dropped (and replaced). */
  stallTimeoutMs: number;
  /** Attempts per block before a fetch gives up (corrupt data every time). */
  maxAttempts: number;
  /**
   * The session id the source knows this destination by. Keep it across
   * restarts (the source's unacknowledged reports and final set belong to
   * it); default: a new random one.
   */
  session?: string;
}

export class WireUpstream extends EventEmitter implements Upstream {
  size = 0;
  identity = '';
  reconnects = 0;
  readonly stats: WireStats = emptyWireStats();
  private urgent: WireStream | null = null;
  private readonly background: Array<WireStream | null>;
  private target: FerryTarget;
  private closing = false;
  private readonly abort = new AbortController();
  /** Open while the urgent stream is up, and while at least one background stream is. */
  private urgentGate = new Gate();
  private backgroundGate = new Gate();
  readonly session: string;
  private reconnecting = new Set<number>();
  /** What the streams no longer in a slot read. */
  private readBefore = 0;
  /** Each slot's reconnect delays (index -1: the urgent stream), kept across its streams. */
  private readonly backoffs = new Map<number, Backoff>();
  private fatal: Error | null = null;
  /** The pace asked of the source (0: none yet); a new background stream asks it again. */
  private pacingRate = 0;
  private trackingMode: WriteTracking = 'none';
  /** The source answers HASH_QUERY (WELCOME said so). */
  private hashes = false;
  private epoch = '';
  /** The first stream's WELCOME was taken: size and identity are the image's. */
  private welcomed = false;
  private readonly reports: WireReports;
  private readonly references: ReferenceResolver;
  private readonly decoder: WireBatchDecoder;
  /** Buffers BATCH payloads arrive in and are decoded in, reused once their blocks are placed. */
  private readonly batchBuffers: BatchBuffers;
  /** Bytes of the largest batch decoded: the size of every batch buffer. */
  private readonly batchCapacity: number;
  /** The checksums the blocks of each fetch() result were verified against, until it is recycled. */
  private readonly verified = new WeakMap<Buffer, BigUint64Array>();
  /** fetch() results, back from recycle(). */
  private readonly outputs = new LargeBufferPool(4096, KEPT_OUTPUT_BYTES);

  private constructor(
    private url: string,
    private readonly auth: WireAuth,
    pool: CodecPool,
    private readonly options: WireUpstreamOptions,
    private readonly log: Logger,
  ) {
    super();
    this.target = parseFerryUrl(url);
    this.background = new Array(options.backgroundStreams).fill(null);
    this.session = options.session ?? crypto.randomUUID();
    this.reports = new WireReports(this, options.blockSize, this.stats, () => this.urgent, log);
    this.references = new ReferenceResolver(pool, options.blockSize, () => this.size);
    this.batchCapacity = options.maxBatchBlocks * options.blockSize;
    this.batchBuffers = new BatchBuffers(KEPT_BATCH_BUFFERS * this.batchCapacity);
    this.decoder = new WireBatchDecoder(pool, options.blockSize, this.stats, this.references, (buffer) => {
      if (buffer.byteLength === this.batchCapacity) this.batchBuffers.give(buffer);
    });
  }

  static async open(
    url: string,
    auth: WireAuth,
    pool: CodecPool,
    options: WireUpstreamOptions,
    log: Logger,
  ): Promise<WireUpstream> {
    const u = new WireUpstream(url, auth, pool, options, log);
    const urgent = await u.openStream(Role.Urgent);
    const welcome = urgent.welcome!;
    u.size = welcome.imageSize;
    u.identity = welcome.identity;
    u.stats.codec = welcome.codec;
    u.trackingMode = welcome.tracking === Tracking.Stream ? 'stream' : 'none';
    u.epoch = welcome.trackingEpoch;
    u.hashes = (urgent.welcomeFlags & WelcomeFlag.BlockHashes) !== 0;
    u.install(-1, urgent); // from now on a dropped stream is replaced
    // The background streams together: each is a connection, a TLS handshake and a hello, a few
    // round trips that over a WAN are most of a migration's start.
    const opened = await Promise.allSettled(u.background.map(() => u.openStream(Role.Background)));
    opened.forEach((r, i) => {
      if (r.status === 'fulfilled') u.install(i, r.value);
    });
    const failed = opened.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      await u.close(); // closes the streams that did open
      throw failed.reason;
    }
    return u;
  }

  /** 'stream' when the source tracks its VM's writes (ferry source --nbd-listen), else 'none'. */
  get tracking(): WriteTracking {
    return this.trackingMode;
  }

  get trackingEpoch(): string {
    return this.epoch;
  }

  /**
   * Asks the source to fence itself and resolves its final write set. Calls
   * before the set is acknowledged share one request and one answer; the
   * request is sent again on each new urgent stream until answered.
   */
  cutover(): Promise<DirtyReport> {
    if (this.trackingMode === 'none') return Promise.resolve({ ranges: [], ack: () => undefined });
    const pending = this.reports.pendingCutover;
    if (pending) return Promise.resolve(pending);
    if (this.closing) return Promise.reject(new Error('upstream closed'));
    if (this.fatal) return Promise.reject(this.fatal);
    return this.reports.requestCutover();
  }

  get description(): string {
    return this.url;
  }

  get connected(): boolean {
    return this.urgent !== null && this.background.some((s) => s !== null);
  }

  attachLocal(local: LocalBlocks): void {
    this.references.attachLocal(local);
  }

  /** How references to the destination's own blocks were checked: on the landed-checksum record, or hashed. */
  get referenceChecks(): ReferenceChecks {
    return this.references.checks;
  }

  linkStats(): LinkStats {
    return wireLinkStats(this.stats);
  }

  setPacingRate(bytesPerSecond: number): void {
    this.pacingRate = Math.round(bytesPerSecond);
    for (const s of this.background) s?.pace(this.pacingRate);
  }

  bytesRead(): number {
    let bytes = this.readBefore;
    for (const s of [this.urgent, ...this.background]) bytes += s?.bytesReceived ?? 0;
    return bytes;
  }

  async fetch(offset: number, length: number, priority: FetchPriority): Promise<Buffer> {
    const bs = this.options.blockSize;
    const out = this.outputs.take(length);
    const firstBlock = offset / bs;
    const count = Math.ceil(length / bs);
    let todo: number[] = [...Array(count).keys()]; // block indexes relative to firstBlock still wanted
    const output: FetchOutput = { out, outOffset: offset, checksums: new BigUint64Array(count) };
    for (let attempt = 0; todo.length; attempt++) {
      if (attempt >= this.options.maxAttempts) {
        throw new Error(
          `blocks ${firstBlock + todo[0]}… failed verification ${attempt} times; giving up on this fetch`,
        );
      }
      const failed: number[] = [];
      for (const piece of fetchPieces(offset, length, todo, bs)) {
        const bad = await this.fetchRun(piece.offset, piece.length, priority, fetchFlags(priority, attempt), output);
        failed.push(...bad.map((b) => b - firstBlock));
      }
      todo = failed;
    }
    this.verified.set(out, output.checksums);
    return out;
  }

  checksumsOf(data: Buffer): BigUint64Array | undefined {
    return this.verified.get(data);
  }

  recycle(data: Buffer): void {
    this.verified.delete(data);
    this.outputs.give(data);
  }

  /** On a background stream: the source reads the blocks to hash them, which an on-demand fetch must not wait for. */
  async blockHashes(offset: number, count: number): Promise<Buffer> {
    const stream = await this.streamFor('background');
    if (!(stream.welcomeFlags & WelcomeFlag.BlockHashes)) throw new Error(this.blockHashesProblem()!);
    const hashes = await stream.blockHashes(offset, count);
    this.stats.bytesOnWire += 32 + hashes.length;
    return hashes;
  }

  blockHashesProblem(): string | null {
    return this.hashes
      ? null
      : `the source at ${this.url} does not answer block-hash queries (a ferry source older than this destination): seeding needs one that does`;
  }

  /** Asked on the urgent stream: its answer is small and must not wait behind background batches. */
  async zeroRanges(offset: number, length: number): Promise<ZeroRangeAnswer | null> {
    const stream = await this.streamFor('urgent');
    const answer = await stream.zeroRanges(offset, length);
    this.stats.bytesOnWire += 40 + 16 * answer.ranges.length;
    return { covered: answer.covered, ranges: answer.ranges };
  }

  async reconnect(url?: string): Promise<void> {
    if (this.closing) throw new Error('upstream closed');
    const target = url ? parseFerryUrl(url) : this.target;
    // Try the new address first: a wrong one is refused here, and the working streams stay up.
    // As a background stream: it must not take the session's reports from the urgent one.
    const probe = await WireStream.open(
      this.auth,
      target.host,
      target.port,
      { ...this.hello(Role.Background), exportName: target.exportName },
      this.options.connectTimeoutMs,
    );
    probe.destroy();
    if (probe.welcome!.identity !== this.identity || probe.welcome!.imageSize !== this.size) {
      throw new Error(
        `${url ?? this.url} serves another image (identity ${probe.welcome!.identity}, expected ${this.identity})`,
      );
    }
    // Closed (the migration completed) while or before probing: new gates would never open, and the caller would wait for ever.
    if (this.closing) throw new Error('upstream closed');
    this.target = target;
    if (url) this.url = url;
    if (this.fatal) {
      // The gates were closed with the fatal error; waiters from now on wait for the new streams.
      this.fatal = null;
      this.urgentGate = new Gate();
      this.backgroundGate = new Gate();
    }
    const wasConnected = this.connected;
    for (let index = -1; index < this.background.length; index++) {
      const old = this.slot(index);
      this.setSlot(index, null);
      old?.destroy();
      void this.reopen(index, true);
    }
    if (wasConnected) this.emit('disconnected');
    try {
      while (!this.connected) {
        await this.urgentGate.wait();
        await this.backgroundGate.wait();
      }
    } catch (e) {
      throw this.fatal ?? e;
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    this.abort.abort();
    const closed = new Error('upstream closed');
    this.urgentGate.close(closed);
    this.backgroundGate.close(closed);
    this.reports.failWaiters(closed);
    this.urgent?.destroy();
    for (const s of this.background) s?.destroy();
  }

  /** Fetches one run on a stream; returns the absolute blocks that must be fetched again. */
  private async fetchRun(
    runOffset: number,
    runLength: number,
    priority: FetchPriority,
    flags: number,
    output: FetchOutput,
  ): Promise<number[]> {
    const stream = await this.streamFor(priority);
    const bs = this.options.blockSize;
    const first = runOffset / bs;
    const count = Math.ceil(runLength / bs);
    const covered = new Uint8Array(count);
    const decodes: Array<Promise<number[]>> = [];
    let decodeError: Error | null = null;
    await stream.fetch(priority === 'urgent' ? Role.Urgent : Role.Background, flags, runOffset, runLength, (batch) => {
      this.stats.bytesOnWire += batch.wireBytes;
      const { offset, count: n } = batch.meta;
      const at = offset / bs - first;
      if (offset % bs !== 0 || at < 0 || at + n > count) {
        // Not what was asked: nothing of it is used; the blocks it should have carried are fetched again.
        this.stats.corruptFrames++;
        return;
      }
      this.stats.bytesBeforeEncoding += n * bs;
      covered.fill(1, at, at + n);
      // Handled here: a decode that fails before the last batch arrives must not go unobserved.
      decodes.push(
        this.decoder.decode(batch, priority === 'urgent', output).catch((e: Error) => {
          decodeError ??= e;
          return [];
        }),
      );
    });
    const failed = (await Promise.all(decodes)).flat();
    if (decodeError) throw decodeError;
    for (let i = 0; i < count; i++) if (!covered[i]) failed.push(first + i); // never sent: never returned as data
    return failed;
  }

  private async streamFor(priority: FetchPriority): Promise<WireStream> {
    for (;;) {
      if (this.fatal) throw this.fatal;
      if (this.closing) throw new Error('upstream closed');
      if (priority === 'urgent' && this.urgent) return this.urgent;
      if (priority === 'background') {
        let best: WireStream | null = null;
        for (const s of this.background) if (s && (!best || s.inFlight < best.inFlight)) best = s;
        if (best) return best;
      }
      try {
        await (priority === 'urgent' ? this.urgentGate : this.backgroundGate).wait();
      } catch (e) {
        throw this.fatal ?? e;
      }
    }
  }

  private slot(index: number): WireStream | null {
    return index < 0 ? this.urgent : this.background[index];
  }

  private setSlot(index: number, stream: WireStream | null): void {
    const old = this.slot(index);
    if (old && old !== stream) this.readBefore += old.bytesReceived; // bytesRead() only grows
    if (index < 0) this.urgent = stream;
    else this.background[index] = stream;
    if (this.urgent) this.urgentGate.open();
    else this.urgentGate.shut();
    if (this.background.some((b) => b !== null)) this.backgroundGate.open();
    else this.backgroundGate.shut();
  }

  /** Puts a stream in its slot and replaces it when it closes, with backoff. Index -1 is the urgent stream. */
  private install(index: number, stream: WireStream): void {
    stream.on('corrupt', (reason: string) => {
      this.stats.corruptFrames++;
      this.log.warn({ reason }, 'corrupt frame from the source; reconnecting');
    });
    stream.once('closed', (err: Error) => {
      if (this.slot(index) !== stream) return; // already replaced (reconnect)
      const wasConnected = this.connected;
      this.setSlot(index, null);
      if (this.closing) return;
      this.log.warn(
        { stream: index < 0 ? 'urgent' : `background ${index}`, err: err.message },
        'source stream lost; reconnecting',
      );
      if (wasConnected) this.emit('disconnected');
      void this.reopen(index, stream.framesAfterWelcome > 0);
    });
    this.setSlot(index, stream);
    if (index < 0) this.reports.onUrgentStream(stream);
    else if (this.pacingRate > 0) stream.pace(this.pacingRate);
  }

  /**
   * Replaces the stream of slot `index`. After a stream that carried data the
   * delays start over (a flaky link costs one quick reconnect per drop, not a
   * growing wait); after one that carried nothing (a source that accepts and
   * drops, a handshake cut short) they keep growing, so such a source is not
   * hammered.
   */
  private async reopen(index: number, carriedData: boolean): Promise<void> {
    if (this.reconnecting.has(index)) return;
    this.reconnecting.add(index);
    const name = index < 0 ? 'urgent' : `background ${index}`;
    let backoff = this.backoffs.get(index);
    if (!backoff) {
      backoff = new Backoff({ minMs: this.options.minBackoffMs, maxMs: this.options.maxBackoffMs });
      this.backoffs.set(index, backoff);
    }
    try {
      if (carriedData) backoff.reset();
      else {
        const delayMs = backoff.next();
        this.emit('reconnect-delay', delayMs);
        this.log.debug({ stream: name, delayMs }, 'the lost stream carried no data; waiting before reconnecting');
        if (!(await pause(delayMs, this.abort.signal))) return;
      }
      const open = async (): Promise<WireStream> => {
        const stream = await this.openStream(index < 0 ? Role.Urgent : Role.Background);
        if (index < 0) this.takeWelcome(stream);
        return stream;
      };
      const s = await retry(open, {
        minMs: this.options.minBackoffMs,
        maxMs: this.options.maxBackoffMs,
        backoff,
        signal: this.abort.signal,
        retryable: (e) => !isFatal(e),
        onRetry: (e, _n, delayMs) => {
          this.emit('connect-failed', e);
          this.emit('reconnect-delay', delayMs);
          this.log.warn({ stream: name, err: (e as Error).message, retryMs: delayMs }, 'source unreachable');
        },
      });
      if (this.closing) {
        s.destroy(); // closed while this one was opening: keep no link to the source
        return;
      }
      const wasConnected = this.connected;
      this.install(index, s);
      this.reconnects++;
      this.log.info({ stream: name, reconnects: this.reconnects }, 'source reconnected');
      // Once the urgent stream and a background one are up (the tracking epoch is the new one by then).
      if (!wasConnected && this.connected) this.emit('connected');
    } catch (e) {
      if (this.closing) return;
      this.log.error({ err: (e as Error).message }, 'not reconnecting to the source');
      this.fatal = e as Error;
      this.urgentGate.close(this.fatal);
      this.backgroundGate.close(this.fatal);
      this.reports.failWaiters(this.fatal);
    } finally {
      this.reconnecting.delete(index);
    }
  }

  /**
   * The tracking epoch of a new urgent stream. A source that stopped
   * tracking (restarted without --nbd-listen) cannot say what its VM wrote
   * since: nothing copied may be trusted, and this upstream stops.
   */
  private takeWelcome(s: WireStream): void {
    const w = s.welcome!;
    if (this.trackingMode !== 'stream') return;
    if (w.tracking !== Tracking.Stream) {
      s.destroy();
      throw new TrackingLostError();
    }
    if (w.trackingEpoch !== this.epoch)
      this.log.warn({ was: this.epoch, now: w.trackingEpoch }, "the source's write tracking restarted");
    this.epoch = w.trackingEpoch;
  }

  private hello(role: Role) {
    return {
      version: WIRE_VERSION,
      role,
      blockSize: this.options.blockSize,
      maxBatchBlocks: this.options.maxBatchBlocks,
      encodings: [WireEncoding.Zero, WireEncoding.Raw, WireEncoding.Lz4, WireEncoding.Deflate, WireEncoding.Reference],
      exportName: this.target.exportName,
      session: this.session,
      identity: this.identity,
    };
  }

  /** A stream whose WELCOME fits: the first one says which image this upstream copies, later ones must serve it. */
  private async openStream(role: Role): Promise<WireStream> {
    const stream = await WireStream.open(
      this.auth,
      this.target.host,
      this.target.port,
      this.hello(role),
      this.options.connectTimeoutMs,
      this.options.stallTimeoutMs,
      (stream) => {
        stream.receiveBatchesInto(this.batchBuffers, this.batchCapacity);
        this.reports.watch(stream);
      },
    );
    const problem = welcomeProblem(
      stream.welcome!,
      this.welcomed ? { identity: this.identity, size: this.size } : null,
    );
    if (problem) {
      stream.destroy();
      throw problem.otherImage ? new SourceImageChangedError(problem.reason) : new Error(problem.reason);
    }
    this.welcomed = true;
    return stream;
  }
}

/** A stream's WELCOME named another image than the one being copied. */
export class SourceImageChangedError extends Error {
  constructor(reason: string) {
    super(reason);
    this.name = 'SourceImageChangedError';
  }
}

/** Free batch buffers kept (at 64 blocks of 4 KiB, 4 MiB): a link's worth of batches in flight. */
const KEPT_BATCH_BUFFERS = 16;
/** Bytes of free fetch results kept. */
const KEPT_OUTPUT_BYTES = 4 << 20;

export class TrackingLostError extends Error {
  constructor() {
    super('the source no longer tracks its writes (restarted without --nbd-listen?); restart the destination');
    this.name = 'TrackingLostError';
  }
}

/** Errors reconnecting cannot cure: the source serves another image, or no longer tracks its writes. */
function isFatal(e: unknown): boolean {
  return (
    (e instanceof WireRefusedError && e.code === RefuseCode.IdentityMismatch) ||
    e instanceof TrackingLostError ||
    e instanceof SourceImageChangedError
  );
}
