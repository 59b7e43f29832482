/**
 * An in-process TCP proxy that makes a loopback connection behave like a WAN link:
 * one-way latency, a bandwidth cap per direction shared by every connection, and
 * a switch that breaks the link. For tests and benchmarks of the migration over WAN.
 */
import net from 'node:net';
import type { Logger } from 'pino';
import { LinkDirection, type LinkSegment } from './link-direction';

export interface SlowLinkOptions {
  listen: { host: string; port: number };
  target: { host: string; port: number } | { socketPath: string };
  oneWayLatencyMs: number;
  /** Per direction; every connection through the link shares it. */
  bandwidthBitsPerSecond: number;
  log?: Logger;
}

export interface SlowLinkStats {
  connections: number;
  /** Bytes delivered to the target (client → target) and back to clients. */
  bytesToTarget: number;
  bytesFromTarget: number;
  queuedToTarget: number;
  queuedFromTarget: number;
}

interface LinkConnection {
  id: number;
  client: net.Socket;
  upstream: net.Socket;
  /** Readers paused because their peer's socket buffer is full (as opposed to the link queue). */
  clientWaitsForDrain: boolean;
  upstreamWaitsForDrain: boolean;
}

export class SlowLink {
  private server: net.Server | null = null;
  private readonly connections = new Set<LinkConnection>();
  private broken = false;
  private nextId = 1;
  private readonly toTarget: LinkDirection<LinkConnection>;
  private readonly fromTarget: LinkDirection<LinkConnection>;

  constructor(private readonly options: SlowLinkOptions) {
    const { oneWayLatencyMs: latency, bandwidthBitsPerSecond: bits } = options;
    if (!(latency >= 0) || !Number.isFinite(latency))
      throw new Error(`slow link: oneWayLatencyMs must be a number >= 0 (got ${latency})`);
    if (!(bits > 0) || !Number.isFinite(bits))
      throw new Error(`slow link: bandwidthBitsPerSecond must be a number > 0 (got ${bits})`);
    const bytesPerMs = bits / 8 / 1000;
    this.toTarget = new LinkDirection(
      bytesPerMs,
      latency,
      (s) => this.deliver(s, 'upstream'),
      () => this.resumeReaders(),
    );
    this.fromTarget = new LinkDirection(
      bytesPerMs,
      latency,
      (s) => this.deliver(s, 'client'),
      () => this.resumeReaders(),
    );
  }

  async start(): Promise<{ host: string; port: number }> {
    if (this.server) throw new Error('slow link: already started');
    const server = net.createServer({ allowHalfOpen: true }, (client) => this.accept(client));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.options.listen.port, this.options.listen.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    const address = server.address() as net.AddressInfo;
    return { host: address.address, port: address.port };
  }

  /** Stops listening, drops every connection and everything in flight. */
  async close(): Promise<void> {
    const server = this.server;
    this.server = null;
    this.dropAll();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** A broken link drops every connection and refuses new ones (reset) until mended. */
  setBroken(broken: boolean): void {
    this.broken = broken;
    this.options.log?.info({ broken }, 'slow link: broken set');
    if (broken) this.dropAll();
  }

  setBandwidth(bitsPerSecond: number): void {
    if (!(bitsPerSecond > 0)) throw new Error(`slow link: bandwidth must be > 0 bits/s (got ${bitsPerSecond})`);
    this.toTarget.setBandwidth(bitsPerSecond / 8 / 1000);
    this.fromTarget.setBandwidth(bitsPerSecond / 8 / 1000);
  }

  stats(): SlowLinkStats {
    return {
      connections: this.connections.size,
      bytesToTarget: this.toTarget.deliveredBytes,
      bytesFromTarget: this.fromTarget.deliveredBytes,
      queuedToTarget: this.toTarget.queuedBytes,
      queuedFromTarget: this.fromTarget.queuedBytes,
    };
  }

  private accept(client: net.Socket): void {
    if (this.broken) {
      client.resetAndDestroy();
      return;
    }
    const target = this.options.target;
    const upstream =
      'socketPath' in target
        ? net.connect({ path: target.socketPath, allowHalfOpen: true })
        : net.connect({ host: target.host, port: target.port, allowHalfOpen: true });
    // The link adds its own delay; Nagle's algorithm must not add more.
    client.setNoDelay(true);
    if (!('socketPath' in target)) upstream.setNoDelay(true);
    const conn: LinkConnection = {
      id: this.nextId++,
      client,
      upstream,
      clientWaitsForDrain: false,
      upstreamWaitsForDrain: false,
    };
    this.connections.add(conn);
    const log = this.options.log?.child({ conn: conn.id });
    log?.debug({ peer: client.remotePort }, 'slow link: connection');
    this.wire(conn, client, upstream, this.toTarget, log);
    this.wire(conn, upstream, client, this.fromTarget, log);
  }

  /** Feeds `reader`'s bytes into `direction`; any abrupt end drops the whole connection. */
  private wire(
    conn: LinkConnection,
    reader: net.Socket,
    writer: net.Socket,
    direction: LinkDirection<LinkConnection>,
    log: Logger | undefined,
  ): void {
    let ended = false;
    reader.on('data', (chunk: Buffer) => {
      direction.send(conn, chunk);
      if (direction.full) reader.pause();
    });
    reader.on('end', () => {
      ended = true;
      direction.end(conn);
    });
    reader.on('error', (err) => {
      log?.debug({ err }, 'slow link: socket error');
      this.drop(conn);
    });
    reader.on('close', () => {
      // Closed without a FIN: the peer vanished, so the far side must see it too.
      if (!ended) this.drop(conn);
      else if (conn.client.destroyed && conn.upstream.destroyed) this.connections.delete(conn);
    });
    writer.on('drain', () => {
      if (reader === conn.client) conn.clientWaitsForDrain = false;
      else conn.upstreamWaitsForDrain = false;
      this.resumeReaders();
    });
  }

  private deliver(segment: LinkSegment<LinkConnection>, to: 'client' | 'upstream'): void {
    const conn = segment.conn;
    if (!this.connections.has(conn)) return;
    const writer = to === 'client' ? conn.client : conn.upstream;
    if (writer.destroyed) return;
    if (segment.data === null) {
      writer.end();
      return;
    }
    if (!writer.write(segment.data)) {
      if (to === 'upstream') conn.clientWaitsForDrain = true;
      else conn.upstreamWaitsForDrain = true;
      (to === 'upstream' ? conn.client : conn.upstream).pause();
    }
  }

  private resumeReaders(): void {
    for (const conn of this.connections) {
      if (!this.toTarget.full && !conn.clientWaitsForDrain && conn.client.isPaused() && !conn.client.destroyed)
        conn.client.resume();
      if (!this.fromTarget.full && !conn.upstreamWaitsForDrain && conn.upstream.isPaused() && !conn.upstream.destroyed)
        conn.upstream.resume();
    }
  }

  private drop(conn: LinkConnection): void {
    if (!this.connections.delete(conn)) return;
    // A TCP reset, as a peer sees when a path dies and the connection is torn down.
    if (!conn.client.destroyed) conn.client.resetAndDestroy();
    conn.upstream.destroy();
  }

  private dropAll(): void {
    for (const conn of [...this.connections]) this.drop(conn);
    this.toTarget.clear();
    this.fromTarget.clear();
  }
}
