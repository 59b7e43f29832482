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

/** Free batch buffers kept, all sizes together: 16 batches of 64 blocks of 4 KiB. */
const KEPT_BATCH_BYTES = 4 << 20;

/** What a running listener may be changed to (`ferry daemon` on reload); a key left out stays. */
export interface ListenerChange {
  auth?: WireAuth;
  handshakeTimeoutMs?: number;
  maxConnections?: number;
  chooser?: CodecChooser;
}

export class WireSourceServer {
  /** The socket new connections arrive on; null before listen() and after close(). */
  private listener: net.Server | null = null;
  /** Where it is bound, as asked (host) and as given (port). */
  private bound: { host: string; port: number } | null = null;
  /** Listeners replaced by a rebind: they accept nothing, their connections go on until they end. */
  private readonly retired = new Set<net.Server>();
  private readonly sockets = new Set<net.Socket>();
  /** When each connection still in its TLS handshake arrived, by peer address. */
  private readonly arrivals = new Map<string, number>();
  private handshakeTimeoutMs: number;
  private maxConnections: number;
  private auth: WireAuth;
  // A flood of refused peers is logged once per burst (the first with its address, then counts).
  private readonly authRefusals: BurstLog;
  private readonly limitRefusals: BurstLog;
  private readonly lateHandshakes: BurstLog;
  private nextId = 1;
  private readonly meter: LinkMeter;
  /** Hashes batches on this thread, so repeats are known before the pool compresses anything. */
  private readonly hasher = new BatchCodec({ codec: 'none' });
  /** Batch buffers, reused across fetches and connections once their bytes are written. */
  private readonly buffers = new BatchBuffers(KEPT_BATCH_BYTES);
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
    this.handshakeTimeoutMs = options.handshakeTimeoutMs ?? 10_000;
    this.maxConnections = options.maxConnections ?? 64;
    this.auth = options.auth;
    this.meter = new LinkMeter(
      () => this.counters.bytesSent,
      () => options.pool.isFull,
      (rate) => this.options.chooser.recordLinkRate(rate),
    );
    this.meter.start();
  }

  /** Whether new connections are accepted now. */
  get isListening(): boolean {
    return this.listener !== null;
  }

  /** How new connections are authenticated. */
  get credentials(): WireAuth {
    return this.auth;
  }

  /** Connections open now, on the listener and on any it replaced. */
  get connections(): number {
    return this.sockets.size;
  }

  /** A listening socket with this server's handlers, for `auth` (one per listen or rebind). */
  private makeListener(auth: WireAuth): net.Server {
    const { log } = this.options;
    const server = createWireServer(
      auth,
      { handshakeTimeoutMs: this.handshakeTimeoutMs },
      (socket) => this.accept(socket, auth),
      (reason, peer, detail) => {
        this.counters.authFailures++;
        this.authRefusals.note(() =>
          log.warn({ peer, reason, detail }, 'refused a connection that failed authentication'),
        );
      },
    );
    server.maxConnections = this.maxConnections;
    server.on('drop', (peer?: net.DropArgument) => {
      this.counters.refusedOverLimit++;
      this.limitRefusals.note(() =>
        log.warn(
          { peer: peer && `${peer.remoteAddress}:${peer.remotePort}`, limit: server.maxConnections },
          `refused a connection: at the connection limit (${this.options.maxConnectionsKey ?? 'source.max_connections'})`,
        ),
      );
    });
    // The TLS server's own handshake timeout (the same length) guards a connection until TLS completes.
    server.on('connection', (raw: net.Socket) => {
      const key = `${raw.remoteAddress}:${raw.remotePort}`;
      this.arrivals.set(key, Date.now());
      raw.once('close', () => this.arrivals.delete(key));
    });
    return server;
  }

  /** Binds the listener (again, after stopListening), with the changes given. */
  listen(host: string, port: number, change: ListenerChange = {}): Promise<string> {
    if (this.listener) return Promise.reject(new Error('the source listener is listening already'));
    this.auth = change.auth ?? this.auth;
    this.handshakeTimeoutMs = change.handshakeTimeoutMs ?? this.handshakeTimeoutMs;
    this.adjust(change);
    const server = this.makeListener(this.auth);
    return listenOn(server, host, port).then((address) => {
      this.listener = server;
      this.bound = { host, port: address.port };
      return `${address.address}:${address.port}`;
    });
  }

  /**
   * Moves new connections to a listener on `host:port` (null: where it is
   * now) with the changes given; connections already open stay as they are
   * and end by themselves. A new address is bound before the old one is
   * let go, so a failure leaves the old listener serving; on the same
   * address the old one is let go first, and taken back if the bind fails.
   */
  async rebind(at: { host: string; port: number } | null, change: ListenerChange = {}): Promise<string> {
    const old = this.listener;
    if (!old || !this.bound) throw new Error('the source listener is not listening');
    const target = at ?? this.bound;
    const auth = change.auth ?? this.auth;
    const previous = { handshakeTimeoutMs: this.handshakeTimeoutMs, maxConnections: this.maxConnections };
    this.handshakeTimeoutMs = change.handshakeTimeoutMs ?? this.handshakeTimeoutMs;
    this.maxConnections = change.maxConnections ?? this.maxConnections;
    const next = this.makeListener(auth);
    const same = target.host === this.bound.host && target.port === this.bound.port;
    if (same) old.close();
    let address: net.AddressInfo;
    try {
      address = await listenOn(next, target.host, target.port);
    } catch (e) {
      this.handshakeTimeoutMs = previous.handshakeTimeoutMs;
      this.maxConnections = previous.maxConnections;
      if (same)
        await listenOn(old, this.bound.host, this.bound.port).catch((again: Error) => {
          // Nothing listens now: say so rather than claim the old address.
          this.listener = null;
          this.bound = null;
          throw new Error(`${(e as Error).message}; and the old address could not be taken back: ${again.message}`);
        });
      throw e;
    }
    if (!same) old.close();
    this.retired.add(old);
    old.once('close', () => this.retired.delete(old));
    this.listener = next;
    this.auth = auth;
    this.bound = { host: target.host, port: address.port };
    if (change.chooser) this.options.chooser = change.chooser;
    return `${address.address}:${address.port}`;
  }

  /** Changes that need no new listener: the connection cap and the codec choice. */
  adjust(change: Pick<ListenerChange, 'maxConnections' | 'chooser'>): void {
    if (change.maxConnections !== undefined) {
      this.maxConnections = change.maxConnections;
      if (this.listener) this.listener.maxConnections = change.maxConnections;
    }
    if (change.chooser) this.options.chooser = change.chooser;
  }

  /** Stops accepting; connections already open go on until they end (close() ends them). */
  stopListening(): void {
    const old = this.listener;
    this.listener = null;
    this.bound = null;
    if (!old) return;
    old.close();
    this.retired.add(old);
    old.once('close', () => this.retired.delete(old));
  }

  async close(): Promise<void> {
    this.meter.stop();
    for (const burst of [this.authRefusals, this.limitRefusals, this.lateHandshakes]) burst.close();
    const listeners = [this.listener, ...this.retired].filter((l) => l !== null);
    this.listener = null;
    const closed = Promise.all(
      listeners.map(
        (l) => new Promise<void>((resolve) => (l.listening ? l.close(() => resolve()) : l.once('close', resolve))),
      ),
    );
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  private accept(socket: net.Socket, auth: WireAuth): void {
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
    const roleProblem = destinationProblem(auth, socket);
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

function listenOn(server: net.Server, host: string, port: number): Promise<net.AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server.address() as net.AddressInfo);
    });
  });
}

/** Counts the repeats of a refusal and logs them as one line per window. */
function burstLog(log: Logger, msg: string): BurstLog {
  return new BurstLog((count, windowMs) => log.warn({ count, windowMs }, msg));
}
