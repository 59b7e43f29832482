/**
 * ferry wire framing, pure: the preamble, then frames of a CRC-checked
 * header and metadata followed by an unchecked payload (its blocks carry
 * their own checksums). Bytes in, frames out, for any split of the stream.
 */
import zlib from 'node:zlib';
import { ByteQueue } from '../util/byte-queue';
import { FRAME_HEADER_SIZE, MAX_META, MAX_PAYLOAD, PREAMBLE_MAGIC, PREAMBLE_SIZE, WIRE_VERSION } from './protocol';

export interface Frame {
  type: number;
  flags: number;
  meta: Buffer;
  /** The payload at the start of a buffer of its own (transferable to a worker; it may be longer). */
  payload: Buffer;
}

export type WireEvent =
  { kind: 'preamble'; version: number } | { kind: 'frame'; frame: Frame } | { kind: 'corrupt'; reason: string };

export function encodePreamble(version = WIRE_VERSION): Buffer {
  const b = Buffer.alloc(PREAMBLE_SIZE);
  b.write(PREAMBLE_MAGIC, 0, 'latin1');
  b.writeUInt8(version, 5);
  return b;
}

/** Header and metadata of a frame; the payload (payloadLength bytes) is written after it. */
export function encodeFrameHead(type: number, flags: number, meta: Buffer, payloadLength = 0): Buffer {
  if (meta.length > MAX_META) throw new RangeError(`frame metadata of ${meta.length} bytes exceeds ${MAX_META}`);
  if (payloadLength > MAX_PAYLOAD)
    throw new RangeError(`frame payload of ${payloadLength} bytes exceeds ${MAX_PAYLOAD}`);
  const b = Buffer.allocUnsafe(FRAME_HEADER_SIZE + meta.length);
  b.writeUInt32BE(meta.length, 0);
  b.writeUInt32BE(payloadLength, 4);
  b.writeUInt8(type, 8);
  b.writeUInt8(flags, 9);
  b.writeUInt16BE(0, 10);
  meta.copy(b, FRAME_HEADER_SIZE);
  b.writeUInt32BE(frameCrc(b.subarray(0, 12), b.subarray(FRAME_HEADER_SIZE)), 12);
  return b;
}

function frameCrc(head: Buffer, meta: Buffer): number {
  return zlib.crc32(meta, zlib.crc32(head));
}

export class FrameDecoder {
  private readonly queue = new ByteQueue();
  private gotPreamble = false;
  private failed = false;
  private maxMeta = MAX_META;
  private maxPayload = MAX_PAYLOAD;
  private payloadBuffer: (type: number, length: number) => ArrayBuffer = (_type, length) => new ArrayBuffer(length);

  /** Where payloads are received: a buffer of at least `length` bytes of its own, not shared with anything else. */
  receivePayloadsInto(take: (type: number, length: number) => ArrayBuffer): void {
    this.payloadBuffer = take;
  }

  /** Lowers the bounds on frames to come (an unauthenticated peer gets small ones); no arguments restore the protocol's. */
  setLimits(maxMeta = MAX_META, maxPayload = MAX_PAYLOAD): void {
    this.maxMeta = Math.min(maxMeta, MAX_META);
    this.maxPayload = Math.min(maxPayload, MAX_PAYLOAD);
  }

  push(chunk: Buffer): void {
    this.queue.push(chunk);
  }

  get buffered(): number {
    return this.queue.length;
  }

  next(): WireEvent | null {
    if (this.failed) return null;
    if (!this.gotPreamble) {
      if (this.queue.length < PREAMBLE_SIZE) return null;
      const p = this.queue.take(PREAMBLE_SIZE);
      if (p.toString('latin1', 0, 5) !== PREAMBLE_MAGIC) return this.fail('not a ferry wire peer (bad preamble)');
      this.gotPreamble = true;
      return { kind: 'preamble', version: p.readUInt8(5) };
    }
    if (this.queue.length < FRAME_HEADER_SIZE) return null;
    const head = this.queue.peek(FRAME_HEADER_SIZE);
    const metaLength = head.readUInt32BE(0);
    const payloadLength = head.readUInt32BE(4);
    if (metaLength > this.maxMeta || payloadLength > this.maxPayload) {
      return this.fail(
        `frame lengths out of bounds (metadata ${metaLength} of at most ${this.maxMeta}, payload ${payloadLength} of at most ${this.maxPayload})`,
      );
    }
    if (this.queue.length < FRAME_HEADER_SIZE + metaLength) return null;
    const type = head.readUInt8(8);
    const flags = head.readUInt8(9);
    const crc = head.readUInt32BE(12);
    const headCopy = Buffer.from(head.subarray(0, 12));
    // Check the CRC before trusting payloadLength enough to wait for it.
    const meta = Buffer.from(this.queue.peek(FRAME_HEADER_SIZE + metaLength).subarray(FRAME_HEADER_SIZE));
    if (frameCrc(headCopy, meta) !== crc) return this.fail(`frame header CRC mismatch (type ${type})`);
    if (this.queue.length < FRAME_HEADER_SIZE + metaLength + payloadLength) return null;
    this.queue.skip(FRAME_HEADER_SIZE + metaLength);
    const payload = Buffer.from(this.payloadBuffer(type, payloadLength), 0, payloadLength);
    this.queue.copyInto(payload, 0, payloadLength);
    return { kind: 'frame', frame: { type, flags, meta, payload } };
  }

  private fail(reason: string): WireEvent {
    this.failed = true;
    return { kind: 'corrupt', reason };
  }
}
