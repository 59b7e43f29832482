/**
 * Ferry-wire fuzzing of `ferry source`: peers that send noise, mutated
 * frames before HELLO, mutated HELLOs, and after a valid HELLO mutated
 * FETCH, ZERO_QUERY, DIRTY_ACK and frames of every type; peers that dribble
 * their handshake. The source must stay up with bounded memory and CPU per
 * connection, close every slow handshake within its timeout, and answer a
 * well-formed destination afterwards.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import t from 'tap';
import { campaign, endCleanly, reportRow } from './campaign';
import { startFerry, servingPort } from '../helpers/ferry-daemon';
import { residentBytes } from '../helpers/ferry-serve';
import { tempDir, writePatternFile } from '../helpers/temp-dir';
import { connectWirePeer, helloFields } from '../helpers/wire-peer';
import { encodeFrameHead, encodePreamble } from '../../src/wire/frame-codec';
import { encodeDirtyAck, encodeFetch, encodeHello, encodeZeroQuery } from '../../src/wire/messages';
import { MessageType } from '../../src/wire/protocol';

endCleanly(t);

const MiB = 1 << 20;
const SIZE = 16 * MiB;
const HANDSHAKE_TIMEOUT_MS = 1000;
const CONCURRENT = 4;
const RSS_LIMIT = 400 * MiB;

type Random = () => number;

function cpuSeconds(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime + stime, in clock ticks of 10 ms
}

function bytes(random: Random, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (random() * 256) | 0;
  return b;
}

function open(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
}

/** Resolves when the peer closes, with the milliseconds it took. */
function closedAfter(s: net.Socket): Promise<number> {
  const started = performance.now();
  return new Promise((resolve) => {
    s.on('error', () => undefined);
    s.resume();
    if (s.destroyed) return resolve(0);
    s.once('close', () => resolve(performance.now() - started));
  });
}

t.test('ferry source under ferry-wire fuzzing', async (t) => {
  const { full, random } = campaign();
  const rand = random('wire-fuzz');
  const int = (n: number): number => Math.floor(rand() * n);
  const pick = <T>(items: readonly T[]): T => items[int(items.length)];
  const goal = full ? 10_000 : 600;
  const started = performance.now();

  const dir = tempDir(t, 'ferry-wire-fuzz-');
  const image = path.join(dir, 'disk.img');
  writePatternFile(image, SIZE, campaign().seed);
  const config = path.join(dir, 'ferry.toml');
  fs.writeFileSync(config, `[source]\nhandshake_timeout_ms = ${HANDSHAKE_TIMEOUT_MS}\nmax_connections = 64\n`);
  const src = await startFerry(t, [
    ...['source', '--image', image, '--listen', '127.0.0.1:0', '--insecure', '--workers', '1', '--config', config],
  ]);
  const port = servingPort(src);
  const pid = src.child.pid!;
  let alive = true;
  void src.exited.then(() => (alive = false));
  const cpuBefore = cpuSeconds(pid);
  let peakRss = residentBytes(pid);
  const sampler = setInterval(() => {
    try {
      peakRss = Math.max(peakRss, residentBytes(pid));
    } catch {
      // exited: checked below
    }
  }, 100);

  const counts = { connections: 0, frames: 0, slow: 0, slowLate: 0, slowestCloseMs: 0, refusedOverLimit: 0 };
  const mutatedFrame = (): Buffer => {
    const kind = int(6);
    const type = pick([
      MessageType.Fetch,
      MessageType.ZeroQuery,
      MessageType.DirtyAck,
      MessageType.CutoverRequest,
      int(256),
    ]);
    if (kind === 0) {
      // A FETCH with any fields: offsets near 2^63 and 2^64, lengths to 2^32-1.
      const offset = pick([0, SIZE - 4096, SIZE, 2 ** 53, int(SIZE)]);
      const f = encodeFetch({
        requestId: int(2 ** 32),
        priority: int(256),
        flags: int(256),
        offset,
        length: pick([0, 1, 4096, 65_536, 16 * MiB, 2 ** 32 - 1, int(2 ** 32)]),
      });
      if (rand() < 0.5) f.writeBigUInt64BE(pick([2n ** 63n, 2n ** 64n - 1n, 2n ** 63n - 1n]), 16 + 6);
      return f;
    }
    if (kind === 1)
      return encodeZeroQuery({
        requestId: int(2 ** 32),
        offset: pick([0, SIZE, 2 ** 52, int(SIZE)]),
        length: pick([0, 1, SIZE, 2 ** 52, int(2 ** 40)]),
      });
    if (kind === 2) return encodeDirtyAck({ seq: int(2 ** 32) });
    if (kind === 3) return encodeFrameHead(type, int(256), bytes(rand, int(64))); // any type, noise for metadata
    // A valid header whose lengths or CRC lie.
    const f = encodeFrameHead(type, int(256), bytes(rand, int(32)));
    if (kind === 4) f.writeUInt32BE(pick([2 ** 32 - 1, 1 << 20, 64 << 20, int(2 ** 32)]), pick([0, 4]));
    else f[int(f.length)] ^= 1 << int(8);
    return f;
  };

  const session = async (): Promise<void> => {
    counts.connections++;
    const kind = int(10);
    if (kind === 0) {
      // A dribbled handshake: the preamble a byte at a time, then silence. The source must close it in time.
      counts.slow++;
      const s = await open(port);
      const closed = closedAfter(s);
      for (const b of encodePreamble()) {
        if (s.destroyed) break;
        s.write(Buffer.from([b]));
        await new Promise((r) => setTimeout(r, 50));
      }
      const ms = await Promise.race([
        closed,
        new Promise<number>((r) => setTimeout(() => r(Infinity), HANDSHAKE_TIMEOUT_MS + 5000)),
      ]);
      counts.slowestCloseMs = Math.max(counts.slowestCloseMs, ms);
      if (ms === Infinity) counts.slowLate++;
      s.destroy();
      return;
    }
    const s = await open(port);
    s.on('error', () => undefined);
    const closed = closedAfter(s);
    if (kind === 1)
      s.write(bytes(rand, 1 + int(2000))); // noise
    else if (kind === 2) {
      s.write(encodePreamble(pick([0, 1, 3, 255])));
      s.write(mutatedFrame());
    } else if (kind === 3) {
      // Mutated frames before HELLO.
      s.write(encodePreamble());
      for (let i = 0, n = 1 + int(5); i < n; i++, counts.frames++) s.write(mutatedFrame());
    } else if (kind === 4) {
      // A mutated HELLO.
      s.write(encodePreamble());
      const hello = encodeHello(
        helloFields({
          version: pick([2, 1, 3, int(65_536)]),
          role: int(256),
          blockSize: pick([4096, 0, 1, 3, 2 ** 31, 2 ** 32 - 1, 1 << 21]),
          maxBatchBlocks: pick([1, 0, 64, 2 ** 32 - 1, int(2 ** 32)]),
          encodings: Array.from({ length: int(256) }, () => int(256)),
          exportName: pick(['', '../../etc/passwd', '/dev/sda', 'disk.img', 'x'.repeat(4096)]),
          session: pick(['a', '../../x', '', 'fuzz-' + int(8)]),
          identity: pick(['', 'not-this-image', bytes(rand, 16).toString('hex')]),
        }),
      );
      if (rand() < 0.3) hello[16 + int(hello.length - 16)] ^= 1 << int(8);
      s.write(hello);
      counts.frames++;
    } else {
      // Authenticated (HELLO accepted), then mutated frames.
      s.write(encodePreamble());
      s.write(encodeHello(helloFields({ session: `fuzz-${int(8)}`, role: int(2) })));
      for (let i = 0, n = 1 + int(20); i < n; i++, counts.frames++) s.write(mutatedFrame());
    }
    // Leave now, or later, by FIN or RST; the source may also close first.
    await Promise.race([closed, new Promise((r) => setTimeout(r, int(100)))]);
    if (rand() < 0.5) s.resetAndDestroy();
    else s.destroy();
  };

  let failed: Error | null = null;
  await Promise.all(
    Array.from({ length: CONCURRENT }, async () => {
      while (alive && !failed && counts.connections < goal) {
        await session().catch((e: Error) => {
          // Connection refused at the cap is allowed; anything else is not.
          if (!/ECONNRESET|EPIPE/.test(e.message)) failed = e;
        });
      }
    }),
  );
  clearInterval(sampler);
  t.notOk(failed, `no unexpected error (${failed})`);
  t.ok(
    alive,
    `the source is alive after ${counts.connections} hostile connections and ${counts.frames} mutated frames`,
  );
  const cpu = alive ? cpuSeconds(pid) - cpuBefore : NaN;
  const cpuPerConnectionMs = (cpu * 1000) / counts.connections;
  t.ok(cpuPerConnectionMs < 20, `CPU per connection ${cpuPerConnectionMs.toFixed(2)} ms`);
  t.ok(peakRss < RSS_LIMIT, `peak RSS ${(peakRss / MiB).toFixed(0)} MiB`);
  t.equal(
    counts.slowLate,
    0,
    `every dribbled handshake (${counts.slow}) was closed (slowest after ${counts.slowestCloseMs.toFixed(0)} ms)`,
  );

  // A well-formed destination is answered afterwards.
  const probeStarted = performance.now();
  let probeMs = Infinity;
  if (alive) {
    const peer = await connectWirePeer(port, helloFields({ session: 'probe' }));
    await peer.frame(MessageType.Welcome);
    peer.socket.write(encodeFetch({ requestId: 1, priority: 0, flags: 0, offset: 0, length: 65_536 }));
    const batch = await peer.frame(MessageType.Batch);
    probeMs = performance.now() - probeStarted;
    t.ok(batch, 'a FETCH is answered with a BATCH');
    peer.socket.destroy();
  }
  t.ok(probeMs < 1000, `a well-formed destination is answered within 1 s afterwards (${probeMs.toFixed(0)} ms)`);
  const survived = alive;
  const code = await src.stop();
  t.equal(code, 0, 'the source stops cleanly');
  reportRow({
    scenario: 'wire-fuzz source',
    faults: `${counts.connections.toLocaleString('en')} hostile connections (${counts.frames.toLocaleString('en')} mutated frames, ${counts.slow} dribbled handshakes), ${CONCURRENT} at once`,
    checks: `alive, CPU ${cpuPerConnectionMs.toFixed(2)} ms per connection, slow handshakes closed within ${counts.slowestCloseMs.toFixed(0)} ms (timeout ${HANDSHAKE_TIMEOUT_MS}), a destination answered in ${probeMs.toFixed(0)} ms after`,
    losses: 0,
    crashes: survived && code === 0 ? 0 : 1,
    hangs: counts.slowLate + (probeMs < 1000 ? 0 : 1),
    peakRssMiB: Math.round(peakRss / MiB),
    seconds: Math.round((performance.now() - started) / 1000),
  });
});
