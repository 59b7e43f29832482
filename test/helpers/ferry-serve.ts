/**
 * Starts `ferry serve` as a child process on a loopback port (port 0: the
 * kernel picks one), with the address parts the interop tests use.
 */
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { startFerry } from './ferry-daemon';

interface Teardownable {
  teardown(fn: () => void | Promise<void>): void;
}

export interface FerryServe {
  child: ChildProcess;
  pid: number;
  /** `host:port`, or the socket path with --socket. */
  address: string;
  host: string;
  port: number;
  /** `nbd://host:port/NAME` (NAME empty: the default export). */
  uri(exportName?: string): string;
  /** Everything the server wrote to stderr so far. */
  stderr(): string;
  /** How many log lines with this msg have appeared so far. */
  logCount(msg: string | RegExp): number;
  /** Sends a signal and resolves with the exit code (null when killed by a signal). */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** Resolves with the exit code once the process has exited. */
  exited: Promise<number | null>;
}

export interface StartOptions {
  /** Added unless the args already choose --listen or --socket. */
  listen?: string;
  timeoutMs?: number;
}

export async function startFerryServe(
  t: Teardownable,
  args: string[],
  options: StartOptions = {},
): Promise<FerryServe> {
  const full = ['serve', ...args];
  if (!args.includes('--listen') && !args.includes('--socket')) full.push('--listen', options.listen ?? '127.0.0.1:0');
  const daemon = await startFerry(t, full, options.timeoutMs ?? 60_000);
  const address = String(daemon.serving.address);
  const at = address.lastIndexOf(':');
  const host = at > 0 ? address.slice(0, at) : '';
  const port = at > 0 ? Number(address.slice(at + 1)) : 0;
  return {
    child: daemon.child,
    pid: daemon.child.pid!,
    address,
    host,
    port,
    uri: (name = '') => `nbd://${host}:${port}/${name}`,
    stderr: daemon.stderr,
    logCount: daemon.logCount,
    stop: daemon.stop,
    exited: daemon.exited,
  };
}

/** Resident set size of a process in bytes, from /proc/PID/status. */
export function residentBytes(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /VmRSS:\s+(\d+) kB/.exec(status);
  if (!match) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(match[1]) * 1024;
}
