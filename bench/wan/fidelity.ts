/**
 * Measures what an emulated WAN really delivers, with probe processes run on its two hosts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import type { LinkFidelity, WanLink } from './wan-link';

const PROBE = path.join(__dirname, 'probe.js');

type Hosts = Pick<WanLink, 'sourcePrefix' | 'destPrefix' | 'sourceListenHost' | 'reach'>;

/** A probe process whose JSON lines can be awaited one by one. */
class ProbeProcess {
  private readonly child: ChildProcess;
  private readonly lines: unknown[] = [];
  private waiter: (() => void) | null = null;
  private stderr = '';
  private exited: string | null = null;

  constructor(
    prefix: string[],
    args: string[],
    private readonly label: string,
  ) {
    const argv = [...prefix, process.execPath, PROBE, ...args];
    this.child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let partial = '';
    this.child.stdout!.on('data', (chunk: Buffer) => {
      const parts = (partial + chunk.toString()).split('\n');
      partial = parts.pop()!;
      for (const part of parts) if (part.trim()) this.lines.push(JSON.parse(part));
      this.wake();
    });
    this.child.stderr!.on('data', (chunk: Buffer) => (this.stderr += chunk.toString()));
    this.child.on('error', (err) => {
      this.exited = err.message;
      this.wake();
    });
    this.child.on('close', (code, signal) => {
      this.exited = `exited with ${signal ?? code}${this.stderr ? `: ${this.stderr.trim()}` : ''}`;
      this.wake();
    });
  }

  async next<T>(timeoutMs: number): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    while (this.lines.length === 0) {
      if (this.exited !== null) throw new Error(`wan probe ${this.label}: ${this.exited}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`wan probe ${this.label}: no answer within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.waiter = null;
    }
    return this.lines.shift() as T;
  }

  kill(): void {
    if (this.exited === null) this.child.kill('SIGKILL');
  }

  private wake(): void {
    this.waiter?.();
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

export interface RoundTrips {
  connectMs: number[];
  pingPongMs: number[];
}

/** TCP connects and 1-byte ping-pongs from the destination to a server on the source. */
export async function roundTrips(link: Hosts, count: number): Promise<RoundTrips> {
  const server = new ProbeProcess(link.sourcePrefix, ['serve-echo', link.sourceListenHost], 'echo server');
  try {
    const { port } = await server.next<{ port: number }>(10_000);
    const to = await link.reach(port);
    const client = new ProbeProcess(link.destPrefix, ['rtt', to.host, String(to.port), String(count)], 'rtt');
    try {
      return await client.next<RoundTrips>(10_000 + count * 2_000);
    } finally {
      client.kill();
    }
  } finally {
    server.kill();
  }
}

export interface BulkTransfer {
  sent: { bytes: number; sha256: string | null };
  received: {
    bytes: number;
    seconds: number;
    /** Rate after `steadyAfterS`; equals the mean over the transfer if it ended sooner. */
    steadyBitsPerSecond: number;
    sha256: string | null;
    timeline: [number, number][];
  };
}

/** One TCP connection sending source → destination for `seconds`; hashes both ends if asked. */
export async function bulkTransfer(
  link: Hosts,
  seconds: number,
  hash: boolean,
  steadyAfterS = 1,
): Promise<BulkTransfer> {
  const flag = hash ? 'hash' : 'nohash';
  const server = new ProbeProcess(
    link.sourcePrefix,
    ['serve-bulk', link.sourceListenHost, String(seconds), flag],
    'bulk sender',
  );
  try {
    const { port } = await server.next<{ port: number }>(10_000);
    const to = await link.reach(port);
    const client = new ProbeProcess(
      link.destPrefix,
      ['recv', to.host, String(to.port), flag, String(steadyAfterS)],
      'bulk receiver',
    );
    try {
      const limit = seconds * 1000 + 15_000;
      const [sent, received] = await Promise.all([
        server.next<BulkTransfer['sent']>(limit),
        client.next<BulkTransfer['received']>(limit),
      ]);
      return { sent, received };
    } finally {
      client.kill();
    }
  } finally {
    server.kill();
  }
}

/**
 * RTT: median of TCP connects (or of ping-pongs where a connect does not cross the link).
 * Throughput: one TCP connection's delivered rate over 2 s after slow start.
 */
export async function measureFidelity(link: Hosts, rttFrom: 'connect' | 'pingPong'): Promise<LinkFidelity> {
  const trips = await roundTrips(link, 9);
  const rttMs = median(rttFrom === 'connect' ? trips.connectMs : trips.pingPongMs);
  // Slow start overshoots a drop-tail queue; recovering the burst of losses takes some 20 round trips,
  // and data held for reordering meanwhile would inflate the rate if counted.
  const steadyAfterS = Math.max(1, (20 * rttMs) / 1000);
  const bulk = await bulkTransfer(link, steadyAfterS + 2, false, steadyAfterS);
  return { rttMs, throughputBitsPerSecond: bulk.received.steadyBitsPerSecond };
}
