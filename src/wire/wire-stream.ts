/**
 * One connection of a destination to a ferry source: TLS (or plain TCP when
 * insecure), preamble, HELLO/WELCOME, then FETCHes matched to their BATCH
 * frames by request id. DIRTY reports come out as 'dirty' events and a
 * whole CUTOVER set (its frames joined) as one 'cutover' event. A corrupt
 * frame or a dropped connection fails every request in flight on it; the
 * owner reconnects.
 */
import { EventEmitter } from 'node:events';
import type net from 'node:net';
import { connectWire, explainHandshakeFailure, WireAuth } from './auth';
import { encodePreamble, FrameDecoder } from './frame-codec';
import {
  BatchMeta,
  ByteRange,
  decodeBatchMeta,
  decodeCutover,
  decodeDirty,
  decodeFetchError,
  decodeRefuse,
  decodeWelcome,
  decodeZeroRanges,
  decodeBlockHashes,
  encodeHashQuery,
  BlockHashes,
  encodeCutoverRequest,
  encodeDirtyAck,
  encodeFetch,
  encodePace,
  encodeHello,
  encodeZeroQuery,
  Hello,
  maxBatchPayload,
  Welcome,
  ZeroRanges,
} from './messages';
import { FRAME_HEADER_SIZE, FrameFlag, MAX_META, MessageType, WelcomeFlag, WIRE_VERSION } from './protocol';
import type { BatchBuffers } from './batch-buffers';

/** A whole final write set: every CUTOVER frame of one seq, joined. */
export interface CutoverSet {
  seq: number;
  ranges: ByteRange[];
}

export interface BatchFrame {
  meta: BatchMeta;
  payload: Buffer;
  final: boolean;
  /** Bytes this frame took on the wire. */
  wireBytes: number;
}

interface PendingFetch {
  onBatch: (batch: BatchFrame) => void;
  /** Set for a ZERO_QUERY: its one answer. */
  onZeroRanges?: (ranges: ZeroRanges) => void;
  /** Set for a HASH_QUERY: its one answer. */
  onBlockHashes?: (hashes: BlockHashes) => void;
  reject: (err: Error) => void;
}

export class WireRefusedError extends Error {
  constructor(
    readonly code: number,
    reason: string,
  ) {
    super(reason);
    this.name = 'WireRefusedError';
  }
}

export class CorruptFrameError extends Error {
  constructor(reason: string) {
    super(`corrupt frame from the source: ${reason}`);
    this.name = 'CorruptFrameError';
  }
}

export class WireStream extends EventEmitter {
  welcome: Welcome | null = null;
  /** WELCOME's frame flags (WelcomeFlag): what else the source answers. */
  welcomeFlags = 0;
  private readonly decoder = new FrameDecoder();
  private readonly pending = new Map<number, PendingFetch>();
  private nextRequest = 1;
  private closed = false;
  private closeError: Error = new Error('connection to the source closed');
  bytesReceived = 0;
  /** Frames after WELCOME: the stream carried answers (or reports), not just a handshake. */
  framesAfterWelcome = 0;
  private lastFrameAt = Date.now();
  private readonly watchdog: NodeJS.Timeout;
  /** The CUTOVER set being received (its frames until Final). */
  private cutoverPart: CutoverSet | null = null;

  private constructor(
    private readonly socket: net.Socket,
    stallTimeoutMs: number,
  ) {
    super();
    // A frame whose length field was damaged can leave the decoder waiting for bytes that never come.
    this.watchdog = setInterval(
      () => {
        if (this.pending.size > 0 && Date.now() - this.lastFrameAt > stallTimeoutMs) {
          this.destroy(new Error(`source sent no frame for ${stallTimeoutMs} ms with requests outstanding`));
        }
      },
      Math.min(1000, stallTimeoutMs),
    );
    this.watchdog.unref();
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.bytesReceived += chunk.length;
      this.decoder.push(chunk);
      this.drain();
    });
    socket.on('error', (err) => {
      this.closeError = new Error(`connection to the source failed: ${err.message}`);
      // A TLS record that fails its check after the handshake errors without closing the socket:
      // nothing more can be read from it, so close it now rather than at the stall timeout.
      socket.destroy();
    });
    socket.on('close', () => this.onClose());
  }

  static async open(
    auth: WireAuth,
    host: string,
    port: number,
    hello: Hello,
    timeoutMs: number,
    stallTimeoutMs = 20_000,
    /** Adds listeners before HELLO: a DIRTY or CUTOVER may come in the same read as the WELCOME. */
    setup?: (stream: WireStream) => void,
  ): Promise<WireStream> {
    const socket = await connectWire(auth, host, port, timeoutMs);
    const stream = new WireStream(socket, stallTimeoutMs);
    setup?.(stream);
    socket.write(encodePreamble());
    socket.write(encodeHello(hello));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`ferry source at ${host}:${port} did not answer HELLO within ${timeoutMs} ms`));
      }, timeoutMs);
      stream.once('welcome', () => {
        clearTimeout(timer);
        // Before the next frame is read: a BATCH larger than any this HELLO allows is corrupt, not buffered.
        stream.decoder.setLimits(MAX_META, maxBatchPayload(hello.blockSize, hello.maxBatchBlocks));
        resolve();
      });
      stream.once('closed', (err: Error) => {
        clearTimeout(timer);
        // With TLS 1.3 a peer certificate is judged after our handshake completes: a refusal shows up as a close here.
        if (err instanceof WireRefusedError) return reject(err);
        reject(
          new Error(`cannot connect to ferry source at ${host}:${port}: ${explainHandshakeFailure(auth, err, true)}`, {
            cause: err,
          }),
        );
      });
    });
    return stream;
  }

  /**
   * BATCH payloads arrive in `buffers`' buffers of `capacity` bytes (room to
   * decode the largest batch in place); the decoder gives them back. Set
   * before any BATCH can arrive (in open()'s setup).
   */
  receiveBatchesInto(buffers: BatchBuffers, capacity: number): void {
    this.decoder.receivePayloadsInto((type, length) =>
      type === MessageType.Batch && length > 0 && length <= capacity ? buffers.take(capacity) : new ArrayBuffer(length),
    );
  }

  get isClosed(): boolean {
    return this.closed;
  }

  get inFlight(): number {
    return this.pending.size;
  }

  /** Sends a FETCH; batches arrive through onBatch until the final one. */
  fetch(
    priority: number,
    flags: number,
    offset: number,
    length: number,
    onBatch: (b: BatchFrame) => void,
  ): Promise<void> {
    if (this.closed) return Promise.reject(this.closeError);
    if (this.pending.size === 0) this.lastFrameAt = Date.now();
    const requestId = this.takeRequestId();
    return new Promise((resolve, reject) => {
      this.pending.set(requestId, {
        onBatch: (b) => {
          onBatch(b);
          if (b.final) {
            this.pending.delete(requestId);
            resolve();
          }
        },
        reject,
      });
      this.socket.write(encodeFetch({ requestId, priority, flags, offset, length }));
    });
  }

  /** Asks the source to pace this session's background batches (a source whose WELCOME offers it). */
  pace(bytesPerSecond: number): void {
    if (this.closed || !(this.welcomeFlags & WelcomeFlag.Pacing)) return;
    this.socket.write(encodePace({ bytesPerSecond }));
  }

  /** Asks which parts of [offset, offset+length) read as zeros at the source. */
  zeroRanges(offset: number, length: number): Promise<ZeroRanges> {
    if (this.closed) return Promise.reject(this.closeError);
    if (this.pending.size === 0) this.lastFrameAt = Date.now();
    const requestId = this.takeRequestId();
    return new Promise((resolve, reject) => {
      this.pending.set(requestId, {
        onBatch: () => this.destroy(new CorruptFrameError(`BATCH for zero query ${requestId}`)),
        onZeroRanges: (answer) => {
          this.pending.delete(requestId);
          if (answer.offset !== offset || answer.covered > length) {
            reject(
              new CorruptFrameError(`ZERO_RANGES for ${answer.offset}+${answer.covered}, asked ${offset}+${length}`),
            );
            this.destroy(new CorruptFrameError('ZERO_RANGES outside its query'));
          } else resolve(answer);
        },
        reject,
      });
      this.socket.write(encodeZeroQuery({ requestId, offset, length }));
    });
  }

  /** The SHA-256 of `count` blocks of `blockSize` from `offset` (HASH_QUERY; only where WELCOME offered it). */
  blockHashes(offset: number, count: number): Promise<Buffer> {
    if (this.closed) return Promise.reject(this.closeError);
    if (this.pending.size === 0) this.lastFrameAt = Date.now();
    const requestId = this.takeRequestId();
    return new Promise((resolve, reject) => {
      this.pending.set(requestId, {
        onBatch: () => this.destroy(new CorruptFrameError(`BATCH for hash query ${requestId}`)),
        onBlockHashes: (answer) => {
          this.pending.delete(requestId);
          if (answer.offset !== offset || answer.count !== count) {
            const err = new CorruptFrameError(
              `BLOCK_HASHES for ${answer.count} blocks at ${answer.offset}, asked ${count} at ${offset}`,
            );
            reject(err);
            this.destroy(err);
          } else resolve(answer.hashes);
        },
        reject,
      });
      this.socket.write(encodeHashQuery({ requestId, offset, count }));
    });
  }

  /** DIRTY_ACK: report (or final set) `seq` is durable here. A closed stream sends nothing (the source sends it again). */
  ackDirty(seq: number): boolean {
    if (this.closed) return false;
    this.socket.write(encodeDirtyAck({ seq }));
    return true;
  }

  /** CUTOVER_REQUEST; the answer comes as a 'cutover' event. */
  requestCutover(): boolean {
    if (this.closed) return false;
    this.socket.write(encodeCutoverRequest());
    return true;
  }

  private takeRequestId(): number {
    const id = this.nextRequest;
    this.nextRequest = (this.nextRequest % 0xffffffff) + 1;
    return id;
  }

  destroy(err?: Error): void {
    if (err) this.closeError = err;
    this.socket.destroy();
  }

  private drain(): void {
    for (;;) {
      const event = this.decoder.next();
      if (!event) return;
      if (event.kind === 'corrupt') {
        this.emit('corrupt', event.reason);
        return this.destroy(new CorruptFrameError(event.reason));
      }
      if (event.kind === 'preamble') {
        if (event.version !== WIRE_VERSION)
          return this.destroy(new Error(`source speaks wire version ${event.version}, not ${WIRE_VERSION}`));
        continue;
      }
      const { frame } = event;
      this.lastFrameAt = Date.now();
      if (this.welcome) this.framesAfterWelcome++;
      const wireBytes = FRAME_HEADER_SIZE + frame.meta.length + frame.payload.length;
      switch (frame.type) {
        case MessageType.Welcome: {
          const w = decodeWelcome(frame.meta);
          if (typeof w === 'string') return this.destroy(new CorruptFrameError(w));
          this.welcome = w;
          this.welcomeFlags = frame.flags;
          this.emit('welcome', w);
          break;
        }
        case MessageType.Refuse: {
          const r = decodeRefuse(frame.meta);
          const err =
            typeof r === 'string'
              ? new CorruptFrameError(r)
              : new WireRefusedError(r.code, `source refused: ${r.reason}`);
          return this.destroy(err);
        }
        case MessageType.Batch: {
          const meta = decodeBatchMeta(frame.meta);
          if (typeof meta === 'string') return this.destroy(new CorruptFrameError(meta));
          this.pending
            .get(meta.requestId)
            ?.onBatch({ meta, payload: frame.payload, final: (frame.flags & FrameFlag.Final) !== 0, wireBytes });
          break;
        }
        case MessageType.ZeroRanges: {
          const z = decodeZeroRanges(frame.meta);
          if (typeof z === 'string') return this.destroy(new CorruptFrameError(z));
          const p = this.pending.get(z.requestId);
          if (p && !p.onZeroRanges) return this.destroy(new CorruptFrameError(`ZERO_RANGES for fetch ${z.requestId}`));
          p?.onZeroRanges!(z);
          break;
        }
        case MessageType.BlockHashes: {
          const h = decodeBlockHashes(frame.meta);
          if (typeof h === 'string') return this.destroy(new CorruptFrameError(h));
          const p = this.pending.get(h.requestId);
          if (p && !p.onBlockHashes)
            return this.destroy(new CorruptFrameError(`BLOCK_HASHES for request ${h.requestId}`));
          p?.onBlockHashes!(h);
          break;
        }
        case MessageType.Dirty: {
          const d = decodeDirty(frame.meta);
          if (typeof d === 'string') return this.destroy(new CorruptFrameError(d));
          this.emit('dirty', d);
          break;
        }
        case MessageType.Cutover: {
          const c = decodeCutover(frame.meta);
          if (typeof c === 'string') return this.destroy(new CorruptFrameError(c));
          const part = this.cutoverPart ?? { seq: c.seq, ranges: [] };
          const last = part.ranges[part.ranges.length - 1];
          if (c.seq !== part.seq || (last && c.ranges.length && c.ranges[0].offset < last.offset + last.length))
            return this.destroy(new CorruptFrameError(`CUTOVER ${c.seq} does not continue set ${part.seq}`));
          for (const r of c.ranges) part.ranges.push(r);
          if (frame.flags & FrameFlag.Final) {
            this.cutoverPart = null;
            this.emit('cutover', part);
          } else this.cutoverPart = part;
          break;
        }
        case MessageType.FetchError: {
          const e = decodeFetchError(frame.meta);
          if (typeof e === 'string') return this.destroy(new CorruptFrameError(e));
          const p = this.pending.get(e.requestId);
          this.pending.delete(e.requestId);
          p?.reject(new Error(`source could not serve the fetch: ${e.reason}`));
          break;
        }
        default:
          return this.destroy(new CorruptFrameError(`unexpected message type ${frame.type}`));
      }
    }
  }

  private onClose(): void {
    this.closed = true;
    clearInterval(this.watchdog);
    for (const p of this.pending.values()) p.reject(this.closeError);
    this.pending.clear();
    this.emit('closed', this.closeError);
  }
}
