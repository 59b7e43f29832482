/**
 * A ferry source as the upstream of a migrating destination. One urgent
 * stream and several background streams; every batch is decoded and
 * verified on the worker pool; a block that fails its checksum is fetched
 * again (and counted), never returned; a reference is honoured only when the
 * destination still holds that content, else the block is fetched as bytes.
 * A source that tracks its VM's writes sends them as DIRTY reports and, at
 * cutover, its final write set (docs/wire-protocol.md).
 */
import { EventEmitter } from 'node:events';
import crypto from 'node:crypto';
import type { Logger } from 'pino';
import { QueueFullError, type CodecPool } from '../pool';
import { BlockEncoding, type BlockEntry } from '../codec/batch';
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
import type { Dirty } from '../wire/messages';
import { blockRuns } from '../util/block-runs';
import { Gate, retry } from '../util/backoff';
import { BatchFrame, CorruptFrameError, CutoverSet, WireRefusedError, WireStream } from '../wire/wire-stream';
import { FetchFlag, RefuseCode, Role, Tracking, WIRE_VERSION, WireEncoding } from '../wire/protocol';
import { toBlockEncoding, wireEncodingName } from '../wire/encoding-map';

export interface WireUpstreamOptions {
  blockSize: number;
  backgroundStreams: number;
  maxBatchBlocks: number;
  connectTimeoutMs: number;
  minBackoffMs: number;
  maxBackoffMs: number;
  /** Attempts per block before a fetch gives up (corrupt data every time). */
  maxAttempts: number;
  /**
   * The session id the source knows this destination by. Keep it across
   * restarts (the source's unacknowledged reports and final set belong to
   * it); default: a new random one.
   */
  session?: string;
}

export interface WireStats {
  bytesOnWire: number;
  bytesBeforeEncoding: number;
  checksumFailures: number;
  corruptFrames: number;
  referencesUsed: number;
  referencesRefused: number;
  blocksByEncoding: Record<string, number>;
  codec: string;
}

export interface FerryTarget {
  host: string;
  port: number;
  exportName: string;
}

export function parseFerryUrl(text: string): FerryTarget {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`not a ferry URL: "${text}" (expected ferry://HOST:PORT/EXPORT)`);
  }
  if (url.protocol !== 'ferry:') throw new Error(`not a ferry URL: "${text}" (expected ferry://HOST:PORT/EXPORT)`);
  if (!url.hostname) throw new Error(`ferry URL "${text}" has no host`);
  return {
    host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: url.port ? Number(url.port) : 10810,
    exportName: decodeURIComponent(url.pathname.replace(/^\//, '')),
  };
}

/** Largest FETCH sent (the source accepts up to 16 MiB). */
const MAX_FETCH = 8 << 20;

export class WireUpstream extends EventEmitter implements Upstream {
  size = 0;
  identity = '';
  reconnects = 0;
  readonly stats: WireStats = {
    bytesOnWire: 0,
    bytesBeforeEncoding: 0,
    checksumFailures: 0,
    corruptFrames: 0,
    referencesUsed: 0,
    referencesRefused: 0,
    blocksByEncoding: {},
    codec: '',
  };
  private urgent: WireStream | null = null;
  private readonly background: Array<WireStream | null>;
  private local: LocalBlocks | null = null;
  private target: FerryTarget;
  private closing = false;
  private readonly abort = new AbortController();
  /** Open while the urgent stream is up, and while at least one background stream is. */
  private urgentGate = new Gate();
  private backgroundGate = new Gate();
  readonly session: string;
  private reconnecting = new Set<number>();
  private fatal: Error | null = null;
  private trackingMode: WriteTracking = 'none';
  private epoch = '';
  /** cutover() calls waiting for the final set, and the urgent stream the request went out on. */
  private cutoverWaiters: Array<{ resolve: (r: DirtyReport) => void; reject: (e: Error) => void }> = [];
  private cutoverAskedOn: WireStream | null = null;
  /** The final set received and not yet acknowledged: asking again gives it. */
  private cutoverReport: { seq: number; report: DirtyReport } | null = null;
  /** The final set acknowledged, sent again on every new urgent stream (the source ignores a repeat). */
  private cutoverAcked: number | null = null;
  /** Reports that came before anyone listened (during open()): handed over to the first listener. */
  private undelivered: { dirty: DirtyReport[]; cutover: DirtyReport | null } = { dirty: [], cutover: null };

  private constructor(
    private url: string,
    private readonly auth: WireAuth,
    private readonly pool: CodecPool,
    private readonly options: WireUpstreamOptions,
    private readonly log: Logger,
  ) {
    super();
    this.target = parseFerryUrl(url);
    this.background = new Array(options.backgroundStreams).fill(null);
    this.session = options.session ?? crypto.randomUUID();
    this.on('newListener', (event: string) => {
      if (event !== 'dirty' && event !== 'cutover') return;
      setImmediate(() => this.deliver()); // the listener is added after this event
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
    u.install(-1, urgent); // from now on a dropped stream is replaced
    try {
      for (let i = 0; i < u.background.length; i++) u.install(i, await u.openStream(Role.Background));
    } catch (e) {
      await u.close();
      throw e;
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
    if (this.cutoverReport) return Promise.resolve(this.cutoverReport.report);
    if (this.closing) return Promise.reject(new Error('upstream closed'));
    if (this.fatal) return Promise.reject(this.fatal);
    const answer = new Promise<DirtyReport>((resolve, reject) => this.cutoverWaiters.push({ resolve, reject }));
    this.askCutover();
    return answer;
  }

  get description(): string {
    return this.url;
  }

  get connected(): boolean {
    return this.urgent !== null && this.background.some((s) => s !== null);
  }

  attachLocal(local: LocalBlocks): void {
    this.local = local;
  }

  linkStats(): LinkStats {
    // The codec is the compressing encoding most blocks arrived in; raw alone means none.
    const counts = Object.entries(this.stats.blocksByEncoding).filter(([name]) => name === 'lz4' || name === 'deflate');
    counts.sort((a, b) => b[1] - a[1]);
    return {
      bytesOnWire: this.stats.bytesOnWire,
      bytesBeforeEncoding: this.stats.bytesBeforeEncoding,
      checksumFailures: this.stats.checksumFailures,
      corruptFrames: this.stats.corruptFrames,
      referencesUsed: this.stats.referencesUsed,
      referencesRefused: this.stats.referencesRefused,
      codec: counts[0]?.[0] ?? (this.stats.blocksByEncoding.raw ? 'none' : this.stats.codec),
    };
  }

  async fetch(offset: number, length: number, priority: FetchPriority): Promise<Buffer> {
    const bs = this.options.blockSize;
    const out = Buffer.allocUnsafe(length);
    const firstBlock = offset / bs;
    const count = Math.ceil(length / bs);
    let todo: number[] = [...Array(count).keys()]; // block indexes relative to firstBlock still wanted
    let flags = fetchFlags(priority);
    for (let attempt = 0; todo.length; attempt++) {
      if (attempt >= this.options.maxAttempts) {
        throw new Error(
          `blocks ${firstBlock + todo[0]}… failed verification ${attempt} times; giving up on this fetch`,
        );
      }
      const failed: number[] = [];
      const perFetch = Math.max(1, Math.floor(MAX_FETCH / bs));
      for (const [start, n] of blockRuns(todo)) {
        for (let piece = 0; piece < n; piece += perFetch) {
          const runOffset = (firstBlock + start + piece) * bs;
          const runLength = Math.min(Math.min(perFetch, n - piece) * bs, offset + length - runOffset);
          const bad = await this.fetchRun(runOffset, runLength, priority, flags, out, offset);
          failed.push(...bad.map((b) => b - firstBlock));
        }
      }
      todo = failed;
      flags = FetchFlag.NoReferences; // a retry asks for bytes
    }
    return out;
  }

  /** Asked on the urgent stream: its answer is small and must not wait behind background batches. */
  async zeroRanges(offset: number, length: number): Promise<ZeroRangeAnswer | null> {
    const stream = await this.streamFor('urgent');
    const answer = await stream.zeroRanges(offset, length);
    this.stats.bytesOnWire += 40 + 16 * answer.ranges.length;
    return { covered: answer.covered, ranges: answer.ranges };
  }

  async reconnect(url?: string): Promise<void> {
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
      void this.reopen(index);
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
    for (const w of this.cutoverWaiters.splice(0)) w.reject(closed);
    this.urgent?.destroy();
    for (const s of this.background) s?.destroy();
  }

  /** Fetches one run on a stream; returns the absolute blocks that must be fetched again. */
  private async fetchRun(
    runOffset: number,
    runLength: number,
    priority: FetchPriority,
    flags: number,
    out: Buffer,
    outOffset: number,
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
        this.decodeBatch(batch, priority, out, outOffset).catch((e: Error) => {
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

  /** Decodes and verifies one batch into `out`; returns the absolute blocks that failed. */
  private async decodeBatch(
    batch: BatchFrame,
    priority: FetchPriority,
    out: Buffer,
    outOffset: number,
  ): Promise<number[]> {
    const bs = this.options.blockSize;
    const { meta } = batch;
    const first = meta.offset / bs;
    const failed: number[] = [];
    // References are resolved here, not by the kernels: hand them over as empty zero blocks and ignore their status.
    const entries: BlockEntry[] = meta.entries.map((e) =>
      e.encoding === WireEncoding.Reference
        ? { encoding: BlockEncoding.Zero, length: 0, checksum: 0n }
        : { encoding: toBlockEncoding(e.encoding), length: e.length, checksum: e.checksum },
    );
    for (const e of meta.entries) {
      const name = wireEncodingName(e.encoding);
      this.stats.blocksByEncoding[name] = (this.stats.blocksByEncoding[name] ?? 0) + 1;
    }
    const urgent = priority === 'urgent';
    const payload = new Uint8Array(batch.payload.buffer, batch.payload.byteOffset, batch.payload.byteLength);
    const decoded = await this.whenQueued(
      () => this.pool.decode({ blockSize: bs, entries, payload }, { urgent }),
      urgent,
    );
    const blocks = Buffer.from(decoded.blocks.buffer, decoded.blocks.byteOffset, decoded.blocks.byteLength);
    const references: number[] = [];
    for (let i = 0; i < meta.count; i++) {
      const e = meta.entries[i];
      if (e.encoding === WireEncoding.Reference) {
        references.push(i);
        continue;
      }
      if (decoded.status[i] !== 0) {
        this.stats.checksumFailures++;
        failed.push(first + i);
        continue;
      }
      this.place(out, outOffset, (first + i) * bs, blocks.subarray(i * bs, (i + 1) * bs));
    }
    const fromLocal = await this.resolveReferences(references, meta, blocks, decoded.status, out, outOffset, urgent);
    for (const [i, ok] of fromLocal) {
      if (ok) this.stats.referencesUsed++;
      else {
        this.stats.referencesRefused++;
        failed.push(first + i);
      }
    }
    return failed;
  }

  /** Copies a block's bytes into the fetch's output, trimmed at its end. */
  private place(out: Buffer, outOffset: number, blockOffset: number, bytes: Buffer): void {
    const at = blockOffset - outOffset;
    bytes.copy(out, at, 0, Math.min(bytes.length, out.length - at));
  }

  /**
   * Resolves a batch's references: to a block earlier in the batch, or to the
   * destination's own copy, read in runs and hashed in one pool task (the VM
   * may have overwritten it since). Returns [entry index, resolved] pairs.
   */
  private async resolveReferences(
    references: number[],
    meta: BatchFrame['meta'],
    blocks: Buffer,
    status: number[],
    out: Buffer,
    outOffset: number,
    urgent: boolean,
  ): Promise<Array<[number, boolean]>> {
    const bs = this.options.blockSize;
    const first = meta.offset / bs;
    const results: Array<[number, boolean]> = [];
    const local: Array<{ i: number; target: number }> = [];
    for (const i of references) {
      const { reference: target, checksum } = meta.entries[i];
      const inBatch = target - first;
      if (inBatch >= 0 && inBatch < meta.count && meta.entries[inBatch].encoding !== WireEncoding.Reference) {
        const ok = status[inBatch] === 0 && meta.entries[inBatch].checksum === checksum;
        if (ok) this.place(out, outOffset, (first + i) * bs, blocks.subarray(inBatch * bs, (inBatch + 1) * bs));
        results.push([i, ok]);
      } else if (this.local && target * bs < this.size && this.local.isHeld(target)) local.push({ i, target });
      else results.push([i, false]);
    }
    if (local.length === 0) return results;
    const copy = new ArrayBuffer(local.length * bs);
    const reads: Array<Promise<void>> = [];
    // Consecutive references often point to consecutive blocks (a file copied earlier): one read per run.
    for (let k = 0; k < local.length;) {
      let n = 1;
      while (k + n < local.length && local[k + n].target === local[k].target + n) n++;
      const offset = local[k].target * bs;
      reads.push(this.local!.read(offset, Buffer.from(copy, k * bs, Math.min(n * bs, this.size - offset))));
      k += n;
    }
    await Promise.all(reads);
    const hashed = await this.whenQueued(() => this.pool.hash(copy, bs, { urgent }), urgent);
    const bytes = Buffer.from(hashed.blocks);
    local.forEach(({ i }, k) => {
      const ok = hashed.checksums[k] === meta.entries[i].checksum;
      if (ok) this.place(out, outOffset, (first + i) * bs, bytes.subarray(k * bs, (k + 1) * bs));
      results.push([i, ok]);
    });
    return results;
  }

  /** Runs a pool task, waiting for the pool's signal while its queue is full. */
  private async whenQueued<T>(task: () => Promise<T>, urgent: boolean): Promise<T> {
    for (;;) {
      try {
        return await task();
      } catch (e) {
        if (!(e instanceof QueueFullError)) throw e;
        await this.pool.whenAccepting(urgent);
      }
    }
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
      void this.reopen(index);
    });
    this.setSlot(index, stream);
    if (index < 0) {
      // A new urgent stream: the source resends what was not acknowledged; so do we.
      if (this.cutoverAcked !== null) stream.ackDirty(this.cutoverAcked);
      this.askCutover();
    }
  }

  private async reopen(index: number): Promise<void> {
    if (this.reconnecting.has(index)) return;
    this.reconnecting.add(index);
    const name = index < 0 ? 'urgent' : `background ${index}`;
    try {
      const open = async (): Promise<WireStream> => {
        const stream = await this.openStream(index < 0 ? Role.Urgent : Role.Background);
        if (index < 0) this.takeWelcome(stream);
        return stream;
      };
      const s = await retry(open, {
        minMs: this.options.minBackoffMs,
        maxMs: this.options.maxBackoffMs,
        signal: this.abort.signal,
        retryable: (e) => !isFatal(e),
        onRetry: (e, _n, delayMs) => {
          this.emit('connect-failed', e);
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
      for (const w of this.cutoverWaiters.splice(0)) w.reject(this.fatal);
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

  /** A DIRTY report: checked against the image and block size, then handed on; its ack goes back on its stream. */
  private onDirty(stream: WireStream, d: Dirty): void {
    const bs = this.options.blockSize;
    const size = stream.welcome?.imageSize ?? 0; // this.size is not set yet during open()
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
    if (this.listenerCount('dirty') > 0) for (const r of this.undelivered.dirty.splice(0)) this.emit('dirty', r);
    const cut = this.undelivered.cutover;
    if (cut && this.listenerCount('cutover') > 0) {
      this.undelivered.cutover = null;
      if (this.cutoverReport?.report === cut) this.emit('cutover', cut);
    }
  }

  /** A final write set: the answer to cutover(), or the source's own cutover ('cutover' event). */
  private onCutover(stream: WireStream, set: CutoverSet): void {
    if (set.seq === this.cutoverAcked || set.seq === this.cutoverReport?.seq) return; // a repeat
    const bs = this.options.blockSize;
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
        this.urgent?.ackDirty(set.seq); // else sent when the urgent stream is back
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
    if (this.cutoverWaiters.length === 0 || !this.urgent || this.cutoverAskedOn === this.urgent) return;
    if (this.urgent.requestCutover()) this.cutoverAskedOn = this.urgent;
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

  private openStream(role: Role): Promise<WireStream> {
    return WireStream.open(
      this.auth,
      this.target.host,
      this.target.port,
      this.hello(role),
      this.options.connectTimeoutMs,
      undefined,
      (stream) => {
        stream.on('dirty', (d: Dirty) => this.onDirty(stream, d));
        stream.on('cutover', (set: CutoverSet) => this.onCutover(stream, set));
      },
    );
  }
}

export class TrackingLostError extends Error {
  constructor() {
    super('the source no longer tracks its writes (restarted without --nbd-listen?); restart the destination');
    this.name = 'TrackingLostError';
  }
}

/** Errors reconnecting cannot cure: the source serves another image, or no longer tracks its writes. */
function isFatal(e: unknown): boolean {
  return (e instanceof WireRefusedError && e.code === RefuseCode.IdentityMismatch) || e instanceof TrackingLostError;
}

/**
 * Flags of a first FETCH. An urgent one asks for bytes: a reference may
 * point to a block the destination does not hold yet (still on its way in a
 * background batch), and refusing it costs a second round trip while a VM
 * waits; the few bytes a reference saves are nothing next to that.
 */
export function fetchFlags(priority: FetchPriority): number {
  return priority === 'urgent' ? FetchFlag.NoReferences : 0;
}
