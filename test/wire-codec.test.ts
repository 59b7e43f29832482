import t from 'tap';
import { encodePreamble, FrameDecoder, WireEvent } from '../src/wire/frame-codec';
import {
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
  decodeZeroRanges,
  encodeZeroQuery,
  encodeZeroRanges,
} from '../src/wire/messages';
import { MessageType, WireEncoding } from '../src/wire/protocol';

const hello = {
  version: 1,
  role: 1,
  blockSize: 4096,
  maxBatchBlocks: 64,
  encodings: [0, 1, 2, 3, 4],
  exportName: 'disk',
  session: 'abc',
  identity: 'ferry-image:1234',
};
const welcome = { version: 1, imageSize: 2 ** 40 + 512, identity: 'ferry-image:x', codec: 'lz4' };
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
