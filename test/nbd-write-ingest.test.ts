/**
 * WRITE payloads as an accepted connection reads them (into the payload's
 * own buffer): writes of odd lengths at misaligned offsets, sent in odd
 * pieces, land exactly and are acknowledged; a payload cut short by a
 * disconnect writes nothing; the moved socket still counts as the server's
 * connection until it closes; and the rest of a large payload, which the
 * socket waits for (SO_RCVLOWAT), arrives in a few reads however it was sent.
 */
import t, { Test } from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import pino from 'pino';
import { NbdServer, StaticExportTable, DEFAULT_LIMITS } from '../src/nbd/server';
import { FileDevice } from '../src/store/file-device';
import { readIntoLentBuffers } from '../src/nbd/socket-read-into';
import { fileOps } from '../src/store/fileops';
import { tempDir, patternBytes } from './helpers/temp-dir';
import {
  NBD_CMD,
  connectSocket,
  handshake,
  readSimpleReply,
  requestHeader,
  waitForClose,
} from './helpers/raw-nbd-client';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 8 * MiB;

async function serve(t: Test): Promise<{ file: string; port: number; server: NbdServer }> {
  const file = path.join(tempDir(t), 'disk.img');
  const device = FileDevice.open(file, { createSize: SIZE });
  const server = new NbdServer(
    new StaticExportTable([{ name: 'disk', description: '', device }]),
    pino({ level: 'silent' }),
    DEFAULT_LIMITS,
  );
  await server.listen({ host: '127.0.0.1', port: 0 });
  t.teardown(async () => {
    await server.close();
    await device.close();
  });
  return { file, port: server.port, server };
}

/** Sends `bytes` in pieces cut at the given lengths (cycled). */
function sendInPieces(socket: net.Socket, bytes: Buffer, cuts: number[]): void {
  for (let at = 0, i = 0; at < bytes.length; i++) {
    const n = Math.min(cuts[i % cuts.length], bytes.length - at);
    socket.write(bytes.subarray(at, at + n));
    at += n;
  }
}

t.test('pipelined writes of odd sizes at misaligned offsets land exactly', async (t) => {
  const { file, port } = await serve(t);
  const socket = await connectSocket('127.0.0.1', port);
  t.teardown(() => socket.destroy());
  t.equal(await handshake(socket, 'disk'), SIZE);
  const writes = [
    { offset: 4097, data: patternBytes(MiB + 13, 1) },
    { offset: 3, data: patternBytes(20000, 2) },
    { offset: 2 * MiB + 1, data: patternBytes(3 * MiB + 511, 3) },
    { offset: 6 * MiB - 5, data: patternBytes(1, 4) },
    { offset: 7 * MiB, data: patternBytes(64 * KiB, 5) },
    { offset: 100, data: patternBytes(16 * KiB - 1, 6) }, // overlaps the first two: applied in order
  ];
  const expected = Buffer.alloc(SIZE);
  const stream = Buffer.concat(
    writes.flatMap((w, i) => [requestHeader(NBD_CMD.write, BigInt(i + 1), w.offset, w.data.length), w.data]),
  );
  // One at a time, so overlapping writes land in order; sent in pieces that split headers and payloads.
  for (const [i, w] of writes.entries()) {
    const start = writes.slice(0, i).reduce((n, x) => n + 28 + x.data.length, 0);
    sendInPieces(socket, stream.subarray(start, start + 28 + w.data.length), [5, 70001, 28, 65536 + 3]);
    const reply = await readSimpleReply(socket);
    t.same([reply.error, reply.cookie], [0, BigInt(i + 1)], `write ${i + 1} acknowledged`);
    w.data.copy(expected, w.offset);
  }
  t.ok(fs.readFileSync(file).equals(expected), 'the image holds exactly the written bytes');

  // The same places pipelined at once. In-flight writes may complete in any
  // order (NBD lets the server reorder them), so none of these may overlap:
  // the second ends where the first begins.
  const lengths = [MiB + 13, 4097 - 3, 3 * MiB + 511, 1, 64 * KiB];
  const batch = writes.slice(0, 5).map((w, i) => ({ offset: w.offset, data: patternBytes(lengths[i], 10 + i) }));
  const spans = [...batch].sort((a, b) => a.offset - b.offset);
  t.ok(
    spans.every((w, i) => i === 0 || spans[i - 1].offset + spans[i - 1].data.length <= w.offset),
    'the pipelined writes do not overlap',
  );
  sendInPieces(
    socket,
    Buffer.concat(
      batch.flatMap((w, i) => [requestHeader(NBD_CMD.write, BigInt(100 + i), w.offset, w.data.length), w.data]),
    ),
    [1000, 300000, 7],
  );
  const cookies: bigint[] = [];
  for (let i = 0; i < batch.length; i++) {
    const reply = await readSimpleReply(socket);
    t.equal(reply.error, 0);
    cookies.push(reply.cookie);
  }
  t.same(
    cookies.sort((a, b) => Number(a - b)),
    batch.map((_, i) => BigInt(100 + i)),
  );
  for (const w of batch) w.data.copy(expected, w.offset);
  t.ok(fs.readFileSync(file).equals(expected), 'pipelined writes land exactly too');
});

t.test('a payload cut short by a disconnect writes nothing; the write before it stays', async (t) => {
  const { file, port, server } = await serve(t);
  const socket = await connectSocket('127.0.0.1', port);
  t.teardown(() => socket.destroy());
  await handshake(socket, 'disk');
  const first = patternBytes(64 * KiB, 7);
  socket.write(Buffer.concat([requestHeader(NBD_CMD.write, 1n, 8192, first.length), first]));
  t.equal((await readSimpleReply(socket)).error, 0, 'the whole write is acknowledged');
  // 1 MiB announced, 700 KiB sent, then the client goes away.
  socket.write(Buffer.concat([requestHeader(NBD_CMD.write, 2n, MiB, MiB), patternBytes(700 * KiB, 8)]));
  socket.end();
  await waitForClose(socket);
  await new Promise<void>((resolve) => {
    const check = (): void => (server.connectionCount === 0 ? resolve() : void setImmediate(check));
    check();
  });
  const expected = Buffer.alloc(SIZE);
  first.copy(expected, 8192);
  t.ok(fs.readFileSync(file).equals(expected), 'nothing of the cut-short payload reached the image');
});

t.test("a moved socket reads into the lender's buffers and still counts as the server's connection", async (t) => {
  const target = Buffer.alloc(MiB);
  const spare = Buffer.alloc(4096); // a read never gets an empty buffer
  let got = 0;
  let moved: net.Socket | null = null;
  let arrived!: () => void;
  const allArrived = new Promise<void>((resolve) => (arrived = resolve));
  const server = net.createServer({ pauseOnConnect: true }, (accepted) => {
    moved = readIntoLentBuffers(accepted, {
      target: () => (got < target.length ? target.subarray(got) : spare),
      received: (n) => {
        got += n;
        if (got === target.length) arrived();
      },
    });
  });
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const connections = (): Promise<number> => new Promise((r) => server.getConnections((_e, n) => r(n)));
  const client = await connectSocket('127.0.0.1', (server.address() as net.AddressInfo).port);
  t.teardown(() => client.destroy());
  client.write(patternBytes(MiB, 3));
  await allArrived;
  t.not(moved, null, 'the handle moved (this Node supports it)');
  t.ok(target.equals(patternBytes(MiB, 3)), 'every byte landed in the lent buffer, in order');
  t.equal(await connections(), 1, 'the server counts the connection while the moved socket is open');
  const closed = new Promise((r) => moved!.once('close', r));
  client.end();
  await closed;
  await new Promise((r) => setImmediate(r));
  t.equal(await connections(), 0, 'and no longer once it closed');
});

t.test(
  'the socket waits for the rest of a payload and reads it in one or a few reads',
  { skip: fileOps ? false : 'the fileops addon is not built' },
  async (t) => {
    const target = Buffer.alloc(MiB);
    const spare = Buffer.alloc(4096);
    let got = 0;
    const reads: number[] = [];
    const waiters: Array<{ bytes: number; wake: () => void }> = [];
    const arrived = (bytes: number): Promise<void> =>
      got >= bytes ? Promise.resolve() : new Promise((wake) => waiters.push({ bytes, wake }));
    const server = net.createServer({ pauseOnConnect: true }, (accepted) => {
      const moved = readIntoLentBuffers(accepted, {
        target: () => (got < target.length ? target.subarray(got) : spare),
        received: (n) => {
          got += n;
          reads.push(n);
          for (const w of waiters.filter((w) => got >= w.bytes)) {
            waiters.splice(waiters.indexOf(w), 1);
            w.wake();
          }
        },
        wanted: () => Math.max(1, target.length - got),
      });
      t.teardown(() => moved?.destroy());
    });
    t.teardown(() => new Promise<void>((r) => server.close(() => r())));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const client = await connectSocket('127.0.0.1', (server.address() as net.AddressInfo).port);
    t.teardown(() => client.destroy());
    const bytes = patternBytes(MiB, 5);
    // The first 100 KiB, then the rest once they are in: by then the socket waits for the whole rest.
    client.write(bytes.subarray(0, 100 * KiB));
    await arrived(100 * KiB);
    const readsBefore = reads.length;
    // In small pieces, each its own segment: without the mark the server could wake for each.
    for (let at = 100 * KiB; at < MiB; at += 16 * KiB) {
      client.write(bytes.subarray(at, Math.min(MiB, at + 16 * KiB)));
      await new Promise((r) => setImmediate(r));
    }
    await arrived(MiB);
    // One read, or a few where the receive window closed before the rest was in (the kernel then wakes early).
    const restReads = reads.length - readsBefore;
    t.ok(restReads <= 6, `the rest of 58 pieces came in ${restReads} reads`);
    t.ok(target.equals(bytes), 'every byte in place, in order');
  },
);
