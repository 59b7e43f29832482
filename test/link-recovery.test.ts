/**
 * How a destination's links to its source recover from faults, in process
 * over loopback through a proxy the test steers: a TLS record damaged on the
 * way closes its stream at once (not at the stall timeout); reconnect delays
 * start over after a stream that carried data and keep growing after streams
 * that carried none; the stall timeouts of the ferry wire and of a plain NBD
 * source are the ones configured.
 */
import t, { Test } from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { FileDevice } from '../src/store/file-device';
import type { WireAuth } from '../src/wire/auth';
import { WireUpstream, type WireUpstreamOptions } from '../src/upstream/wire-upstream';
import { NbdServer, StaticExportTable } from '../src/nbd/server';
import { NbdClient } from '../src/nbd/client';
import { NbdUpstream } from '../src/upstream/nbd-upstream';
import { FaultProxy } from './helpers/fault-proxy';
import { startWireSource } from './helpers/wire-source';
import { tempDir } from './helpers/temp-dir';

const BS = 4096;
const IMAGE_BLOCKS = 256;
/** Longer than any test here may run: a stream these tests see closed was not closed by the stall watchdog. */
const NEVER_MS = 3_600_000;

const UPSTREAM_OPTIONS: WireUpstreamOptions = {
  blockSize: BS,
  backgroundStreams: 1,
  maxBatchBlocks: 64,
  connectTimeoutMs: 10_000,
  minBackoffMs: 10,
  maxBackoffMs: 1000,
  stallTimeoutMs: NEVER_MS,
  maxAttempts: 3,
};

/** A source serving a random image, a proxy in front of it and a destination's upstream through the proxy. */
async function setUp(
  t: Test,
  auth: WireAuth,
  options: Partial<WireUpstreamOptions> = {},
): Promise<{ upstream: WireUpstream; proxy: FaultProxy; image: Buffer }> {
  const image = crypto.randomBytes(IMAGE_BLOCKS * BS);
  const dir = tempDir(t, 'ferry-link-recovery-');
  const file = path.join(dir, 'disk.img');
  fs.writeFileSync(file, image);
  const source = await startWireSource(file, dir, auth);
  const { pool, log } = source;
  const seed = 7;
  let state = seed;
  const random = (): number => (state = (state * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const proxy = new FaultProxy({ host: '127.0.0.1', port: source.port }, random);
  const port = await proxy.start();
  const upstream = await WireUpstream.open(
    `ferry://127.0.0.1:${port}/disk.img`,
    auth,
    pool,
    {
      ...UPSTREAM_OPTIONS,
      ...options,
    },
    log,
  );
  t.teardown(async () => {
    await upstream.close();
    await proxy.close();
    await source.close();
  });
  return { upstream, proxy, image };
}

function once<T>(emitter: NodeJS.EventEmitter, event: string): Promise<T> {
  return new Promise((resolve) => emitter.once(event, resolve));
}

t.test('a TLS record damaged on the way closes its stream at once', async (t) => {
  const auth: WireAuth = { kind: 'psk', key: crypto.randomBytes(32), source: 'test', openFile: false };
  const { upstream, proxy, image } = await setUp(t, auth);
  const disconnected = once(upstream, 'disconnected');
  proxy.flipRate = 1; // every segment towards the destination gets a bit flipped
  // The stall watchdog would take an hour: only the TLS error can end this fetch.
  const failed = await upstream.fetch(0, 64 * BS, 'background').then(
    () => null,
    (e: Error) => e,
  );
  t.ok(failed, 'the fetch through damaged records fails rather than returning data');
  t.match(failed?.message, /connection to the source (failed|closed)/, 'because the stream was closed');
  t.notMatch(failed?.message, /sent no frame/, 'not by the stall watchdog');
  await disconnected;
  t.notOk(upstream.connected, 'reported disconnected');
  proxy.flipRate = 0;
  const again = await upstream.fetch(0, 64 * BS, 'background');
  t.ok(again.equals(image.subarray(0, 64 * BS)), 'a clean link serves the blocks exactly, over a new stream');
  t.ok(upstream.reconnects >= 1, `reconnected (${upstream.reconnects} times)`);
});

t.test('reconnect delays start over after a stream that carried data', async (t) => {
  const { upstream, proxy, image } = await setUp(t, { kind: 'insecure' });
  const delays: number[] = [];
  upstream.on('reconnect-delay', (ms: number) => delays.push(ms));
  /** Resets every connection (the new ones are let through) and waits until both streams are back. */
  const dropAll = async (): Promise<number[]> => {
    const from = delays.length;
    const back = once(upstream, 'connected');
    void proxy.set('reset');
    await proxy.set('forward');
    await back;
    return delays.slice(from).sort((a, b) => a - b);
  };
  // Streams that only said hello: the source is not let alone, each drop waits longer.
  t.same(await dropAll(), [10, 10], 'first drop of idle streams: the shortest delay');
  t.same(await dropAll(), [20, 20], 'again with nothing carried: doubled');
  t.same(await dropAll(), [40, 40], 'and doubled again');
  // Both streams carry data: the next drop reconnects at once.
  t.ok((await upstream.fetch(0, 4 * BS, 'urgent')).equals(image.subarray(0, 4 * BS)), 'urgent stream carried data');
  t.ok((await upstream.fetch(BS * 8, 4 * BS, 'background')).equals(image.subarray(BS * 8, BS * 12)), 'background too');
  const before = upstream.bytesRead();
  t.ok(before >= 8 * BS, `the streams' reads are counted (${before} bytes)`);
  t.same(await dropAll(), [], 'streams that carried data are replaced without waiting');
  t.ok(upstream.bytesRead() >= before, 'the count keeps what the replaced streams read');
  t.same(await dropAll(), [10, 10], 'and the delays start again from the shortest');
  await upstream.fetch(BS * 16, 4 * BS, 'background');
  t.ok(upstream.bytesRead() >= before + 4 * BS, 'the count goes on over the new streams');
});

t.test('the wire stall timeout is the one configured', async (t) => {
  const { upstream, proxy } = await setUp(t, { kind: 'insecure' }, { stallTimeoutMs: 300 });
  const disconnected = once(upstream, 'disconnected');
  await proxy.set('blackhole');
  const failed = await upstream.fetch(0, 64 * BS, 'urgent').then(
    () => null,
    (e: Error) => e,
  );
  t.match(failed?.message, /source sent no frame for 300 ms with requests outstanding/, 'the watchdog of 300 ms');
  await disconnected;
  t.notOk(upstream.connected, 'reported disconnected');
});

t.test('the NBD stall timeout is the one configured', async (t) => {
  const file = path.join(tempDir(t, 'ferry-link-recovery-'), 'disk.img');
  fs.writeFileSync(file, crypto.randomBytes(IMAGE_BLOCKS * BS));
  const device = FileDevice.open(file, { readOnly: true });
  const server = new NbdServer(
    new StaticExportTable([{ name: 'disk', description: '', device }]),
    pino({ level: 'silent' }),
  );
  await server.listen({ host: '127.0.0.1', port: 0 });
  const proxy = new FaultProxy({ host: '127.0.0.1', port: server.port }, Math.random);
  const port = await proxy.start();
  const client = await NbdClient.connect({ host: '127.0.0.1', port }, { exportName: 'disk', stallTimeoutMs: 300 });
  t.teardown(async () => {
    await client.close().catch(() => undefined);
    await proxy.close();
    await server.close();
    await device.close();
  });
  const closed = once(client, 'close');
  await proxy.set('blackhole');
  await t.rejects(client.read(0, BS), /NBD server sent nothing for 300 ms with requests outstanding/);
  await closed;
  t.ok(client.isClosed, 'the connection is closed');
});

/** A plain NBD server of a random image, export `disk`, in process; closed at the test's end. */
async function nbdSource(t: Test): Promise<{ port: number; image: Buffer }> {
  const file = path.join(tempDir(t, 'ferry-link-recovery-'), 'disk.img');
  const image = crypto.randomBytes(IMAGE_BLOCKS * BS);
  fs.writeFileSync(file, image);
  const device = FileDevice.open(file, { readOnly: true });
  const server = new NbdServer(
    new StaticExportTable([{ name: 'disk', description: '', device }]),
    pino({ level: 'silent' }),
  );
  await server.listen({ host: '127.0.0.1', port: 0 });
  t.teardown(async () => {
    await server.close();
    await device.close();
  });
  return { port: server.port!, image };
}

/** A proxy in front of `port` that forwards the first `passing` connections and resets the rest. */
async function proxyPassing(t: Test, port: number, passing: number): Promise<{ proxy: FaultProxy; port: number }> {
  const proxy = new FaultProxy({ host: '127.0.0.1', port }, Math.random);
  proxy.acceptOnly(passing);
  const proxyPort = await proxy.start();
  t.teardown(() => proxy.close());
  return { proxy, port: proxyPort };
}

t.test("a plain NBD source's reads are counted across reconnects", async (t) => {
  const { port, image } = await nbdSource(t);
  const upstream = await NbdUpstream.open(`nbd://127.0.0.1:${port}/disk`, pino({ level: 'silent' }));
  t.teardown(() => upstream.close());
  t.ok((await upstream.fetch(0, 16 * BS, 'background')).equals(image.subarray(0, 16 * BS)));
  const before = upstream.bytesRead();
  t.ok(before >= 16 * BS, `what the sockets read is counted (${before} bytes)`);
  t.equal(before, upstream.linkStats().bytesOnWire, 'the same bytes the link figures show');
  await upstream.reconnect();
  t.ok(upstream.bytesRead() >= before, 'kept across a reconnect');
  t.ok((await upstream.fetch(32 * BS, 8 * BS, 'urgent')).equals(image.subarray(32 * BS, 40 * BS)));
  t.ok(upstream.bytesRead() >= before + 8 * BS, 'and goes on from there');
});

t.test('a plain NBD source that takes one connection and drops the other leaves none open', async (t) => {
  const source = await nbdSource(t);
  // The upstream's two connections are made together, so either may be the one dropped.
  const front = await proxyPassing(t, source.port, 1);
  await t.rejects(NbdUpstream.open(`nbd://127.0.0.1:${front.port}/disk`, pino({ level: 'silent' })), 'the open fails');
  t.equal(front.proxy.connections, 1, 'one connection got through');
  await front.proxy.whenNoneOpen();
  t.pass('and the upstream closed it');
});

t.test('a ferry source that takes some streams and drops one leaves none open', async (t) => {
  const dir = tempDir(t, 'ferry-link-recovery-');
  const file = path.join(dir, 'disk.img');
  fs.writeFileSync(file, crypto.randomBytes(IMAGE_BLOCKS * BS));
  const source = await startWireSource(file, dir, { kind: 'insecure' });
  t.teardown(() => source.close());
  // The urgent stream and one background stream get through: the background streams are opened
  // together, so either may be the one dropped.
  const front = await proxyPassing(t, source.port, 2);
  const opening = WireUpstream.open(
    `ferry://127.0.0.1:${front.port}/disk.img`,
    { kind: 'insecure' },
    source.pool,
    { ...UPSTREAM_OPTIONS, backgroundStreams: 2 },
    source.log,
  );
  await t.rejects(opening, 'the open fails');
  t.equal(front.proxy.connections, 2, 'two streams got through');
  await front.proxy.whenNoneOpen();
  t.pass('and the upstream closed both');
});
