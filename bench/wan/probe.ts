/**
 * Measurement endpoints run on either side of an emulated WAN (under `ip netns exec` or directly).
 * Each prints JSON lines on stdout:
 *
 *   probe serve-echo HOST            → {"port"}; echoes every byte back, until killed
 *   probe serve-bulk HOST SECONDS HASH → {"port"}; to its first connection sends pseudo-random
 *                                       bytes for SECONDS, then ends and prints {"bytes","sha256"}
 *   probe rtt HOST PORT COUNT        → {"connectMs":[...],"pingPongMs":[...]}
 *   probe recv HOST PORT HASH STEADY_AFTER_S
 *                                    → {"bytes","seconds","steadyBitsPerSecond","sha256","timeline"}
 *                                      (timeline: [ms since first byte, bytes so far] every 100 ms)
 */
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';

function print(value: unknown): void {
  process.stdout.write(JSON.stringify(value) + '\n');
}

function elapsedS(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e9;
}

function listen(host: string, onConnection: (s: net.Socket) => void): void {
  const server = net.createServer(onConnection);
  server.listen(0, host, () => print({ port: (server.address() as net.AddressInfo).port }));
}

function serveEcho(host: string): void {
  listen(host, (s) => {
    s.setNoDelay(true);
    s.on('error', () => {});
    s.pipe(s);
  });
}

function serveBulk(host: string, seconds: number, hashing: boolean): void {
  // Cycling through a fixed random buffer keeps the sender cheap; slices at odd offsets keep it non-repeating enough.
  const pool = randomBytes(8 << 20);
  const chunk = 256 << 10;
  let served = false;
  listen(host, (s) => {
    s.on('error', (err) => {
      process.stderr.write(`probe: bulk send failed: ${err.message}\n`);
      process.exit(1);
    });
    if (served) return void s.destroy();
    served = true;
    const hash = hashing ? createHash('sha256') : null;
    const start = process.hrtime.bigint();
    let bytes = 0;
    let offset = 0;
    const pump = (): void => {
      while (elapsedS(start) < seconds) {
        if (offset + chunk > pool.length) offset = (offset + 4099) % 65536;
        const data = pool.subarray(offset, offset + chunk);
        offset += chunk;
        hash?.update(data);
        bytes += data.length;
        if (!s.write(data)) return void s.once('drain', pump);
      }
      s.end(() => {
        print({ bytes, sha256: hash?.digest('hex') ?? null });
        process.exit(0);
      });
    };
    pump();
  });
}

async function rtt(host: string, port: number, count: number): Promise<void> {
  const connectMs: number[] = [];
  const pingPongMs: number[] = [];
  for (let i = 0; i < count; i++) {
    const start = process.hrtime.bigint();
    const s = net.connect({ host, port });
    s.setNoDelay(true);
    await new Promise<void>((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', reject);
    });
    connectMs.push(elapsedS(start) * 1000);
    const ping = process.hrtime.bigint();
    s.write('x');
    await new Promise<void>((resolve) => s.once('data', () => resolve()));
    pingPongMs.push(elapsedS(ping) * 1000);
    s.destroy();
  }
  print({ connectMs, pingPongMs });
}

/** Bytes before `steadyAfterS` are slow start and its loss recovery, not the link's rate. */
function recv(host: string, port: number, hashing: boolean, steadyAfterS: number): void {
  const hash = hashing ? createHash('sha256') : null;
  const s = net.connect({ host, port });
  let first: bigint | null = null;
  let bytes = 0;
  let steadyBytes = 0;
  let steadyStart = 0;
  const timeline: [number, number][] = [];
  s.on('data', (data: Buffer) => {
    first ??= process.hrtime.bigint();
    hash?.update(data);
    bytes += data.length;
    const t = elapsedS(first);
    if (t >= timeline.length * 0.1) timeline.push([Math.round(t * 1000), bytes]);
    if (t >= steadyAfterS) {
      if (steadyStart === 0) steadyStart = t;
      else steadyBytes += data.length;
    }
  });
  s.on('end', () => {
    const seconds = first === null ? 0 : elapsedS(first);
    const steadyS = seconds - steadyStart;
    const steadyBitsPerSecond = steadyStart > 0 && steadyS > 0 ? (steadyBytes * 8) / steadyS : (bytes * 8) / seconds;
    print({ bytes, seconds, steadyBitsPerSecond, sha256: hash?.digest('hex') ?? null, timeline });
  });
  s.on('error', (err) => {
    process.stderr.write(`probe: receive from ${host}:${port} failed: ${err.message}\n`);
    process.exit(1);
  });
}

const [mode, host, a, b, c] = process.argv.slice(2);
if (mode === 'serve-echo' && host) serveEcho(host);
else if (mode === 'serve-bulk' && host) serveBulk(host, Number(a), b === 'hash');
else if (mode === 'rtt' && host)
  void rtt(host, Number(a), Number(b)).catch((err: Error) => {
    process.stderr.write(`probe: rtt to ${host}:${a} failed: ${err.message}\n`);
    process.exit(1);
  });
else if (mode === 'recv' && host) recv(host, Number(a), b === 'hash', Number(c ?? 1));
else {
  process.stderr.write(`probe: unknown mode or missing host (got ${process.argv.slice(2).join(' ')})\n`);
  process.exit(2);
}
