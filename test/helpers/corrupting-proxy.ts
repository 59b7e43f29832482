/**
 * A TCP proxy for the ferry wire (insecure mode) that flips one random bit
 * in one source → destination frame in N, anywhere in the frame, and counts
 * the flips. It parses the framing only to know where frames start.
 */
import net from 'node:net';

export class CorruptingProxy {
  flips = 0;
  frames = 0;
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();

  constructor(
    private readonly target: { host: string; port: number },
    private readonly oneIn: number,
  ) {
    this.server = net.createServer((client) => this.accept(client));
  }

  start(): Promise<number> {
    return new Promise((resolve) =>
      this.server.listen(0, '127.0.0.1', () => resolve((this.server.address() as net.AddressInfo).port)),
    );
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((r) => this.server.close(r));
  }

  private accept(client: net.Socket): void {
    const upstream = net.connect(this.target.port, this.target.host);
    for (const s of [client, upstream]) {
      this.sockets.add(s);
      s.setNoDelay(true);
      s.on('error', () => undefined);
      s.on('close', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    let pending = Buffer.alloc(0);
    let preamble = false;
    upstream.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      for (;;) {
        if (!preamble) {
          if (pending.length < 8) break;
          client.write(pending.subarray(0, 8));
          pending = pending.subarray(8);
          preamble = true;
          continue;
        }
        if (pending.length < 16) break;
        const size = 16 + pending.readUInt32BE(0) + pending.readUInt32BE(4);
        if (pending.length < size) break;
        const frame = Buffer.from(pending.subarray(0, size));
        pending = pending.subarray(size);
        this.frames++;
        if (this.frames % this.oneIn === 0) {
          const bit = Math.floor(Math.random() * size * 8);
          frame[bit >> 3] ^= 1 << (bit & 7);
          this.flips++;
        }
        client.write(frame);
      }
    });
  }
}
