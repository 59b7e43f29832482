/**
 * The NBD server: accepts connections on TCP or a Unix socket and serves the
 * exports it was given. It knows nothing of what a device does behind the
 * BlockDevice interface.
 */
import net from 'node:net';
import fs from 'node:fs';
import type { Logger } from 'pino';
import { ConnectionLimits, NbdConnection } from './connection';
import type { ExportTable, NbdExport } from './negotiation';
import { BurstLog } from '../util/burst-log';

export type ListenAddress = { host: string; port: number } | { socketPath: string };

export interface ServerLimits extends ConnectionLimits {
  /** Connections at once; more are closed as they arrive. */
  maxConnections: number;
}

export const DEFAULT_LIMITS: ServerLimits = {
  maxInFlightRequests: 64,
  maxInFlightBytes: 64 * 1024 * 1024,
  maxPayload: 32 * 1024 * 1024,
  handshakeTimeoutMs: 30_000,
  idleTimeoutMs: 0,
  maxConnections: 128,
};

export class StaticExportTable implements ExportTable {
  constructor(private readonly entries: NbdExport[]) {}
  find(name: string): NbdExport | undefined {
    if (name === '') return this.entries[0];
    return this.entries.find((e) => e.name === name);
  }
  list(): NbdExport[] {
    return this.entries;
  }
}

export class NbdServer {
  private readonly server: net.Server;
  private readonly connections = new Set<NbdConnection>();
  private readonly refusals: BurstLog;
  private nextId = 1;
  /** Connections closed at arrival because the server was at its limit. */
  refusedOverLimit = 0;

  constructor(
    private readonly exportTable: ExportTable,
    private readonly log: Logger,
    private readonly limits: ServerLimits = DEFAULT_LIMITS,
  ) {
    // Paused at accept: the connection moves the socket to reads into its own buffers first.
    this.server = net.createServer({ pauseOnConnect: true }, (socket) => this.accept(socket));
    this.server.maxConnections = limits.maxConnections;
    this.refusals = new BurstLog((count, windowMs) =>
      log.warn({ count, windowMs, limit: limits.maxConnections }, 'refused more NBD connections at the limit'),
    );
    this.server.on('drop', (peer?: net.DropArgument) => {
      this.refusedOverLimit++;
      this.refusals.note(() =>
        log.warn(
          { peer: peer && `${peer.remoteAddress}:${peer.remotePort}`, limit: limits.maxConnections },
          'refused an NBD connection: at the connection limit (nbd.max_connections)',
        ),
      );
    });
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Clients in transmission on the export `name`. */
  clientsOf(name: string): number {
    let n = 0;
    for (const c of this.connections) if (c.exportName === name) n++;
    return n;
  }

  listen(address: ListenAddress): Promise<string> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      const done = (): void => {
        this.server.off('error', reject);
        const a = this.server.address();
        resolve(typeof a === 'string' ? a : `${a!.address}:${a!.port}`);
      };
      if ('socketPath' in address) {
        removeStaleSocket(address.socketPath);
        this.server.listen(address.socketPath, done);
      } else this.server.listen(address.port, address.host, done);
    });
  }

  /** The bound TCP port (useful when listening on port 0). */
  get port(): number {
    const a = this.server.address();
    return typeof a === 'object' && a ? a.port : 0;
  }

  /** Stops accepting, finishes in-flight requests, closes every connection. */
  async close(): Promise<void> {
    this.refusals.close();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    await Promise.all([...this.connections].map((c) => c.shutdown()));
    await closed;
  }

  private accept(socket: net.Socket): void {
    const id = this.nextId++;
    const peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix socket';
    const log = this.log.child({ conn: id, peer });
    log.info('NBD client connected');
    const connection = new NbdConnection(socket, this.exportTable, this.limits, log);
    this.connections.add(connection);
    socket.on('close', () => {
      this.connections.delete(connection);
      log.info('NBD client disconnected');
    });
  }
}

function removeStaleSocket(path: string): void {
  try {
    if (fs.statSync(path).isSocket()) fs.unlinkSync(path);
  } catch {
    // absent: nothing to remove
  }
}
