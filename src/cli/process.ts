/** Process edges shared by the long-running commands: addresses and signals. */
import type { Logger } from 'pino';
import type { ListenAddress } from '../nbd/server';
import type { ConnectionLimits } from '../nbd/connection';
import type { FerryConfig } from '../config/schema';

/** The NBD server's per-connection limits from the `[nbd]` section. */
export function nbdLimits(config: FerryConfig): ConnectionLimits {
  return {
    maxInFlightRequests: config.nbd.max_in_flight_requests,
    maxInFlightBytes: config.nbd.max_in_flight_bytes,
    maxPayload: config.nbd.max_request_bytes,
    handshakeTimeoutMs: config.nbd.handshake_timeout_ms,
  };
}

export function parseHostPort(value: string): { host: string; port: number } {
  const at = value.lastIndexOf(':');
  let host = value.slice(0, at);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  return { host, port: Number(value.slice(at + 1)) };
}

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
