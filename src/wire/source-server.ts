/**
 * The listening side of a ferry-wire source (`ferry source`, and `ferry
 * daemon`'s source listener): accepts and authenticates connections, holds
 * the connection limit and the handshake deadline, and keeps the totals.
 * Each accepted socket is a SourceConnection (source-connection.ts), which
 * finds the image its HELLO names in the export table; each image keeps its
 * own sessions, write tracking and figures (source-image.ts).
 */
import type net from 'node:net';
import type { Logger } from 'pino';
import { BatchCodec } from '../codec/batch-codec';
import type { CodecPool } from '../pool';
import { createWireServer, destinationProblem, WireAuth } from './auth';
import type { CodecChooser } from './codec-chooser';
import { BatchBuffers } from './batch-buffers';
import { LinkMeter } from './link-meter';
import { BurstLog } from '../util/burst-log';
import { SourceConnection } from './source-connection';
import type { SourceExportTable } from './source-exports';

export interface SourceServerOptions {
  /** The images served, by the export name a HELLO gives. */
  exports: SourceExportTable;
  auth: WireAuth;
  pool: CodecPool;
  chooser: CodecChooser;
  log: Logger;
  /** FETCHes one connection may have in progress before the server stops reading it. */
  maxFetchesInFlight?: number;
  /** Largest FETCH length accepted. */
  maxFetchBytes?: number;
  /** A peer must finish TLS and have its HELLO accepted within this time, or it is disconnected. */
  handshakeTimeoutMs?: number;
  /** Connections at once, authenticated or not; more are refused at accept. */
  maxConnections?: number;
  /** The config key of that cap, named when a connection is refused at it. */
  maxConnectionsKey?: string;
}

export interface SourceCounters {
  connections: number;
  authFailures: number;
  handshakeTimeouts: number;
  refusedOverLimit: number;
  batches: number;
  bytesRead: number;
  bytesSent: number;
  references: number;
}

export class WireSourceServer {
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  /** When each connection still in its TLS handshake arrived, by peer address. */
  private readonly arrivals = new Map<string, number>();
  private readonly handshakeTimeoutMs: number;
  // A flood of refused peers is logged once per burst (the first with its address, then counts).
  private readonly authRefusals: BurstLog;
  private readonly limitRefusals: BurstLog;
  private readonly lateHandshakes: BurstLog;
  private nextId = 1;
  private readonly meter: LinkMeter;
  /** Hashes batches on this thread, so repeats are known before the pool compresses anything. */
  private readonly hasher = new BatchCodec({ codec: 'none' });
  /** Batch buffers, reused across fetches and connections once their bytes are written. */
  private readonly buffers = new BatchBuffers();
  counters: SourceCounters = {
    connections: 0,
    authFailures: 0,
    handshakeTimeouts: 0,
    refusedOverLimit: 0,
    batches: 0,
    bytesRead: 0,
    bytesSent: 0,
    references: 0,
  };

  constructor(private readonly options: SourceServerOptions) {
    this.authRefusals = burstLog(options.log, 'more connections failed authentication');
    this.limitRefusals = burstLog(options.log, 'more connections refused at the connection limit');
    this.lateHandshakes = burstLog(options.log, 'more peers disconnected: no HELLO in time');
    const handshakeTimeoutMs = (this.handshakeTimeoutMs = options.handshakeTimeoutMs ?? 10_000);
    this.server = createWireServer(
      options.auth,
      { handshakeTimeoutMs },
      (socket) => this.accept(socket),
      (reason, peer, detail) => {
        this.counters.authFailures++;
        this.authRefusals.note(() =>
          options.log.warn({ peer, reason, detail }, 'refused a connection that failed authentication'),
        );
      },
    );
    this.server.maxConnections = options.maxConnections ?? 64;
    this.server.on('drop', (peer?: net.DropArgument) => {
      this.counters.refusedOverLimit++;
      this.limitRefusals.note(() =>
        options.log.warn(
          { peer: peer && `${peer.remoteAddress}:${peer.remotePort}`, limit: this.server.maxConnections },
          `refused a connection: at the connection limit (${options.maxConnectionsKey ?? 'source.max_connections'})`,
        ),
      );
    });
    // The TLS server's own handshake timeout (the same length) guards a connection until TLS completes.
    this.server.on('connection', (raw: net.Socket) => {
      const key = `${raw.remoteAddress}:${raw.remotePort}`;
      this.arrivals.set(key, Date.now());
      raw.once('close', () => this.arrivals.delete(key));
    });
    this.meter = new LinkMeter(
      () => this.counters.bytesSent,
      () => options.pool.isFull,
      (rate) => options.chooser.recordLinkRate(rate),
    );
    this.meter.start();
  }

  listen(host: string, port: number): Promise<string> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        const a = this.server.address() as net.AddressInfo;
        resolve(`${a.address}:${a.port}`);
      });
    });
  }

  async close(): Promise<void> {
    this.meter.stop();
    for (const burst of [this.authRefusals, this.limitRefusals, this.lateHandshakes]) burst.close();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  private accept(socket: net.Socket): void {
    const peer = `${socket.remoteAddress}:${socket.remotePort}`;
    const log = this.options.log.child({ wire: this.nextId++, peer });
    // Unauthenticated peers cost a socket each: one that has not said HELLO in time (TLS included) is dropped.
    const arrived = this.arrivals.get(peer) ?? Date.now();
    this.arrivals.delete(peer);
    const deadline = setTimeout(
      () => {
        this.counters.handshakeTimeouts++;
        this.lateHandshakes.note(() =>
          log.warn({ timeoutMs: this.handshakeTimeoutMs }, 'disconnected a peer that did not authenticate in time'),
        );
        socket.destroy();
      },
      Math.max(0, arrived + this.handshakeTimeoutMs - Date.now()),
    );
    this.sockets.add(socket);
    this.counters.connections++;
    socket.setNoDelay(true);
    const roleProblem = destinationProblem(this.options.auth, socket);
    if (roleProblem) this.counters.authFailures++;
    const conn = new SourceConnection(
      socket,
      this.options,
      this.counters,
      this.hasher,
      this.buffers,
      log,
      roleProblem,
      () => clearTimeout(deadline),
    );
    socket.on('close', () => {
      clearTimeout(deadline);
      this.sockets.delete(socket);
      conn.closed();
    });
  }
}

/** Counts the repeats of a refusal and logs them as one line per window. */
function burstLog(log: Logger, msg: string): BurstLog {
  return new BurstLog((count, windowMs) => log.warn({ count, windowMs }, msg));
}
