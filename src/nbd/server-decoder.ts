/**
 * Client → server NBD bytes in, typed messages out. Pure: no sockets, no
 * timers. Pull-based (`next()`), so the caller decides how many requests it
 * takes in at once and unread bytes wait here instead of in its queues.
 *
 * Bytes come in either as chunks the caller owns (`push`) or straight into
 * memory the decoder lends (`readTarget` / `received`): then a large WRITE
 * payload is read from the socket into its own buffer, with no copy and no
 * socket chunk per 64 KiB, and everything else lands in one reused scratch
 * buffer.
 */
import { ByteQueue } from '../util/byte-queue';
import { Command, IHAVEOPT, OPTION_HEADER_SIZE, REQUEST_HEADER_SIZE, REQUEST_MAGIC } from './protocol';

export interface ClientFlagsMessage {
  kind: 'clientFlags';
  flags: number;
}

export interface OptionMessage {
  kind: 'option';
  option: number;
  /** The option's data, or null when it was longer than the decoder accepts (then skipped). */
  data: Buffer | null;
  length: number;
}

export interface RequestMessage {
  kind: 'request';
  flags: number;
  type: number;
  /** The cookie, kept as the 8 bytes the client sent. */
  cookie: Buffer;
  /** Byte offset; above 2^53 it is imprecise but certainly beyond any export. */
  offset: number;
  length: number;
  /**
   * For WRITE: the payload, or null when the length exceeded the limit (the
   * bytes are then discarded as they arrive, never buffered).
   */
  payload: Buffer | null;
}

export interface ProtocolErrorMessage {
  kind: 'protocolError';
  reason: string;
}

export type ClientMessage = ClientFlagsMessage | OptionMessage | RequestMessage | ProtocolErrorMessage;

export interface ServerDecoderLimits {
  /** Longest option data accepted; longer options are skipped. */
  maxOptionLength: number;
  /** Longest WRITE payload buffered; longer payloads are discarded. */
  maxWritePayload: number;
  /** Where WRITE payload buffers come from (a pool, say); default Buffer.allocUnsafe. */
  allocatePayload?: (length: number) => Buffer;
  /** Takes back the buffer of a payload that never arrived whole (see close()). */
  releasePayload?: (payload: Buffer) => void;
}

/** Bytes of the scratch buffer reads land in when no payload takes them. */
const SCRATCH_BYTES = 128 * 1024;
/** Less room than this left in the scratch buffer and a fresh one is used. */
const SCRATCH_MIN_ROOM = 16 * 1024;
/** A payload with at least this much still to come is read into its own buffer. */
const DIRECT_READ_MIN = 16 * 1024;

type Phase = 'clientFlags' | 'options' | 'transmission' | 'failed';

export class ServerDecoder {
  private readonly queue = new ByteQueue();
  private phase: Phase = 'clientFlags';
  private pending: OptionMessage | RequestMessage | null = null; // header read, awaiting data
  private discard = 0; // bytes still to drop for an oversized option or write
  // The oversized message itself, handed out only once its bytes are dropped:
  // a client (libnbd) cannot match a reply to a request it is still sending.
  private afterDiscard: OptionMessage | RequestMessage | null = null;
  /** Bytes of the pending WRITE's payload already in place. */
  private filled = 0;
  private scratch: Buffer | null = null;
  private scratchUsed = 0;
  /** What the last readTarget() lent: the pending payload or the scratch buffer. */
  private lent: 'payload' | 'scratch' | null = null;
  /**
   * The last request carried a payload read straight into its buffer: the
   * next read takes only a request header, so that the payload after it is
   * not read into the scratch buffer and copied from there.
   */
  private headerReads = false;

  constructor(private readonly limits: ServerDecoderLimits) {}

  /** Bytes the caller read into a buffer of its own (the decoder keeps a reference, not a copy). */
  push(chunk: Buffer): void {
    this.queue.push(chunk);
  }

  /**
   * Where the next read should put its bytes; then received(n) says how many
   * it put there. Valid until received() or the next readTarget(): the
   * caller reads into the last one it was given, and only once.
   */
  readTarget(): Buffer {
    const pending = this.pending;
    if (pending?.kind === 'request' && this.queue.length === 0 && pending.length - this.filled >= DIRECT_READ_MIN) {
      this.lent = 'payload';
      return pending.payload!.subarray(this.filled, pending.length);
    }
    // Every byte of the scratch buffer is consumed and nothing handed out
    // refers to it (headers are read at once, option data is copied): reuse it.
    if (this.scratch && this.queue.length === 0) this.scratchUsed = 0;
    if (!this.scratch || this.scratch.length - this.scratchUsed < SCRATCH_MIN_ROOM) {
      this.scratch = Buffer.allocUnsafe(SCRATCH_BYTES);
      this.scratchUsed = 0;
    }
    this.lent = 'scratch';
    const headerOnly = this.headerReads && pending === null && this.queue.length === 0;
    return this.scratch.subarray(this.scratchUsed, headerOnly ? this.scratchUsed + REQUEST_HEADER_SIZE : undefined);
  }

  /**
   * Bytes the next read may wait for before it is worth making: the rest of
   * a payload being read straight into its buffer, else 1 (anything may
   * complete a request).
   */
  readWanted(): number {
    const pending = this.pending;
    if (pending?.kind !== 'request' || this.queue.length !== 0) return 1;
    const rest = pending.length - this.filled;
    return rest >= DIRECT_READ_MIN ? rest : 1;
  }

  /** `n` bytes were read into the last readTarget(). */
  received(n: number): void {
    const lent = this.lent;
    this.lent = null;
    if (lent === null) throw new Error('ServerDecoder: received() without a readTarget()');
    if (n === 0 || this.phase === 'failed') return; // after close() or a protocol error: dropped
    if (lent === 'payload') this.filled += n;
    else {
      this.queue.push(this.scratch!.subarray(this.scratchUsed, this.scratchUsed + n));
      this.scratchUsed += n;
    }
  }

  /**
   * Nothing more is decoded: bytes still arriving are dropped, and a payload
   * not yet whole is dropped and its buffer handed back.
   */
  close(): void {
    const pending = this.pending;
    this.pending = null;
    this.phase = 'failed';
    if (pending?.kind === 'request' && pending.payload) this.limits.releasePayload?.(pending.payload);
  }

  /** Bytes received but not yet decoded. */
  get buffered(): number {
    return this.queue.length;
  }

  /** Called once the handshake has chosen an export; requests follow. */
  startTransmission(): void {
    this.phase = 'transmission';
  }

  next(): ClientMessage | null {
    if (this.discard > 0) {
      this.discard -= this.queue.skip(this.discard);
      if (this.discard > 0) return null;
    }
    if (this.afterDiscard) {
      const message = this.afterDiscard;
      this.afterDiscard = null;
      return message;
    }
    if (this.pending) return this.finishPending();
    switch (this.phase) {
      case 'clientFlags':
        if (this.queue.length < 4) return null;
        this.phase = 'options';
        return { kind: 'clientFlags', flags: this.queue.take(4).readUInt32BE(0) };
      case 'options':
        return this.nextOption();
      case 'transmission':
        return this.nextRequest();
      case 'failed':
        return null;
    }
  }

  private nextOption(): ClientMessage | null {
    if (this.queue.length < OPTION_HEADER_SIZE) return null;
    const header = this.queue.take(OPTION_HEADER_SIZE);
    if (header.readBigUInt64BE(0) !== IHAVEOPT) {
      return this.fail(`bad option magic 0x${header.readBigUInt64BE(0).toString(16)}`);
    }
    const option = header.readUInt32BE(8);
    const length = header.readUInt32BE(12);
    if (length > this.limits.maxOptionLength) {
      return this.discardThen({ kind: 'option', option, data: null, length });
    }
    this.pending = { kind: 'option', option, data: null, length };
    return this.finishPending();
  }

  private nextRequest(): ClientMessage | null {
    if (this.queue.length < REQUEST_HEADER_SIZE) return null;
    const header = this.queue.take(REQUEST_HEADER_SIZE);
    const magic = header.readUInt32BE(0);
    if (magic !== REQUEST_MAGIC) return this.fail(`bad request magic 0x${magic.toString(16)}`);
    const flags = header.readUInt16BE(4);
    const type = header.readUInt16BE(6);
    const cookie = Buffer.from(header.subarray(8, 16));
    const offset = header.readUInt32BE(16) * 0x100000000 + header.readUInt32BE(20);
    const length = header.readUInt32BE(24);
    const request: RequestMessage = { kind: 'request', flags, type, cookie, offset, length, payload: null };
    this.headerReads = type === Command.Write && length - this.queue.length >= DIRECT_READ_MIN;
    if (type !== Command.Write) return request;
    if (length > this.limits.maxWritePayload) return this.discardThen(request);
    // The payload's own buffer from the start, so the rest of it can be read straight into it.
    request.payload = this.limits.allocatePayload?.(length) ?? Buffer.allocUnsafe(length);
    this.filled = 0;
    this.pending = request;
    return this.finishPending();
  }

  /** Drops the message's data as it arrives; the message follows once it is all gone. */
  private discardThen(message: OptionMessage | RequestMessage): ClientMessage | null {
    this.discard = message.length - this.queue.skip(message.length);
    if (this.discard === 0) return message;
    this.afterDiscard = message;
    return null;
  }

  private finishPending(): ClientMessage | null {
    const pending = this.pending!;
    if (pending.kind === 'option') {
      if (this.queue.length < pending.length) return null;
      this.pending = null;
      // A copy: the bytes may sit in the scratch buffer, which is reused.
      pending.data = Buffer.from(this.queue.take(pending.length));
      return pending;
    }
    // Own the bytes: the payload outlives the chunk (or scratch space) they came in.
    const step = Math.min(this.queue.length, pending.length - this.filled);
    if (step > 0) this.queue.copyInto(pending.payload!, this.filled, step);
    this.filled += step;
    if (this.filled < pending.length) return null;
    this.pending = null;
    this.filled = 0;
    return pending;
  }

  private fail(reason: string): ProtocolErrorMessage {
    this.phase = 'failed';
    return { kind: 'protocolError', reason };
  }
}
