/**
 * The server decoder fed by reads into memory it lends (readTarget /
 * received), as an accepted NBD connection is: the same messages as from
 * chunks, whatever the read sizes; a large WRITE's remainder read straight
 * into its payload buffer, and after one the next header read alone, so the
 * payload behind it is not copied; a payload cut short dropped and its buffer
 * handed back; option data intact after the scratch buffer is reused.
 */
import t from 'tap';
import { ServerDecoder, ClientMessage, ServerDecoderLimits } from '../src/nbd/server-decoder';
import { encodeGoData, encodeOption, encodeRequestHeader } from '../src/nbd/client-codec';
import { Command, CommandFlag, InfoType, Option } from '../src/nbd/protocol';

const KiB = 1024;
const MiB = 1024 * KiB;

function clientFlags(flags: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(flags, 0);
  return b;
}

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) b[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}

const handshake = Buffer.concat([
  clientFlags(3),
  encodeOption(Option.StructuredReply),
  encodeOption(Option.Go, encodeGoData('disk', [InfoType.BlockSize])),
]);

/** Decodes `stream` read `readSizes` bytes at a time (cycled), never more than a target holds. */
function decodeByLentReads(
  stream: Buffer,
  readSizes: number[],
  limits: ServerDecoderLimits,
  onTarget?: (target: Buffer) => void,
): ClientMessage[] {
  const decoder = new ServerDecoder(limits);
  const out: ClientMessage[] = [];
  let at = 0;
  for (let i = 0; at < stream.length; i++) {
    const target = decoder.readTarget();
    onTarget?.(target);
    const n = Math.min(readSizes[i % readSizes.length], target.length, stream.length - at);
    stream.copy(target, 0, at, at + n);
    at += n;
    decoder.received(n);
    for (let m = decoder.next(); m; m = decoder.next()) {
      out.push(m);
      if (m.kind === 'option' && m.option === Option.Go) decoder.startTransmission();
    }
  }
  return out;
}

function decodeByChunks(stream: Buffer, limits: ServerDecoderLimits): ClientMessage[] {
  const decoder = new ServerDecoder(limits);
  decoder.push(stream);
  const out: ClientMessage[] = [];
  for (let m = decoder.next(); m; m = decoder.next()) {
    out.push(m);
    if (m.kind === 'option' && m.option === Option.Go) decoder.startTransmission();
  }
  return out;
}

/** Limits whose payload buffers are recorded as they are given out. */
function recordingPayloads(): { given: Buffer[]; limits: ServerDecoderLimits } {
  const given: Buffer[] = [];
  const limits = {
    maxOptionLength: 1024,
    maxWritePayload: 4 * MiB,
    allocatePayload: (length: number) => {
      const b = Buffer.alloc(length);
      given.push(b);
      return b;
    },
  };
  return { given, limits };
}

t.test('lent reads of any size decode the same messages as chunks, payloads exact', async (t) => {
  const writes = [
    { offset: 4097, payload: pattern(MiB + 13, 1) }, // larger than the scratch buffer, odd length
    { offset: 3, payload: pattern(20000, 2) },
    { offset: 0, payload: pattern(4096, 3) },
    { offset: 12345, payload: pattern(16 * KiB, 4) }, // exactly the direct-read threshold
    { offset: 7, payload: pattern(1, 5) },
    { offset: 65536, payload: pattern(300 * KiB + 1, 6) },
  ];
  const stream = Buffer.concat([
    handshake,
    ...writes.flatMap((w, i) => [
      encodeRequestHeader(i === 1 ? CommandFlag.Fua : 0, Command.Write, BigInt(i + 1), w.offset, w.payload.length),
      w.payload,
    ]),
    encodeRequestHeader(0, Command.Flush, 99n, 0, 0),
  ]);
  const limits = { maxOptionLength: 1024, maxWritePayload: 4 * MiB };
  const reference = decodeByChunks(stream, limits);
  t.equal(reference.filter((m) => m.kind === 'request').length, writes.length + 1);
  for (const sizes of [[1], [7, 28, 3], [4096], [65536], [28, 100000, 1], [MiB * 2], [999, 64 * KiB + 5]]) {
    const got = decodeByLentReads(stream, sizes, limits);
    t.same(got, reference, `reads of ${sizes.join(', ')} bytes`);
  }
  for (const [i, w] of writes.entries()) {
    const m = reference[3 + i];
    t.ok(m.kind === 'request' && m.offset === w.offset && m.payload?.equals(w.payload), `write ${i} exact`);
  }
});

t.test("a large payload's remainder is read straight into its own buffer", async (t) => {
  const payload = pattern(MiB, 9);
  const stream = Buffer.concat([handshake, encodeRequestHeader(0, Command.Write, 1n, 0, payload.length), payload]);
  const { given, limits } = recordingPayloads();
  const targets: Buffer[] = [];
  const got = decodeByLentReads(stream, [handshake.length + 28 + 1000, 64 * KiB], limits, (b) => targets.push(b));
  t.equal(given.length, 1, 'one payload buffer');
  const write = got.find((m) => m.kind === 'request');
  t.equal(write?.kind === 'request' && write.payload, given[0], 'the message carries that buffer');
  t.ok(write?.kind === 'request' && write.payload?.equals(payload), 'with the bytes sent');
  const direct = targets.filter((b) => b.buffer === given[0].buffer);
  t.ok(direct.length >= 16, `the remainder was read into the payload buffer (${direct.length} reads)`);
  t.equal(direct[0].byteOffset - given[0].byteOffset, 1000, 'starting after the bytes that came with the header');
});

t.test('after a large write the next read takes one header, and every later payload byte lands in place', async (t) => {
  const payloads = [pattern(MiB, 1), pattern(MiB, 2), pattern(64 * KiB, 3)];
  const stream = Buffer.concat([
    handshake,
    ...payloads.flatMap((p, i) => [encodeRequestHeader(0, Command.Write, BigInt(i + 1), i * MiB, p.length), p]),
    encodeRequestHeader(0, Command.Read, 9n, 0, 4096),
  ]);
  const { given, limits } = recordingPayloads();
  const targets: Buffer[] = [];
  // Reads as large as the target allows: a socket with everything queued.
  const got = decodeByLentReads(stream, [8 * MiB], limits, (b) => targets.push(b));
  t.same(
    got.filter((m) => m.kind === 'request').map((m) => m.kind === 'request' && m.cookie.readBigUInt64BE(0)),
    [1n, 2n, 3n, 9n],
  );
  for (const [i, p] of payloads.entries()) {
    const m = got.filter((m) => m.kind === 'request')[i];
    t.ok(m.kind === 'request' && m.payload?.equals(p), `write ${i + 1} exact`);
  }
  const inPayload = (b: Buffer, i: number): boolean =>
    b.buffer === given[i].buffer && b.byteOffset === given[i].byteOffset;
  for (const i of [1, 2]) {
    const at = targets.findIndex((b) => inPayload(b, i));
    t.ok(at > 0, `write ${i + 1}'s payload is read from its first byte into its own buffer`);
    t.equal(targets[at - 1]?.length, 28, 'the read before it took its header alone');
  }
});

t.test('readWanted: the rest of a payload read in place, else 1', async (t) => {
  const decoder = new ServerDecoder({ maxOptionLength: 1024, maxWritePayload: 4 * MiB });
  const feed = (bytes: Buffer): void => {
    for (let at = 0; at < bytes.length;) {
      const target = decoder.readTarget();
      const n = Math.min(target.length, bytes.length - at);
      bytes.copy(target, 0, at, at + n);
      at += n;
      decoder.received(n);
      for (let m = decoder.next(); m; m = decoder.next())
        if (m.kind === 'option' && m.option === Option.Go) decoder.startTransmission();
    }
  };
  feed(handshake);
  t.equal(decoder.readWanted(), 1, 'between requests');
  feed(Buffer.concat([encodeRequestHeader(0, Command.Write, 1n, 0, MiB), pattern(1000, 1)]));
  t.equal(decoder.readWanted(), MiB - 1000, 'inside a large payload: its rest');
  feed(pattern(MiB - 1000 - 100, 2));
  t.equal(decoder.readWanted(), 1, 'less than the direct-read threshold left: 1');
  feed(pattern(100, 3));
  t.equal(decoder.readWanted(), 1, 'the payload done');
  feed(encodeRequestHeader(0, Command.Write, 2n, 0, 4 * KiB));
  t.equal(decoder.readWanted(), 1, 'a small payload is read through the scratch buffer');
  decoder.close();
  t.equal(decoder.readWanted(), 1, 'after close()');
});

t.test('a payload cut short is never handed out; close() hands its buffer back', async (t) => {
  const released: Buffer[] = [];
  const allocated: Buffer[] = [];
  const decoder = new ServerDecoder({
    maxOptionLength: 1024,
    maxWritePayload: 4 * MiB,
    allocatePayload: (length) => {
      const b = Buffer.alloc(length);
      allocated.push(b);
      return b;
    },
    releasePayload: (b) => released.push(b),
  });
  const stream = Buffer.concat([handshake, encodeRequestHeader(0, Command.Write, 1n, 0, MiB), pattern(700 * KiB, 1)]);
  const out: ClientMessage[] = [];
  for (let at = 0; at < stream.length;) {
    const target = decoder.readTarget();
    const n = Math.min(target.length, 50000, stream.length - at);
    stream.copy(target, 0, at, at + n);
    at += n;
    decoder.received(n);
    for (let m = decoder.next(); m; m = decoder.next()) {
      out.push(m);
      if (m.kind === 'option' && m.option === Option.Go) decoder.startTransmission();
    }
  }
  t.equal(out.filter((m) => m.kind === 'request').length, 0, 'no request for the partial payload');
  decoder.close();
  t.same(released, allocated, 'its buffer is handed back');
  const target = decoder.readTarget();
  pattern(target.length, 2).copy(target);
  decoder.received(target.length);
  t.equal(decoder.next(), null, 'bytes after close() are dropped');
});

t.test('option data survives the reuse of the scratch buffer', async (t) => {
  const name = 'x'.repeat(500);
  const stream = Buffer.concat([clientFlags(3), encodeOption(Option.Go, encodeGoData(name, []))]);
  const decoder = new ServerDecoder({ maxOptionLength: 1024, maxWritePayload: 4096 });
  const out: ClientMessage[] = [];
  for (let at = 0; at < stream.length;) {
    const target = decoder.readTarget();
    const n = Math.min(target.length, 100, stream.length - at);
    stream.copy(target, 0, at, at + n);
    at += n;
    decoder.received(n);
    for (let m = decoder.next(); m; m = decoder.next()) out.push(m);
  }
  const go = out.find((m) => m.kind === 'option');
  const before = go?.kind === 'option' ? Buffer.from(go.data!) : null;
  // Everything is consumed, so the next read reuses the scratch buffer from its start.
  const target = decoder.readTarget();
  target.fill(0xee);
  decoder.received(target.length);
  t.ok(go?.kind === 'option' && before && go.data!.equals(before), 'the option data was not overwritten');
});
