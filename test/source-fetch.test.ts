/**
 * The source learns which blocks repeat content this session already sent
 * before it compresses anything: repeats go out as references with their
 * checksums, their bytes never reach the pool, and a batch that fails to
 * encode leaves no reference behind to blocks that were never sent.
 */
import t, { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { BatchCodec } from '../src/codec/batch-codec';
import { xxh64 } from '../src/kernels';
import { CodecPool } from '../src/pool';
import { FileDevice } from '../src/store/file-device';
import { BatchBuffers } from '../src/wire/batch-buffers';
import { CodecChooser } from '../src/wire/codec-chooser';
import { DedupeTable } from '../src/wire/dedupe-table';
import { encodePreamble, FrameDecoder } from '../src/wire/frame-codec';
import { decodeBatchMeta, type Hello, type WireEntry } from '../src/wire/messages';
import { FetchFlag, MessageType, Role, WIRE_VERSION, WireEncoding } from '../src/wire/protocol';
import { serveFetch, type FetchLink } from '../src/wire/source-fetch';
import { tempDir } from './helpers/temp-dir';

const BS = 4096;

function block(seed: number): Buffer {
  const b = Buffer.alloc(BS);
  for (let i = 0; i < BS; i++) b[i] = (i * seed + (i >> 5)) & 0xff;
  return b;
}

// A, B, A again, zeros, B again, C.
const A = block(3);
const B = block(7);
const C = block(11);
const IMAGE = Buffer.concat([A, B, A, Buffer.alloc(BS), B, C]);

const hello: Hello = {
  version: WIRE_VERSION,
  role: Role.Background,
  blockSize: BS,
  maxBatchBlocks: 64,
  encodings: [],
  exportName: '',
  session: 's',
  identity: '',
};

class CollectingLink implements FetchLink {
  dead = false;
  readonly decoder = new FrameDecoder();
  constructor() {
    this.decoder.push(encodePreamble()); // as a connection starts
  }
  send(parts: Buffer[], written?: () => void): void {
    // A copy, as the socket's bytes would be: the sender may reuse its buffers once told.
    for (const p of parts) this.decoder.push(Buffer.from(p));
    written?.();
  }
  /** The frame bytes each paceDelay() was asked for, and the wait it answers (ms). */
  readonly paced: number[] = [];
  paceWaitMs = 0;
  async roomToWrite(): Promise<void> {}
  paceDelay(bytes: number): number {
    this.paced.push(bytes);
    return this.paceWaitMs;
  }
  batches(): Array<{ entries: WireEntry[]; payload: Buffer }> {
    const out: Array<{ entries: WireEntry[]; payload: Buffer }> = [];
    for (let e = this.decoder.next(); e; e = this.decoder.next()) {
      if (e.kind === 'preamble') continue;
      if (e.kind !== 'frame' || e.frame.type !== MessageType.Batch) throw new Error(`unexpected ${e.kind}`);
      const meta = decodeBatchMeta(e.frame.meta);
      if (typeof meta === 'string') throw new Error(meta);
      out.push({ entries: meta.entries, payload: e.frame.payload });
    }
    return out;
  }
}

async function setup(t: Test, failFirstEncode = false) {
  const dir = tempDir(t, 'ferry-fetch-');
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, IMAGE);
  const device = FileDevice.open(image, { readOnly: true });
  const pool = new CodecPool({ workers: 1, codec: 'lz4' });
  const seen: Buffer[] = [];
  let fail = failFirstEncode;
  const spy = Object.create(pool) as CodecPool;
  spy.encode = async (blocks, bs, options) => {
    seen.push(Buffer.from(new Uint8Array(blocks).slice()));
    if (fail) {
      fail = false;
      throw new Error('worker gone');
    }
    return pool.encode(blocks, bs, options);
  };
  t.teardown(async () => {
    await pool.close();
    await device.close();
  });
  const counters = { batches: 0, bytesRead: 0, bytesSent: 0, references: 0 };
  const services = {
    device,
    pool: spy,
    chooser: new CodecChooser('lz4', ['lz4'], 1),
    hasher: new BatchCodec({ codec: 'none' }),
    buffers: new BatchBuffers(4 << 20),
    counters: [counters],
    log: pino({ level: 'silent' }),
  };
  return { services, seen, counters };
}

const fetchAll = (flags = 0) => ({ requestId: 1, priority: Role.Background, flags, offset: 0, length: IMAGE.length });

t.test('repeats become references before compression', async (t) => {
  const { services, seen, counters } = await setup(t);
  const link = new CollectingLink();
  await serveFetch(fetchAll(), hello, new DedupeTable(), link, services, 1 << 20);
  const [batch] = link.batches();
  const kinds = batch.entries.map((e) => e.encoding);
  t.same(kinds, [
    WireEncoding.Lz4,
    WireEncoding.Lz4,
    WireEncoding.Reference,
    WireEncoding.Zero,
    WireEncoding.Reference,
    WireEncoding.Lz4,
  ]);
  t.equal(batch.entries[2].reference, 0, 'the third block refers to the first');
  t.equal(batch.entries[4].reference, 1, 'the fifth block refers to the second');
  t.equal(batch.entries[2].checksum, xxh64(A), 'a reference carries its content checksum');
  t.equal(batch.entries[4].checksum, xxh64(B));
  const sent = batch.entries.reduce((s, e) => s + (e.encoding === WireEncoding.Reference ? 0 : e.length), 0);
  t.equal(batch.payload.length, sent, 'no payload bytes for references');
  t.equal(counters.references, 2);
  // What the pool was given: the repeats' bytes were already gone.
  t.equal(seen.length, 1);
  t.ok(seen[0].subarray(2 * BS, 3 * BS).equals(Buffer.alloc(BS)), 'the repeat of A reached the pool zeroed');
  t.ok(seen[0].subarray(4 * BS, 5 * BS).equals(Buffer.alloc(BS)), 'the repeat of B reached the pool zeroed');
  t.ok(seen[0].subarray(0, 2 * BS).equals(IMAGE.subarray(0, 2 * BS)), 'first occurrences reach it intact');
  // The blocks decode back to the image once references are resolved.
  const codec = new BatchCodec({ codec: 'lz4' });
  const cols = {
    encodings: Uint8Array.from(batch.entries, (e) => (e.encoding === WireEncoding.Reference ? 0 : e.encoding)),
    lengths: Uint32Array.from(batch.entries, (e) => (e.encoding === WireEncoding.Reference ? 0 : e.length)),
    checksums: BigUint64Array.from(batch.entries, (e) =>
      e.encoding === WireEncoding.Reference ? xxh64(Buffer.alloc(BS)) : e.checksum,
    ),
  };
  const decoded = codec.decode(batch.payload, cols, BS);
  t.equal(decoded.failed, 0);
  const blocks = Buffer.from(decoded.blocks);
  t.ok(blocks.subarray(0, 2 * BS).equals(IMAGE.subarray(0, 2 * BS)));
  t.ok(blocks.subarray(5 * BS).equals(C));
});

t.test('a fetch without references sends every block and the pool gets the bytes as read', async (t) => {
  const { services, seen } = await setup(t);
  const link = new CollectingLink();
  await serveFetch(fetchAll(FetchFlag.NoReferences), hello, new DedupeTable(), link, services, 1 << 20);
  const [batch] = link.batches();
  t.notOk(batch.entries.some((e) => e.encoding === WireEncoding.Reference));
  t.ok(seen[0].equals(IMAGE));
});

t.test('a batch that fails to encode leaves no reference to its blocks', async (t) => {
  const { services } = await setup(t, true);
  const dedupe = new DedupeTable();
  await t.rejects(serveFetch(fetchAll(), hello, dedupe, new CollectingLink(), services, 1 << 20), /worker gone/);
  t.equal(dedupe.size, 0, 'nothing learned from blocks never sent');
  const link = new CollectingLink();
  await serveFetch(fetchAll(), hello, dedupe, link, services, 1 << 20);
  const [batch] = link.batches();
  t.equal(batch.entries[0].encoding, WireEncoding.Lz4, 'the first block is sent again in full');
  t.equal(batch.entries[2].reference, 0);
});

t.test('a recycled buffer pads a short last block with zeros, not its old bytes', async (t) => {
  const { services } = await setup(t);
  const dir = tempDir(t, 'ferry-fetch-tail-');
  const image = path.join(dir, 'tail.img');
  const content = IMAGE.subarray(0, 2 * BS + 100);
  fs.writeFileSync(image, content);
  const device = FileDevice.open(image, { readOnly: true });
  t.teardown(() => device.close());
  const used = new ArrayBuffer(3 * BS);
  new Uint8Array(used).fill(0xff);
  services.buffers.give(used);
  const link = new CollectingLink();
  const fetch = {
    requestId: 2,
    priority: Role.Background,
    flags: FetchFlag.NoReferences,
    offset: 0,
    length: content.length,
  };
  await serveFetch(fetch, hello, new DedupeTable(), link, { ...services, device }, 1 << 20);
  const [batch] = link.batches();
  const tail = Buffer.alloc(BS);
  content.copy(tail, 0, 2 * BS);
  t.equal(batch.entries[2].checksum, xxh64(tail), 'the tail block is its bytes and zeros');
});

t.test('background batches are paced by the bytes they cost on the wire; urgent ones are not', async (t) => {
  const { services, counters } = await setup(t);
  const small = { ...hello, maxBatchBlocks: 2 }; // three batches for the six blocks
  const link = new CollectingLink();
  link.paceWaitMs = 1; // each batch waits its turn, as behind a slow pace
  // The pace's timer does not hold the process open (a real connection's socket does): this does.
  const open = setInterval(() => undefined, 1000);
  t.teardown(() => clearInterval(open));
  await serveFetch(fetchAll(), small, new DedupeTable(), link, services, 1 << 20);
  t.equal(link.batches().length, 3, 'every batch still goes');
  t.equal(link.paced.length, 3, 'each batch asked the pace');
  t.equal(
    link.paced.reduce((sum, bytes) => sum + bytes, 0),
    counters.bytesSent,
    'by its frame bytes (references and zero blocks cost next to nothing)',
  );
  t.ok(counters.bytesSent < IMAGE.length, 'less than the image bytes');

  const urgent = new CollectingLink();
  await serveFetch({ ...fetchAll(), priority: Role.Urgent }, small, new DedupeTable(), urgent, services, 1 << 20);
  t.equal(urgent.batches().length, 3);
  t.same(urgent.paced, [], 'an urgent fetch never waits for the pace');
});
