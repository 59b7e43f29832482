import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import t from 'tap';
import { SlowLink } from '../src/link/slow-link';
import { until } from './helpers/until';

const baselineResources = process.getActiveResourcesInfo();

/** Echoes everything back and ends when the client ends. */
async function echoServer(listen: { port: number } | { path: string }): Promise<net.Server> {
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => {});
    s.pipe(s);
  });
  await new Promise<void>((resolve) =>
    'path' in listen ? server.listen(listen.path, resolve) : server.listen(0, '127.0.0.1', resolve),
  );
  return server;
}

/** Hashes whatever arrives on each connection; reports bytes, hash and when the last byte came (performance.now()). */
interface Received {
  bytes: number;
  hash: string;
  lastAt: number;
}
async function sinkServer(): Promise<{ server: net.Server; port: number; received: Promise<Received>[] }> {
  const received: Promise<Received>[] = [];
  const server = net.createServer((s) => {
    received.push(
      new Promise((resolve) => {
        const hash = createHash('sha256');
        let bytes = 0;
        let lastAt = 0;
        s.on('data', (chunk: Buffer) => {
          const now = performance.now();
          lastAt = now;
          bytes += chunk.length;
          hash.update(chunk);
        });
        s.on('end', () => {
          s.end();
          resolve({ bytes, hash: hash.digest('hex'), lastAt });
        });
      }),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as net.AddressInfo).port, received };
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
}

function closeServer(server: net.Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

/** Round trip of one byte through an echo: write, wait for the byte back. */
async function pingMs(socket: net.Socket): Promise<number> {
  const started = performance.now();
  await new Promise<void>((resolve) => {
    socket.once('data', () => resolve());
    socket.write('x');
  });
  return performance.now() - started;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

t.test('options are checked', async (t) => {
  const target = { host: '127.0.0.1', port: 1 };
  const listen = { host: '127.0.0.1', port: 0 };
  t.throws(
    () => new SlowLink({ listen, target, oneWayLatencyMs: -1, bandwidthBitsPerSecond: 1e6 }),
    /oneWayLatencyMs must be a number >= 0 \(got -1\)/,
  );
  t.throws(
    () => new SlowLink({ listen, target, oneWayLatencyMs: 1, bandwidthBitsPerSecond: 0 }),
    /bandwidthBitsPerSecond must be a number > 0 \(got 0\)/,
  );
});

t.test('a tiny request/response takes about two one-way latencies', async (t) => {
  const echo = await echoServer({ port: 0 });
  const link = new SlowLink({
    listen: { host: '127.0.0.1', port: 0 },
    target: { host: '127.0.0.1', port: (echo.address() as net.AddressInfo).port },
    oneWayLatencyMs: 25,
    bandwidthBitsPerSecond: 100e6,
  });
  const { port } = await link.start();
  const socket = await connect(port);
  await pingMs(socket); // the first one also pays for the upstream connect
  const samples: number[] = [];
  for (let i = 0; i < 9; i++) samples.push(await pingMs(socket));
  const rtt = median(samples);
  // Never sooner than two one-way latencies; how much later depends on the machine's load
  // (the benchmarks measure the fidelity), so the upper bound only catches a gross error.
  const shown = `(samples ${samples.map((x) => x.toFixed(1))})`;
  t.ok(rtt >= 50, `median RTT ${rtt.toFixed(1)} ms is at least 2 x 25 ms ${shown}`);
  t.ok(rtt < 1000, `median RTT ${rtt.toFixed(1)} ms is bounded ${shown}`);
  t.equal(link.stats().bytesToTarget, 10);
  t.equal(link.stats().bytesFromTarget, 10);
  socket.destroy();
  await link.close();
  await closeServer(echo);
});

/** A read chunk of the link: it may go out before the cap has accounted for it. */
const CHUNK = 65536;

/** The least time `bytes` can take through a link of `bitsPerSecond`, less one read chunk. */
function capFloorMs(bytes: number, bitsPerSecond: number): number {
  return (((bytes - CHUNK) * 8) / bitsPerSecond) * 1000;
}

t.test('bulk transfer is held to the cap, intact, with bounded queues', async (t) => {
  const sink = await sinkServer();
  const bitsPerSecond = 16e6; // 2 MB/s
  const link = new SlowLink({
    listen: { host: '127.0.0.1', port: 0 },
    target: { host: '127.0.0.1', port: sink.port },
    oneWayLatencyMs: 20,
    bandwidthBitsPerSecond: bitsPerSecond,
  });
  const { port } = await link.start();
  const data = randomBytes(3 * 1024 * 1024);
  const socket = await connect(port);
  let maxQueued = 0;
  const sampler = setInterval(() => (maxQueued = Math.max(maxQueued, link.stats().queuedToTarget)), 5);
  const started = performance.now();
  socket.end(data);
  await until(() => sink.received.length > 0, 'the sink has a connection');
  const got = await sink.received[0];
  clearInterval(sampler);
  t.equal(got.bytes, data.length);
  t.equal(got.hash, createHash('sha256').update(data).digest('hex'), 'bytes intact');
  // Never faster than the cap: the transfer cannot end before its bytes (less one read chunk) fit
  // through it. How much slower depends on the machine's load; the benchmarks measure that.
  t.ok(
    got.lastAt - started >= capFloorMs(data.length, bitsPerSecond),
    `${data.length} bytes took ${(got.lastAt - started).toFixed(0)} ms, not less than the 16 Mbit/s cap allows`,
  );
  // One round trip at 2 MB/s is 80 kB; the queue may hold that plus 256 KiB plus one read chunk.
  t.ok(maxQueued <= 80_000 + 256 * 1024 + 65536, `queued at most ${maxQueued} bytes`);
  t.ok(maxQueued > 100_000, 'the queue did fill (the bound was exercised)');
  socket.destroy();
  await link.close();
  await closeServer(sink.server);
});

t.test('connections share the link: two transfers together take the cap', async (t) => {
  const sink = await sinkServer();
  const bitsPerSecond = 16e6;
  const link = new SlowLink({
    listen: { host: '127.0.0.1', port: 0 },
    target: { host: '127.0.0.1', port: sink.port },
    oneWayLatencyMs: 5,
    bandwidthBitsPerSecond: bitsPerSecond,
  });
  const { port } = await link.start();
  const a = randomBytes(1024 * 1024);
  const b = randomBytes(1024 * 1024);
  const [sa, sb] = await Promise.all([connect(port), connect(port)]);
  const started = performance.now();
  sa.end(a);
  sb.end(b);
  await until(() => sink.received.length === 2, 'the sink has both connections');
  const got = await Promise.all(sink.received);
  const hashes = got.map((g) => g.hash).sort();
  t.same(hashes, [a, b].map((x) => createHash('sha256').update(x).digest('hex')).sort(), 'both intact');
  // Together, never faster than the cap (each connection may have one chunk through at once).
  const last = Math.max(...got.map((g) => g.lastAt));
  t.ok(
    last - started >= capFloorMs(a.length + b.length - CHUNK, bitsPerSecond),
    `both transfers took ${(last - started).toFixed(0)} ms, not less than the 16 Mbit/s cap allows`,
  );
  sa.destroy();
  sb.destroy();
  await link.close();
  await closeServer(sink.server);
});

t.test('half-close travels in order and a Unix socket target works', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-link-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const socketPath = path.join(dir, 'echo.sock');
  const echo = await echoServer({ path: socketPath });
  const link = new SlowLink({
    listen: { host: '127.0.0.1', port: 0 },
    target: { socketPath },
    oneWayLatencyMs: 10,
    bandwidthBitsPerSecond: 50e6,
  });
  const { port } = await link.start();
  const socket = await connect(port);
  const data = randomBytes(300_000);
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  const ended = new Promise<void>((resolve) => socket.on('end', () => resolve()));
  socket.end(data);
  await ended;
  t.ok(Buffer.concat(chunks).equals(data), 'echoed bytes intact, then the FIN');
  await link.close();
  await closeServer(echo);
});

t.test('a broken link drops connections and refuses new ones until mended', async (t) => {
  const echo = await echoServer({ port: 0 });
  const link = new SlowLink({
    listen: { host: '127.0.0.1', port: 0 },
    target: { host: '127.0.0.1', port: (echo.address() as net.AddressInfo).port },
    oneWayLatencyMs: 5,
    bandwidthBitsPerSecond: 10e6,
  });
  const { port } = await link.start();
  const socket = await connect(port);
  await pingMs(socket);
  const dropped = new Promise<string>((resolve) => {
    socket.on('error', (err: NodeJS.ErrnoException) => resolve(String(err.code)));
    socket.on('close', () => resolve('closed'));
  });
  link.setBroken(true);
  t.equal(await dropped, 'ECONNRESET', 'the open connection is reset');
  t.equal(link.stats().connections, 0);

  const refused = await new Promise<string>((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('data', () => resolve('data'));
    s.on('error', (err: NodeJS.ErrnoException) => resolve(String(err.code)));
    s.on('close', () => resolve('closed'));
    s.write('x');
  });
  t.equal(refused, 'ECONNRESET', 'a new connection is reset');

  link.setBroken(false);
  const again = await connect(port);
  t.ok((await pingMs(again)) >= 10, 'mended: traffic flows again');
  again.destroy();
  await link.close();
  await closeServer(echo);
});

t.test('close() leaves no handles behind', async (t) => {
  const echo = await echoServer({ port: 0 });
  const link = new SlowLink({
    listen: { host: '127.0.0.1', port: 0 },
    target: { host: '127.0.0.1', port: (echo.address() as net.AddressInfo).port },
    oneWayLatencyMs: 200,
    bandwidthBitsPerSecond: 1e6,
  });
  const { port } = await link.start();
  const socket = await connect(port);
  socket.on('error', () => {});
  socket.write(randomBytes(500_000)); // still in flight when the link closes
  await until(() => link.stats().queuedToTarget > 0, 'bytes are queued on the link');
  await link.close();
  const closed = once(socket, 'close');
  socket.destroy();
  await closed;
  // Only the echo server itself may remain: the link's listener, its upstream socket
  // (and so the echo's side of it) and its delivery timers must all be gone.
  const count = (list: string[], name: string): number => list.filter((x) => x === name).length;
  const extra: Record<string, number> = { TCPServerWrap: 1, TCPSocketWrap: 0, PipeWrap: 0, Timeout: 0 };
  const left = (now: string[]): string[] =>
    Object.entries(extra)
      .filter(([name, allowed]) => count(now, name) > count(baselineResources, name) + allowed)
      .map(([name]) => name);
  // Closed sockets release their handles on a later turn of the event loop.
  await until(() => left(process.getActiveResourcesInfo()).length === 0, 'the handles are released', 10_000).catch(
    () => undefined,
  );
  const now = process.getActiveResourcesInfo();
  for (const name of Object.keys(extra)) t.notOk(left(now).includes(name), `no ${name} left (${now.join(', ')})`);
  await closeServer(echo);
});
