/** Process edges shared by the long-running commands: addresses and signals. */
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { ListenAddress, ServerLimits } from '../nbd/server';
import type { FerryConfig } from '../config/schema';
import { parseHostPort } from '../config/schema';

/** The NBD server's per-connection limits from the `[nbd]` section. */
export function nbdLimits(config: Pick<FerryConfig, 'nbd'>): ServerLimits {
  return {
    maxConnections: config.nbd.max_connections,
    idleTimeoutMs: config.nbd.idle_timeout_ms,
    maxInFlightRequests: config.nbd.max_in_flight_requests,
    maxInFlightBytes: config.nbd.max_in_flight_bytes,
    maxPayload: config.nbd.max_request_bytes,
    handshakeTimeoutMs: config.nbd.handshake_timeout_ms,
  };
}

export { parseHostPort };

export function listenAddress(section: { listen: string; socket?: string }): ListenAddress {
  return section.socket ? { socketPath: section.socket } : parseHostPort(section.listen);
}

/** Waits for SIGINT or SIGTERM, runs the shutdown once, and exits 0 (1 if it failed). */
/** Runs until SIGINT or SIGTERM (or until `done` resolves), then shuts down and exits. */
export function runUntilSignal(log: Logger, shutdown: () => Promise<void>, done?: Promise<void>): Promise<never> {
  return new Promise(() => {
    let stopping = false;
    const stop = (signal: string): void => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'shutting down: finishing in-flight requests');
      shutdown()
        .then(() => {
          log.info('stopped');
          log.flush?.();
          setTimeout(() => process.exit(0), 20);
        })
        .catch((err: unknown) => {
          log.error({ err }, 'shutdown failed');
          log.flush?.();
          setTimeout(() => process.exit(1), 20);
        });
    };
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('SIGTERM', () => stop('SIGTERM'));
    void done?.then(() => stop('done'));
  });
}

/** A listen failure as an operator reads it: what could not listen, where, and why. */
export function listenError(what: string, where: string, err: NodeJS.ErrnoException): Error {
  const unixSocket = where.startsWith('/') || where.startsWith('.');
  let why = err.message;
  if (err.code === 'EADDRINUSE') why = 'the address is in use (is another ferry or NBD server running there?)';
  else if (err.code === 'EADDRNOTAVAIL') why = 'no local interface has that address';
  else if (unixSocket && (err.code === 'EACCES' || err.code === 'ENOENT')) {
    const dir = path.dirname(path.resolve(where));
    why = fs.existsSync(dir) ? `permission denied in ${dir}` : `directory ${dir} does not exist`;
  } else if (err.code === 'EACCES') why = 'permission denied (ports below 1024 need privileges)';
  return new Error(`${what}: cannot listen on ${where}: ${why}`, { cause: err });
}
