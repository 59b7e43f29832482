import crypto from 'node:crypto';
import t from 'tap';
import { encodePreamble, FrameDecoder, WireEvent } from '../src/wire/frame-codec';
import {
  maxBatchPayload,
  decodeBatchMeta,
  decodeFetch,
  decodeFetchError,
  decodeHello,
  decodeRefuse,
  decodeWelcome,
  encodeBatchHead,
  encodeFetch,
  encodeFetchError,
  encodeHello,
  encodeRefuse,
  encodeWelcome,
  decodeZeroQuery,
  decodeHashQuery,
  decodePace,
  decodeBlockHashes,
  encodeHashQuery,
  encodePace,
  encodeBlockHashes,
  decodeZeroRanges,
  encodeZeroQuery,
  encodeZeroRanges,
  decodeCutover,
  decodeCutoverRequest,
  decodeDirty,
  decodeDirtyAck,
  encodeCutover,
  encodeCutoverFrames,
  encodeCutoverRequest,
  encodeDirty,
  encodeDirtyAck,
} from '../src/wire/messages';
import { MAX_DIRTY_RANGES, MAX_META, MAX_PAYLOAD, MessageType, WireEncoding } from '../src/wire/protocol';

const hello = {
  version: 2,
  role: 1,
  blockSize: 4096,
  maxBatchBlocks: 64,
  encodings: [0, 1, 2, 3, 4],
  exportName: 'disk',
  session: 'abc',
  identity: 'ferry-image:1234',
};
const welcome = {
  version: 2,
  imageSize: 2 ** 40 + 512,
  identity: 'ferry-image:x',
  codec: 'lz4',
  tracking: 1,
  trackingEpoch: 'epoch-1',
};
const dirty = {
  seq: 7,
  ranges: [
    { offset: 4096, length: 8192 },
    { offset: 2 ** 33, length: 512 },
  ],
};
const fetch = { requestId: 7, priority: 0, flags: 1, offset: 2 ** 35, length: 262144 };
const batch = {
  requestId: 7,
  offset: 2 ** 35,
  count: 3,
  lastLength: 4096,
  entries: [
    { encoding: WireEncoding.Lz4, length: 5, checksum: 0x0123456789abcdefn, reference: 0 },
    { encoding: WireEncoding.Zero, length: 0, checksum: 0xffffffffffffffffn, reference: 0 },
    { encoding: WireEncoding.Reference, length: 0, checksum: 42n, reference: 2 ** 40 + 3 },
  ],
};
const payload = Buffer.from('hello');

function stream(): Buffer {
  return Buffer.concat([
    encodePreamble(),
    encodeHello(hello),
    encodeWelcome(welcome),
    encodeFetch(fetch),
    encodeBatchHead(batch, true, payload.length),
    payload,
    encodeRefuse({ code: 3, reason: 'no' }),
    encodeFetchError({ requestId: 9, code: 1, reason: 'beyond' }),
    encodeDirty(dirty),
    encodeDirtyAck({ seq: 7 }),
    encodeCutoverRequest(),
    encodeCutover({ seq: 8, ranges: dirty.ranges }, true),
  ]);
}

function decodeAll(pieces: Buffer[]): WireEvent[] {
  const d = new FrameDecoder();
  const out: WireEvent[] = [];
  for (const p of pieces) {
    d.push(p);
    for (let e = d.next(); e; e = d.next()) out.push(e);
  }
  return out;
}

t.test('every message round-trips, for every split of the stream', async (t) => {
  const bytes = stream();
  const events = decodeAll([bytes]);
  t.same(
    events.map((e) => (e.kind === 'frame' ? e.frame.type : e.kind)),
    [
      'preamble',
      MessageType.Hello,
      MessageType.Welcome,
      MessageType.Fetch,
      MessageType.Batch,
      MessageType.Refuse,
      MessageType.FetchError,
      MessageType.Dirty,
      MessageType.DirtyAck,
      MessageType.CutoverRequest,
      MessageType.Cutover,
    ],
  );
  const frames = events.flatMap((e) => (e.kind === 'frame' ? [e.frame] : []));
  t.same(decodeHello(frames[0].meta), hello);
  t.same(decodeWelcome(frames[1].meta), welcome);
  t.same(decodeFetch(frames[2].meta), fetch);
  t.same(decodeBatchMeta(frames[3].meta), batch);
  t.equal(frames[3].flags & 1, 1, 'final flag');
  t.same(frames[3].payload, payload);
  t.ok(frames[3].payload.buffer.byteLength === payload.length, 'the payload owns its buffer (transferable)');
  t.same(decodeRefuse(frames[4].meta), { code: 3, reason: 'no' });
  t.same(decodeFetchError(frames[5].meta), { requestId: 9, code: 1, reason: 'beyond' });
  t.same(decodeDirty(frames[6].meta), dirty);
  t.same(decodeDirtyAck(frames[7].meta), { seq: 7 });
  t.same(decodeCutoverRequest(frames[8].meta), {});
  t.same(decodeCutover(frames[9].meta), { seq: 8, ranges: dirty.ranges });
  t.equal(frames[9].flags & 1, 1, 'CUTOVER final flag');
  const strip = (evs: WireEvent[]) =>
    evs.map((e) => (e.kind === 'frame' ? { ...e.frame, payload: [...e.frame.payload] } : e));
  const reference = strip(events);
  for (let at = 1; at < bytes.length; at++) {
    t.same(strip(decodeAll([bytes.subarray(0, at), bytes.subarray(at)])), reference, `split at ${at}`);
  }
  t.same(strip(decodeAll([...bytes].map((b) => Buffer.from([b])))), reference, 'byte by byte');
});

t.test('a flipped bit anywhere in a header or metadata is detected', async (t) => {
  const frame = Buffer.concat([encodePreamble(), encodeBatchHead(batch, true, payload.length), payload]);
  const metaEnd = frame.length - payload.length;
  let detected = 0;
  for (let bit = 8 * 8; bit < metaEnd * 8; bit++) {
    const bad = Buffer.from(frame);
    bad[bit >> 3] ^= 1 << (bit & 7);
    const events = decodeAll([bad]);
    if (events.some((e) => e.kind === 'corrupt')) detected++;
    else if (events.length === 1) detected++; // a length grew: the decoder waits; the CRC fails once it can check
  }
  t.equal(detected, (metaEnd - 8) * 8, 'every single-bit flip');
});

t.test('bad preamble, oversized lengths and malformed metadata are reported, not thrown', async (t) => {
  t.equal(decodeAll([Buffer.from('NBDMAGIC')])[0].kind, 'corrupt');
  const huge = Buffer.alloc(16);
  huge.writeUInt32BE(0xffffffff, 0);
  const events = decodeAll([encodePreamble(), huge]);
  t.equal(events[1].kind, 'corrupt');
  t.type(decodeHello(Buffer.from([0, 1])), 'string');
  t.type(decodeFetch(Buffer.alloc(3)), 'string');
  t.type(decodeBatchMeta(Buffer.alloc(21)), 'string');
  const wrongCount = Buffer.from(encodeBatchHead(batch, false, 0).subarray(16));
  wrongCount.writeUInt32BE(9, 12);
  t.type(decodeBatchMeta(wrongCount), 'string');
  t.type(
    decodeWelcome(Buffer.concat([Buffer.from(encodeWelcome(welcome).subarray(16)), Buffer.from([1])])),
    'string',
    'trailing bytes',
  );
});

t.test('ZERO_QUERY and ZERO_RANGES round-trip; bad ranges are refused', async (t) => {
  const q = { requestId: 12, offset: 1 << 30, length: 2 ** 36 };
  const [qf] = decodeAll([encodePreamble(), encodeZeroQuery(q)]).filter((e) => e.kind === 'frame') as Array<
    Extract<WireEvent, { kind: 'frame' }>
  >;
  t.equal(qf.frame.type, MessageType.ZeroQuery);
  t.same(decodeZeroQuery(qf.frame.meta), q);
  const answer = {
    requestId: 12,
    offset: 1 << 30,
    covered: 1 << 28,
    ranges: [
      { offset: 1 << 30, length: 8192 },
      { offset: (1 << 30) + 65536, length: 1 << 20 },
    ],
  };
  const meta = (bytes: Buffer): Buffer => bytes.subarray(16);
  t.same(decodeZeroRanges(meta(encodeZeroRanges(answer))), answer);
  const outside = { ...answer, ranges: [{ offset: (1 << 30) + (1 << 28) - 4096, length: 8192 }] };
  t.match(decodeZeroRanges(meta(encodeZeroRanges(outside))), /outside the covered span/);
  const unordered = { ...answer, ranges: [answer.ranges[1], answer.ranges[0]] };
  t.match(decodeZeroRanges(meta(encodeZeroRanges(unordered))), /out of order/);
  const empty = { ...answer, ranges: [{ offset: 1 << 30, length: 0 }] };
  t.type(decodeZeroRanges(meta(encodeZeroRanges(empty))), 'string');
  t.type(decodeZeroRanges(meta(encodeZeroRanges({ ...answer, covered: 0, ranges: [] }))), 'string', 'covers nothing');
  t.type(decodeZeroRanges(Buffer.alloc(23)), 'string', 'truncated');
  t.type(decodeZeroQuery(Buffer.alloc(19)), 'string');
});

t.test('PACE round-trips; a truncated or overlong one is refused', async (t) => {
  const frame = encodePace({ bytesPerSecond: 12_500_000 });
  t.equal(frame[8], MessageType.Pace);
  t.same(decodePace(frame.subarray(16)), { bytesPerSecond: 12_500_000 });
  t.same(decodePace(encodePace({ bytesPerSecond: 0 }).subarray(16)), { bytesPerSecond: 0 }, '0: unpaced');
  t.equal(decodePace(Buffer.alloc(7)), 'malformed PACE');
  t.equal(decodePace(Buffer.alloc(9)), 'malformed PACE');
  t.equal(decodePace(Buffer.from('ffffffffffffffff', 'hex')), 'malformed PACE', 'beyond a safe integer');
});

t.test('HASH_QUERY and BLOCK_HASHES round-trip; wrong counts and lengths are refused', async (t) => {
  const meta = (bytes: Buffer): Buffer => bytes.subarray(16);
  const q = { requestId: 9, offset: 1 << 30, count: 3 };
  const qf = encodeHashQuery(q);
  t.equal(qf[8], MessageType.HashQuery);
  t.same(decodeHashQuery(meta(qf)), q);
  t.match(decodeHashQuery(meta(encodeHashQuery({ ...q, count: 0 }))), /not 1\.\.8192/);
  t.match(decodeHashQuery(meta(encodeHashQuery({ ...q, count: 8193 }))), /not 1\.\.8192/);
  t.type(decodeHashQuery(Buffer.alloc(15)), 'string', 'truncated');
  const answer = { requestId: 9, offset: 1 << 30, count: 3, hashes: crypto.randomBytes(96) };
  const af = encodeBlockHashes(answer);
  t.equal(af[8], MessageType.BlockHashes);
  t.same(decodeBlockHashes(meta(af)), answer);
  t.type(decodeBlockHashes(meta(af).subarray(0, 16 + 95)), 'string', 'a hash cut short');
  t.type(decodeBlockHashes(Buffer.concat([meta(af), Buffer.alloc(32)])), 'string', 'one hash too many');
  t.throws(() => encodeBlockHashes({ ...answer, count: 4 }), RangeError);
});

/** Frame header (16 bytes) then metadata, as hex: the layouts of docs/wire-protocol.md, byte for byte. */
const fixtures: Array<[string, Buffer, string]> = [
  [
    'WELCOME with tracking',
    encodeWelcome({
      version: 2,
      imageSize: 1 << 20,
      identity: 'id',
      codec: 'lz4',
      tracking: 1,
      trackingEpoch: 'ep',
    }),
    '00000018 00000000 02 00 0000 0ccfd697' + ' 0002 0000000000100000 0002 6964 0003 6c7a34 01 0002 6570',
  ],
  [
    'DIRTY',
    encodeDirty(dirty),
    '0000002c 00000000 09 00 0000 9ff5202a' +
      ' 0000000000000007 00000002 0000000000001000 0000000000002000 0000000200000000 0000000000000200',
  ],
  ['DIRTY_ACK', encodeDirtyAck({ seq: 7 }), '00000008 00000000 0a 00 0000 9d96a9d1 0000000000000007'],
  ['PACE', encodePace({ bytesPerSecond: 12_500_000 }), '00000008 00000000 0f 00 0000 278f5904 0000000000bebc20'],
  ['CUTOVER_REQUEST', encodeCutoverRequest(), '00000000 00000000 0b 00 0000 acd4416e'],
  [
    'CUTOVER, empty and final',
    encodeCutover({ seq: 9, ranges: [] }, true),
    '0000000c 00000000 0c 01 0000 8703adbc 0000000000000009 00000000',
  ],
];

t.test('version 2 messages match their byte fixtures', async (t) => {
  for (const [name, bytes, hex] of fixtures) t.equal(bytes.toString('hex'), hex.replace(/ /g, ''), name);
});

t.test('DIRTY, DIRTY_ACK, CUTOVER_REQUEST, CUTOVER: truncated, oversized and malformed input is refused', async (t) => {
  const meta = (bytes: Buffer): Buffer => Buffer.from(bytes.subarray(16));
  const full = meta(encodeDirty(dirty));
  for (let n = 0; n < full.length; n++) t.type(decodeDirty(full.subarray(0, n)), 'string', `DIRTY cut to ${n} bytes`);
  t.type(decodeDirty(Buffer.concat([full, Buffer.alloc(1)])), 'string', 'trailing byte');
  const cut = meta(encodeCutover({ seq: 8, ranges: dirty.ranges }, false));
  for (let n = 0; n < cut.length; n++) t.type(decodeCutover(cut.subarray(0, n)), 'string', `CUTOVER cut to ${n}`);
  const ack = meta(encodeDirtyAck({ seq: 7 }));
  for (let n = 0; n < ack.length; n++) t.type(decodeDirtyAck(ack.subarray(0, n)), 'string', `DIRTY_ACK cut to ${n}`);
  t.type(decodeDirtyAck(Buffer.alloc(9)), 'string', 'DIRTY_ACK too long');
  t.match(decodeCutoverRequest(Buffer.alloc(1)), /no fields/);
  t.match(decodeDirty(meta(encodeDirty({ seq: 1, ranges: [] }))), /without ranges/);
  t.same(decodeCutover(meta(encodeCutover({ seq: 1, ranges: [] }, true))), { seq: 1, ranges: [] }, 'an empty set');
  // A count above the limit is refused before its ranges are read.
  const tooMany = Buffer.alloc(12 + 16 * (MAX_DIRTY_RANGES + 1));
  tooMany.writeUInt32BE(MAX_DIRTY_RANGES + 1, 8);
  for (let i = 0; i <= MAX_DIRTY_RANGES; i++) {
    tooMany.writeBigUInt64BE(BigInt(i * 8192), 12 + 16 * i);
    tooMany.writeBigUInt64BE(4096n, 20 + 16 * i);
  }
  t.type(decodeDirty(tooMany), 'string', 'DIRTY with more than MAX_DIRTY_RANGES');
  t.type(decodeCutover(tooMany), 'string', 'CUTOVER with more than MAX_DIRTY_RANGES');
  const bad = (ranges: Array<{ offset: number; length: number }>) => decodeDirty(meta(encodeDirty({ seq: 1, ranges })));
  t.type(bad([{ offset: 0, length: 0 }]), 'string', 'empty range');
  t.type(bad([dirty.ranges[1], dirty.ranges[0]]), 'string', 'out of order');
  t.type(
    bad([
      { offset: 0, length: 8192 },
      { offset: 4096, length: 4096 },
    ]),
    'string',
    'overlapping',
  );
  const huge = Buffer.from(full);
  huge.writeBigUInt64BE(2n ** 63n, 12);
  t.type(decodeDirty(huge), 'string', 'offset beyond 2^53');
  const max = Array.from({ length: MAX_DIRTY_RANGES + 1 }, (_, i) => ({ offset: i * 8192, length: 4096 }));
  t.throws(() => encodeDirty({ seq: 1, ranges: max }), RangeError);
});

t.test('a large final set is split into CUTOVER frames, only the last flagged final', async (t) => {
  const ranges = Array.from({ length: 2 * MAX_DIRTY_RANGES + 1 }, (_, i) => ({ offset: i * 8192, length: 4096 }));
  const frames = encodeCutoverFrames(5, ranges);
  const events = decodeAll([encodePreamble(), ...frames]).flatMap((e) => (e.kind === 'frame' ? [e.frame] : []));
  t.same(
    events.map((f) => f.flags & 1),
    [0, 0, 1],
  );
  const joined = events.flatMap((f) => (decodeCutover(f.meta) as { ranges: typeof ranges }).ranges);
  t.same(joined, ranges);
  t.same(encodeCutoverFrames(6, []).length, 1, 'an empty set is one final frame');
});

t.test('a destination bounds BATCH payloads by what its HELLO allows, not the protocol maximum', async (t) => {
  t.equal(maxBatchPayload(4096, 64), 256 << 10);
  t.equal(maxBatchPayload(1 << 20, 1024), MAX_PAYLOAD, 'never above the protocol maximum');
  const batch = (payloadLength: number): Buffer =>
    encodeBatchHead({ requestId: 1, offset: 0, count: 0, lastLength: 0, entries: [] }, true, payloadLength);
  const decoder = new FrameDecoder();
  decoder.setLimits(MAX_META, maxBatchPayload(4096, 64));
  decoder.push(encodePreamble());
  decoder.next();
  decoder.push(Buffer.concat([batch(256 << 10), Buffer.alloc(256 << 10)]));
  t.equal(decoder.next()?.kind, 'frame', 'a batch of 64 raw blocks of 4 KiB is read');
  decoder.push(batch(MAX_PAYLOAD)); // the header alone: its 64 MiB are never waited for
  const e = decoder.next();
  t.equal(e?.kind, 'corrupt', 'a 64 MiB payload is corrupt at once');
  t.match(e?.kind === 'corrupt' ? e.reason : '', /payload 67108864 of at most 262144/);
});
