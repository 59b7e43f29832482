import t from 'tap';
import { ServerDecoder, ClientMessage } from '../src/nbd/server-decoder';
import { ClientDecoder, ServerMessage, encodeGoData, encodeOption, encodeRequestHeader } from '../src/nbd/client-codec';
import * as enc from '../src/nbd/server-encoder';
import { Command, CommandFlag, InfoType, Option, OptionReply } from '../src/nbd/protocol';
import { ByteQueue } from '../src/util/byte-queue';

const limits = { maxOptionLength: 1024, maxWritePayload: 4096 };

function clientFlags(flags: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(flags, 0);
  return b;
}

/** Decodes `bytes` fed in the given pieces, switching to transmission after GO. */
function decodeServerSide(pieces: Buffer[]): ClientMessage[] {
  const decoder = new ServerDecoder(limits);
  const out: ClientMessage[] = [];
  for (const piece of pieces) {
    decoder.push(piece);
    for (let m = decoder.next(); m; m = decoder.next()) {
      out.push(m);
      if (m.kind === 'option' && m.option === Option.Go) decoder.startTransmission();
    }
  }
  return out;
}

function splits(bytes: Buffer): Buffer[][] {
  const result: Buffer[][] = [[bytes]];
  for (let at = 1; at < bytes.length; at++) result.push([bytes.subarray(0, at), bytes.subarray(at)]);
  // and one byte at a time
  result.push([...bytes].map((b) => Buffer.from([b])));
  return result;
}

const writePayload = Buffer.from('hello, block device!');
const clientStream = Buffer.concat([
  clientFlags(3),
  encodeOption(Option.StructuredReply),
  encodeOption(Option.Go, encodeGoData('disk', [InfoType.BlockSize])),
  encodeRequestHeader(CommandFlag.Fua, Command.Write, 7n, 4096, writePayload.length),
  writePayload,
  encodeRequestHeader(0, Command.Read, 0x0102030405060708n, 2 ** 40 + 3, 512),
  encodeRequestHeader(0, Command.Disc, 9n, 0, 0),
]);

t.test('server decoder yields the same messages for every split of the stream', async (t) => {
  const reference = decodeServerSide([clientStream]);
  t.same(
    reference.map((m) => m.kind),
    ['clientFlags', 'option', 'option', 'request', 'request', 'request'],
  );
  const write = reference[3];
  t.ok(write.kind === 'request' && write.type === Command.Write && write.flags === CommandFlag.Fua);
  if (write.kind === 'request') {
    t.equal(write.offset, 4096);
    t.same(write.payload, writePayload);
    t.equal(write.cookie.readBigUInt64BE(0), 7n);
  }
  const read = reference[4];
  if (read.kind === 'request') {
    t.equal(read.offset, 2 ** 40 + 3, 'a 64-bit offset survives');
    t.equal(read.cookie.readBigUInt64BE(0), 0x0102030405060708n);
    t.equal(read.payload, null);
  }
  for (const pieces of splits(clientStream)) {
    const got = decodeServerSide(pieces);
    t.same(got, reference, `split into ${pieces.length} pieces at ${pieces[0].length}`);
  }
});

t.test('an oversized write is discarded as it arrives, and the next request still decodes', async (t) => {
  const big = Buffer.alloc(10000, 1);
  const stream = Buffer.concat([
    clientFlags(1),
    encodeOption(Option.Go, encodeGoData('', [])),
    encodeRequestHeader(0, Command.Write, 1n, 0, big.length),
    big,
    encodeRequestHeader(0, Command.Flush, 2n, 0, 0),
  ]);
  for (const pieces of [[stream], [stream.subarray(0, 100), stream.subarray(100, 5000), stream.subarray(5000)]]) {
    const got = decodeServerSide(pieces);
    const requests = got.filter((m) => m.kind === 'request');
    t.equal(requests.length, 2);
    t.ok(requests[0].kind === 'request' && requests[0].payload === null && requests[0].length === 10000);
    t.ok(requests[1].kind === 'request' && requests[1].type === Command.Flush);
  }
});

t.test('an option longer than the limit is skipped and reported without data', async (t) => {
  const stream = Buffer.concat([clientFlags(1), encodeOption(99, Buffer.alloc(5000)), encodeOption(Option.List)]);
  const got = decodeServerSide([stream]);
  t.same(
    got.map((m) => (m.kind === 'option' ? [m.option, m.data === null] : m.kind)),
    ['clientFlags', [99, true], [Option.List, false]],
  );
});

t.test('bad magic is a protocol error and decoding stops', async (t) => {
  const badOption = Buffer.concat([clientFlags(1), Buffer.from('GARBAGEGARBAGE!!')]);
  const got = decodeServerSide([badOption]);
  t.equal(got[1].kind, 'protocolError');
  const badRequest = Buffer.concat([
    clientFlags(1),
    encodeOption(Option.Go, encodeGoData('', [])),
    Buffer.alloc(28, 0xff),
    encodeRequestHeader(0, Command.Flush, 2n, 0, 0),
  ]);
  const got2 = decodeServerSide([badRequest]);
  t.equal(got2[got2.length - 1].kind, 'protocolError');
  t.equal(got2.filter((m) => m.kind === 'request').length, 0, 'nothing after the bad magic is decoded');
});

function decodeClientSide(pieces: Buffer[], readLengths: Map<bigint, number>): ServerMessage[] {
  const decoder = new ClientDecoder((cookie) => readLengths.get(cookie) ?? 0);
  const out: ServerMessage[] = [];
  for (const piece of pieces) {
    decoder.push(piece);
    for (let m = decoder.next(); m; m = decoder.next()) {
      out.push(m);
      if (m.kind === 'optionReply' && m.option === Option.Go && m.type === OptionReply.Ack) decoder.startTransmission();
    }
  }
  return out;
}

t.test('server encoder output decodes back for every split', async (t) => {
  const cookie = (n: bigint): Buffer => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(n, 0);
    return b;
  };
  const data = Buffer.from('0123456789abcdef');
  const stream = Buffer.concat([
    enc.greeting(),
    enc.optionReply(Option.StructuredReply, OptionReply.Ack),
    enc.infoExport(Option.Go, 2 ** 33, 0x1234),
    enc.infoBlockSize(Option.Go, 1, 4096, 1 << 25),
    enc.optionReply(Option.Go, OptionReply.Ack),
    enc.simpleReply(cookie(5n), 0),
    data,
    enc.simpleReply(cookie(6n), 22),
    enc.offsetDataHeader(cookie(7n), 100, data.length, true),
    data,
    enc.blockStatusChunk(cookie(8n), 1, [{ length: 4096, flags: 3 }], true),
    enc.errorChunk(cookie(9n), 5, 'boom'),
  ]);
  const lengths = new Map([[5n, data.length]]);
  const reference = decodeClientSide([stream], lengths);
  t.same(
    reference.map((m) => m.kind),
    [
      'greeting',
      'optionReply',
      'optionReply',
      'optionReply',
      'optionReply',
      'simpleReply',
      'simpleReply',
      'chunk',
      'chunk',
      'chunk',
    ],
  );
  const info = reference[2];
  t.ok(info.kind === 'optionReply' && info.data.readUInt16BE(0) === InfoType.Export);
  if (info.kind === 'optionReply') t.equal(info.data.readUInt32BE(2) * 2 ** 32 + info.data.readUInt32BE(6), 2 ** 33);
  const simple = reference[5];
  t.ok(simple.kind === 'simpleReply' && simple.data?.equals(data));
  const failed = reference[6];
  t.ok(failed.kind === 'simpleReply' && failed.error === 22 && failed.data === null);
  for (const pieces of splits(stream)) t.same(decodeClientSide(pieces, lengths), reference);
});

t.test('ByteQueue takes, peeks and skips across chunk boundaries', async (t) => {
  const q = new ByteQueue();
  q.push(Buffer.from('abc'));
  q.push(Buffer.from(''));
  q.push(Buffer.from('defg'));
  t.equal(q.length, 7);
  t.equal(q.peek(5).toString(), 'abcde');
  t.equal(q.take(2).toString(), 'ab');
  t.equal(q.take(3).toString(), 'cde');
  t.equal(q.skip(10), 2);
  t.equal(q.length, 0);
  t.throws(() => q.take(1));
});
