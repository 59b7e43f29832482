/**
 * Starts `ferry serve` as a child process on a loopback port (port 0: the
 * kernel picks one) and reads its address from the `serving` log line. The
 * process is killed when the test ends, whatever happened.
 */
import { ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const FERRY_BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'ferry.js');
const EXIT_WITH_PARENT = path.join(__dirname, 'exit-with-parent.js');

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

export function startFerryServe(t: Teardownable, args: string[], options: StartOptions = {}): Promise<FerryServe> {
  const full = ['serve', ...args];
  if (!args.includes('--listen') && !args.includes('--socket')) full.push('--listen', options.listen ?? '127.0.0.1:0');
  const child = spawn(process.execPath, ['-r', EXIT_WITH_PARENT, FERRY_BIN, ...full], {
    stdio: ['ignore', 'ignore', 'pipe', 'pipe'], // fd 3: see exit-with-parent
  });
  let stderr = '';
  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((resolve) =>
    // 'close' rather than 'exit': the last log lines are read by then
    child.on('close', (code) => {
      exitCode = code;
      resolve(code);
    }),
  );
  t.teardown(async () => {
    if (exitCode === undefined) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`ferry serve did not report its address in time; stderr:\n${stderr}`));
    }, options.timeoutMs ?? 15_000);
    let pending = '';
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (text: string) => {
      stderr += text;
      pending += text;
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        const address = servingAddress(line);
        if (address === null) continue;
        clearTimeout(timer);
        const at = address.lastIndexOf(':');
        const host = at > 0 ? address.slice(0, at) : '';
        const port = at > 0 ? Number(address.slice(at + 1)) : 0;
        resolve({
          child,
          pid: child.pid!,
          address,
          host,
          port,
          uri: (name = '') => `nbd://${host}:${port}/${name}`,
          stderr: () => stderr,
          stop: (signal = 'SIGTERM') => {
            if (exitCode === undefined) child.kill(signal);
            return exited;
          },
          exited,
        });
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`ferry serve exited (${code}) before serving; stderr:\n${stderr}`));
    });
  });
}

function servingAddress(line: string): string | null {
  if (!line.includes('"serving"')) return null;
  try {
    const entry = JSON.parse(line) as { msg?: string; address?: string };
    return entry.msg === 'serving' && entry.address ? entry.address : null;
  } catch {
    return null;
  }
}

/** Resident set size of a process in bytes, from /proc/PID/status. */
export function residentBytes(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /VmRSS:\s+(\d+) kB/.exec(status);
  if (!match) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(match[1]) * 1024;
}
