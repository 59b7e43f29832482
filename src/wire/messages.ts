/**
 * The ferry wire's messages: typed fields to frame metadata and back. Pure.
 * A decoder returns a string (the reason) for metadata that does not parse.
 */
import { encodeFrameHead } from './frame-codec';
import { BLOCK_HASH_BYTES } from '../util/block-hash';
import {
  ENTRY_SIZE,
  MAX_DIRTY_RANGES,
  MAX_HASH_BLOCKS,
  MAX_PAYLOAD,
  MAX_STRING,
  MAX_ZERO_RANGES,
  MessageType,
  WireEncoding,
} from './protocol';

export interface Hello {
  version: number;
  role: number;
  blockSize: number;
  maxBatchBlocks: number;
  encodings: number[];
  exportName: string;
  session: string;
  identity: string;
}

export interface Welcome {
  version: number;
  imageSize: number;
  identity: string;
  codec: string;
  /** How the source reports its writes (Tracking). */
  tracking: number;
  /** The lifetime of this session's write tracking ('' without tracking). */
  trackingEpoch: string;
}

export interface Refuse {
  code: number;
  reason: string;
}

export interface Fetch {
  requestId: number;
  priority: number;
  flags: number;
  offset: number;
  length: number;
}

export interface WireEntry {
  encoding: WireEncoding;
  /** Payload bytes (0 for zero and reference). */
  length: number;
  /** xxh64 of the block's bytes, zero-padded to the block size. */
  checksum: bigint;
  /** For a reference: the block index whose content this block repeats. */
  reference: number;
}

export interface BatchMeta {
  requestId: number;
  offset: number;
  count: number;
  lastLength: number;
  entries: WireEntry[];
}

export interface FetchError {
  requestId: number;
  code: number;
  reason: string;
}

/** Asks which parts of [offset, offset+length) read as zeros at the source. */
export interface ZeroQuery {
  requestId: number;
  offset: number;
  length: number;
}

/** The answer: zero ranges within [offset, offset+covered), ascending and disjoint. */
export interface ZeroRanges {
  requestId: number;
  offset: number;
  /** How far the answer goes (at least one byte, at most the length asked). */
  covered: number;
  ranges: Array<{ offset: number; length: number }>;
}

/** The rate, in frame bytes per second, the session's background batches leave the source at; 0: as fast as they are ready. */
export interface Pace {
  bytesPerSecond: number;
}

/** Asks for the SHA-256 of `count` blocks (of the session's block size) from `offset`. */
export interface HashQuery {
  requestId: number;
  offset: number;
  count: number;
}

/** The answer: `count` SHA-256 digests back to back, one per block in order. */
export interface BlockHashes {
  requestId: number;
  offset: number;
  count: number;
  hashes: Buffer;
}

export interface ByteRange {
  offset: number;
  length: number;
}

/** DIRTY: writes the source took since its earlier reports. */
export interface Dirty {
  seq: number;
  /** Ascending, disjoint, non-empty; at least one, at most MAX_DIRTY_RANGES. */
  ranges: ByteRange[];
}

export interface DirtyAck {
  seq: number;
}

/** One CUTOVER frame: part of the final write set (the set ends with the frame flagged Final). */
export interface Cutover {
  seq: number;
  ranges: ByteRange[];
}

class Writer {
  private parts: Buffer[] = [];
  u8(v: number): this {
    this.parts.push(Buffer.from([v]));
    return this;
  }
  u16(v: number): this {
    const b = Buffer.allocUnsafe(2);
    b.writeUInt16BE(v, 0);
    this.parts.push(b);
    return this;
  }
  u32(v: number): this {
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32BE(v >>> 0, 0);
    this.parts.push(b);
    return this;
  }
  u64(v: number): this {
    const b = Buffer.allocUnsafe(8);
    b.writeBigUInt64BE(BigInt(v), 0);
    this.parts.push(b);
    return this;
  }
  str(s: string): this {
    const bytes = Buffer.from(s, 'utf8');
    if (bytes.length > MAX_STRING) throw new RangeError(`string of ${bytes.length} bytes exceeds ${MAX_STRING}`);
    return this.u16(bytes.length).bytes(bytes);
  }
  bytes(b: Buffer): this {
    this.parts.push(b);
    return this;
  }
  done(): Buffer {
    return Buffer.concat(this.parts);
  }
}

/** Reads fields in order; any overrun makes `ok` false instead of throwing. */
class Reader {
  private at = 0;
  ok = true;
  constructor(private readonly b: Buffer) {}
  private need(n: number): boolean {
    if (this.at + n > this.b.length) this.ok = false;
    return this.ok;
  }
  u8(): number {
    if (!this.need(1)) return 0;
    return this.b.readUInt8(this.at++);
  }
  u16(): number {
    if (!this.need(2)) return 0;
    const v = this.b.readUInt16BE(this.at);
    this.at += 2;
    return v;
  }
  u32(): number {
    if (!this.need(4)) return 0;
    const v = this.b.readUInt32BE(this.at);
    this.at += 4;
    return v;
  }
  u64(): number {
    if (!this.need(8)) return 0;
    const v = this.b.readBigUInt64BE(this.at);
    this.at += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.ok = false;
    return Number(v);
  }
  big64(): bigint {
    if (!this.need(8)) return 0n;
    const v = this.b.readBigUInt64BE(this.at);
    this.at += 8;
    return v;
  }
  str(): string {
    const n = this.u16();
    if (n > MAX_STRING || !this.need(n)) {
      this.ok = false;
      return '';
    }
    const s = this.b.toString('utf8', this.at, this.at + n);
    this.at += n;
    return s;
  }
  get atEnd(): boolean {
    return this.at === this.b.length;
  }
}

export function encodeHello(m: Hello): Buffer {
  const w = new Writer().u16(m.version).u8(m.role).u8(0).u32(m.blockSize).u32(m.maxBatchBlocks).u8(m.encodings.length);
  for (const e of m.encodings) w.u8(e);
  return encodeFrameHead(MessageType.Hello, 0, w.str(m.exportName).str(m.session).str(m.identity).done());
}

export function decodeHello(meta: Buffer): Hello | string {
  const r = new Reader(meta);
  const version = r.u16();
  const role = r.u8();
  r.u8();
  const blockSize = r.u32();
  const maxBatchBlocks = r.u32();
  const n = r.u8();
  const encodings: number[] = [];
  for (let i = 0; i < n; i++) encodings.push(r.u8());
  const m = {
    version,
    role,
    blockSize,
    maxBatchBlocks,
    encodings,
    exportName: r.str(),
    session: r.str(),
    identity: r.str(),
  };
  return r.ok && r.atEnd ? m : 'malformed HELLO';
}

/** `flags`: WelcomeFlag bits (what else the source answers). */
export function encodeWelcome(m: Welcome, flags = 0): Buffer {
  return encodeFrameHead(
    MessageType.Welcome,
    flags,
    new Writer()
      .u16(m.version)
      .u64(m.imageSize)
      .str(m.identity)
      .str(m.codec)
      .u8(m.tracking)
      .str(m.trackingEpoch)
      .done(),
  );
}

export function decodeWelcome(meta: Buffer): Welcome | string {
  const r = new Reader(meta);
  const m = {
    version: r.u16(),
    imageSize: r.u64(),
    identity: r.str(),
    codec: r.str(),
    tracking: r.u8(),
    trackingEpoch: r.str(),
  };
  return r.ok && r.atEnd ? m : 'malformed WELCOME';
}

export function encodeRefuse(m: Refuse): Buffer {
  return encodeFrameHead(MessageType.Refuse, 0, new Writer().u16(m.code).str(m.reason.slice(0, 1000)).done());
}

export function decodeRefuse(meta: Buffer): Refuse | string {
  const r = new Reader(meta);
  const m = { code: r.u16(), reason: r.str() };
  return r.ok && r.atEnd ? m : 'malformed REFUSE';
}

export function encodeFetch(m: Fetch): Buffer {
  return encodeFrameHead(
    MessageType.Fetch,
    0,
    new Writer().u32(m.requestId).u8(m.priority).u8(m.flags).u64(m.offset).u32(m.length).done(),
  );
}

export function decodeFetch(meta: Buffer): Fetch | string {
  const r = new Reader(meta);
  const m = { requestId: r.u32(), priority: r.u8(), flags: r.u8(), offset: r.u64(), length: r.u32() };
  return r.ok && r.atEnd ? m : 'malformed FETCH';
}

/** Header and metadata of a BATCH; the payloads (sum of entry lengths) follow. */
export function encodeBatchHead(m: BatchMeta, final: boolean, payloadLength: number): Buffer {
  const meta = Buffer.allocUnsafe(20 + m.entries.length * ENTRY_SIZE);
  meta.writeUInt32BE(m.requestId, 0);
  meta.writeBigUInt64BE(BigInt(m.offset), 4);
  meta.writeUInt32BE(m.count, 12);
  meta.writeUInt32BE(m.lastLength, 16);
  let at = 20;
  for (const e of m.entries) {
    meta.writeUInt8(e.encoding, at);
    meta.writeUInt8(0, at + 1);
    if (e.encoding === WireEncoding.Reference) {
      meta.writeUInt16BE(Math.floor(e.reference / 0x100000000), at + 2);
      meta.writeUInt32BE(e.reference >>> 0, at + 4);
    } else {
      meta.writeUInt16BE(0, at + 2);
      meta.writeUInt32BE(e.length, at + 4);
    }
    meta.writeBigUInt64BE(e.checksum, at + 8);
    at += ENTRY_SIZE;
  }
  return encodeFrameHead(MessageType.Batch, final ? 1 : 0, meta, payloadLength);
}

export function decodeBatchMeta(meta: Buffer): BatchMeta | string {
  if (meta.length < 20 || (meta.length - 20) % ENTRY_SIZE !== 0) return 'malformed BATCH';
  const count = meta.readUInt32BE(12);
  if (count !== (meta.length - 20) / ENTRY_SIZE) return 'BATCH entry count does not match its metadata';
  const offsetBig = meta.readBigUInt64BE(4);
  if (offsetBig > BigInt(Number.MAX_SAFE_INTEGER)) return 'BATCH offset out of range';
  const entries: WireEntry[] = new Array(count);
  for (let i = 0, at = 20; i < count; i++, at += ENTRY_SIZE) {
    const encoding = meta.readUInt8(at) as WireEncoding;
    const high = meta.readUInt16BE(at + 2);
    const low = meta.readUInt32BE(at + 4);
    const reference = encoding === WireEncoding.Reference ? high * 0x100000000 + low : 0;
    entries[i] = {
      encoding,
      length: encoding === WireEncoding.Reference ? 0 : low,
      checksum: meta.readBigUInt64BE(at + 8),
      reference,
    };
  }
  return {
    requestId: meta.readUInt32BE(0),
    offset: Number(offsetBig),
    count,
    lastLength: meta.readUInt32BE(16),
    entries,
  };
}

export function encodeFetchError(m: FetchError): Buffer {
  return encodeFrameHead(
    MessageType.FetchError,
    0,
    new Writer().u32(m.requestId).u16(m.code).str(m.reason.slice(0, 1000)).done(),
  );
}

export function decodeFetchError(meta: Buffer): FetchError | string {
  const r = new Reader(meta);
  const m = { requestId: r.u32(), code: r.u16(), reason: r.str() };
  return r.ok && r.atEnd ? m : 'malformed FETCH_ERROR';
}

/**
 * The largest BATCH payload a source may send a destination that said
 * `blockSize` and `maxBatchBlocks` in HELLO: no block is sent larger than
 * its bytes (a block compression does not shrink goes raw), and no batch
 * holds more blocks than asked for.
 */
export function maxBatchPayload(blockSize: number, maxBatchBlocks: number): number {
  return Math.min(blockSize * maxBatchBlocks, MAX_PAYLOAD);
}

/** Sum of the payload lengths of a batch's entries. */
export function batchPayloadLength(entries: readonly WireEntry[]): number {
  let n = 0;
  for (const e of entries) n += e.length;
  return n;
}

export function encodeZeroQuery(m: ZeroQuery): Buffer {
  return encodeFrameHead(MessageType.ZeroQuery, 0, new Writer().u32(m.requestId).u64(m.offset).u64(m.length).done());
}

export function decodeZeroQuery(meta: Buffer): ZeroQuery | string {
  const r = new Reader(meta);
  const m = { requestId: r.u32(), offset: r.u64(), length: r.u64() };
  return r.ok && r.atEnd ? m : 'malformed ZERO_QUERY';
}

export function encodeZeroRanges(m: ZeroRanges): Buffer {
  const w = new Writer().u32(m.requestId).u64(m.offset).u64(m.covered).u32(m.ranges.length);
  for (const range of m.ranges) w.u64(range.offset).u64(range.length);
  return encodeFrameHead(MessageType.ZeroRanges, 0, w.done());
}

/** Decodes and checks the shape: ranges ascending, disjoint, non-empty and inside the covered span. */
export function decodeZeroRanges(meta: Buffer): ZeroRanges | string {
  const r = new Reader(meta);
  const requestId = r.u32();
  const offset = r.u64();
  const covered = r.u64();
  const n = r.u32();
  if (!r.ok || n > MAX_ZERO_RANGES) return 'malformed ZERO_RANGES';
  const ranges: ZeroRanges['ranges'] = [];
  let floor = offset;
  for (let i = 0; i < n; i++) {
    const range = { offset: r.u64(), length: r.u64() };
    if (!r.ok) return 'malformed ZERO_RANGES';
    if (range.length === 0 || range.offset < floor || range.offset + range.length > offset + covered)
      return 'ZERO_RANGES ranges out of order or outside the covered span';
    floor = range.offset + range.length;
    ranges.push(range);
  }
  if (!r.atEnd || covered === 0) return 'malformed ZERO_RANGES';
  return { requestId, offset, covered, ranges };
}

export function encodePace(m: Pace): Buffer {
  return encodeFrameHead(MessageType.Pace, 0, new Writer().u64(m.bytesPerSecond).done());
}

export function decodePace(meta: Buffer): Pace | string {
  const r = new Reader(meta);
  const m = { bytesPerSecond: r.u64() };
  return r.ok && r.atEnd ? m : 'malformed PACE';
}

export function encodeHashQuery(m: HashQuery): Buffer {
  return encodeFrameHead(MessageType.HashQuery, 0, new Writer().u32(m.requestId).u64(m.offset).u32(m.count).done());
}

export function decodeHashQuery(meta: Buffer): HashQuery | string {
  const r = new Reader(meta);
  const m = { requestId: r.u32(), offset: r.u64(), count: r.u32() };
  if (!r.ok || !r.atEnd) return 'malformed HASH_QUERY';
  if (m.count < 1 || m.count > MAX_HASH_BLOCKS) return `HASH_QUERY of ${m.count} blocks is not 1..${MAX_HASH_BLOCKS}`;
  return m;
}

export function encodeBlockHashes(m: BlockHashes): Buffer {
  if (m.hashes.length !== m.count * BLOCK_HASH_BYTES) throw new RangeError('BLOCK_HASHES: one hash per block');
  return encodeFrameHead(
    MessageType.BlockHashes,
    0,
    Buffer.concat([new Writer().u32(m.requestId).u64(m.offset).u32(m.count).done(), m.hashes]),
  );
}

export function decodeBlockHashes(meta: Buffer): BlockHashes | string {
  const r = new Reader(meta);
  const requestId = r.u32();
  const offset = r.u64();
  const count = r.u32();
  if (!r.ok || count < 1 || count > MAX_HASH_BLOCKS || meta.length !== 16 + count * BLOCK_HASH_BYTES)
    return 'malformed BLOCK_HASHES';
  return { requestId, offset, count, hashes: Buffer.from(meta.subarray(16)) };
}

function writeRanges(w: Writer, ranges: readonly ByteRange[], what: string): Writer {
  if (ranges.length > MAX_DIRTY_RANGES)
    throw new RangeError(`${what} of ${ranges.length} ranges exceeds ${MAX_DIRTY_RANGES}`);
  w.u32(ranges.length);
  for (const range of ranges) w.u64(range.offset).u64(range.length);
  return w;
}

/** Reads a range list; null when it is malformed, too long, empty ranges, or out of order. */
function readRanges(r: Reader): ByteRange[] | null {
  const n = r.u32();
  if (!r.ok || n > MAX_DIRTY_RANGES) return null;
  const ranges: ByteRange[] = [];
  let floor = 0;
  for (let i = 0; i < n; i++) {
    const range = { offset: r.u64(), length: r.u64() };
    if (!r.ok || range.length === 0 || range.offset < floor) return null;
    floor = range.offset + range.length;
    if (floor > Number.MAX_SAFE_INTEGER) return null;
    ranges.push(range);
  }
  return r.atEnd ? ranges : null;
}

export function encodeDirty(m: Dirty): Buffer {
  return encodeFrameHead(MessageType.Dirty, 0, writeRanges(new Writer().u64(m.seq), m.ranges, 'DIRTY').done());
}

/** Decodes and checks the shape: at least one range, ascending, disjoint, non-empty. */
export function decodeDirty(meta: Buffer): Dirty | string {
  const r = new Reader(meta);
  const seq = r.u64();
  const ranges = readRanges(r);
  if (!ranges) return 'malformed DIRTY (truncated, over-long, or ranges empty or out of order)';
  if (ranges.length === 0) return 'DIRTY without ranges';
  return { seq, ranges };
}

export function encodeDirtyAck(m: DirtyAck): Buffer {
  return encodeFrameHead(MessageType.DirtyAck, 0, new Writer().u64(m.seq).done());
}

export function decodeDirtyAck(meta: Buffer): DirtyAck | string {
  const r = new Reader(meta);
  const m = { seq: r.u64() };
  return r.ok && r.atEnd ? m : 'malformed DIRTY_ACK';
}

export function encodeCutoverRequest(): Buffer {
  return encodeFrameHead(MessageType.CutoverRequest, 0, Buffer.alloc(0));
}

export function decodeCutoverRequest(meta: Buffer): Record<string, never> | string {
  return meta.length === 0 ? {} : 'malformed CUTOVER_REQUEST (it has no fields)';
}

export function encodeCutover(m: Cutover, final: boolean): Buffer {
  const meta = writeRanges(new Writer().u64(m.seq), m.ranges, 'CUTOVER').done();
  return encodeFrameHead(MessageType.Cutover, final ? 1 : 0, meta);
}

/** One frame's part of the set: ascending, disjoint, non-empty ranges (possibly none). */
export function decodeCutover(meta: Buffer): Cutover | string {
  const r = new Reader(meta);
  const seq = r.u64();
  const ranges = readRanges(r);
  if (!ranges) return 'malformed CUTOVER (truncated, over-long, or ranges empty or out of order)';
  return { seq, ranges };
}

/** A write set as CUTOVER frames of at most MAX_DIRTY_RANGES ranges each, the last flagged Final. */
export function encodeCutoverFrames(seq: number, ranges: readonly ByteRange[]): Buffer[] {
  const frames: Buffer[] = [];
  let at = 0;
  do {
    const part = ranges.slice(at, at + MAX_DIRTY_RANGES);
    at += part.length;
    frames.push(encodeCutover({ seq, ranges: part }, at >= ranges.length));
  } while (at < ranges.length);
  return frames;
}
