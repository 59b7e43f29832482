/**
 * A TCP proxy a test steers through link faults: forward, reset every
 * connection (RST) and each new one, refuse connections (nothing listens),
 * blackhole (connections accepted and kept, nothing forwarded either way,
 * nothing closed, nothing lost), and flip one random bit in a share of the 1460-byte
 * segments it forwards towards the client. It keeps its port across modes,
 * so the peer reconnects where it always did. `acceptOnly(n)` forwards the
 * first n connections and resets every later one.
 */
import net from 'node:net';

export type LinkMode = 'forward' | 'reset' | 'refuse' | 'blackhole';

export class FaultProxy {
  /** Bits flipped so far. */
  flips = 0;
  /** Connections accepted (refused ones never are). */
  connections = 0;
  private mode: LinkMode = 'forward';
  private limit = Infinity;
  private readonly noneOpen: Array<() => void> = [];
  private server: net.Server | null = null;
  private readonly pairs = new Set<{ client: net.Socket; upstream: net.Socket }>();
  private port = 0;

  /**
   * `flipRate`: the chance that a segment towards the client gets one bit
   * flipped; `random` draws every choice (the scenario's stream).
   */
  constructor(
    private readonly target: { host: string; port: number },
    private readonly random: () => number,
    public flipRate = 0,
  ) {}

  async start(): Promise<number> {
    await this.listen();
    return this.port;
  }

  get current(): LinkMode {
    return this.mode;
  }

  /** Switches the link; existing connections are reset (reset, refuse) or frozen (blackhole). */
  async set(mode: LinkMode): Promise<void> {
    this.mode = mode;
    if (mode === 'reset' || mode === 'refuse') for (const p of this.pairs) this.reset(p);
    for (const p of this.pairs)
      for (const s of [p.client, p.upstream]) {
        if (mode === 'blackhole') s.pause();
        else s.resume();
      }
    if (mode === 'refuse' && this.server) {
      const s = this.server;
      this.server = null;
      await new Promise((r) => s.close(r));
    }
    if (mode !== 'refuse' && !this.server) await this.listen();
  }

  /** From now on connections past the first `n` accepted are reset as they come. */
  acceptOnly(n: number): void {
    this.limit = n;
  }

  /** Resolves once no forwarded connection is open. */
  whenNoneOpen(): Promise<void> {
    if (this.pairs.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.noneOpen.push(resolve));
  }

  async close(): Promise<void> {
    for (const p of this.pairs) this.reset(p);
    const s = this.server;
    this.server = null;
    if (s) await new Promise((r) => s.close(r));
  }

  private listen(): Promise<void> {
    const server = net.createServer((client) => this.accept(client));
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', () => {
        this.port = (server.address() as net.AddressInfo).port;
        resolve();
      });
    });
  }

  private reset(p: { client: net.Socket; upstream: net.Socket }): void {
    this.pairs.delete(p);
    for (const s of [p.client, p.upstream]) if (!s.destroyed) s.resetAndDestroy();
  }

  private accept(client: net.Socket): void {
    client.on('error', () => undefined);
    if (this.mode === 'reset' || this.connections >= this.limit) return void client.resetAndDestroy();
    this.connections++;
    const upstream = net.connect(this.target.port, this.target.host);
    const pair = { client, upstream };
    this.pairs.add(pair);
    upstream.on('error', () => undefined);
    for (const s of [client, upstream]) {
      s.setNoDelay(true);
      s.on('close', () => {
        this.pairs.delete(pair);
        client.destroy();
        upstream.destroy();
        if (this.pairs.size === 0) for (const wake of this.noneOpen.splice(0)) wake();
      });
    }
    // A blackhole stops reading both ways: the kernel's buffers fill and the senders wait, as on a
    // path that went dead, until the peers' own timers notice; nothing is lost if it comes back.
    client.on('data', (chunk: Buffer) => upstream.write(chunk));
    upstream.on('data', (chunk: Buffer) => client.write(this.flipRate > 0 ? this.flip(chunk) : chunk));
    if (this.mode === 'blackhole') {
      client.pause();
      upstream.pause();
    }
  }

  private flip(chunk: Buffer): Buffer {
    let out: Buffer | null = null;
    for (let at = 0; at < chunk.length; at += SEGMENT) {
      if (this.random() >= this.flipRate) continue;
      out ??= Buffer.from(chunk);
      const bit = Math.floor(this.random() * Math.min(SEGMENT, chunk.length - at) * 8);
      out[at + (bit >> 3)] ^= 1 << (bit & 7);
      this.flips++;
    }
    return out ?? chunk;
  }
}

/** A TCP segment's payload on an Ethernet path. */
const SEGMENT = 1460;
