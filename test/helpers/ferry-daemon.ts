/**
 * Starts a long-running ferry command (serve, dest, source) as a child
 * process and waits for its `serving` log line. Killed at teardown.
 */
import { ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { MigrationStatus } from '../../src/migrate/status';
import { run, RunResult } from './run';

const FERRY_BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'ferry.js');
const EXIT_WITH_PARENT = path.join(__dirname, 'exit-with-parent.js');
// The daemons' state directory (a source's image identities): one per test process, so that
// tests run as root leave nothing in /var/lib/ferry, and a restarted source keeps its identity.
const STATE_DIR = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-test-state-'));
process.on('exit', () => fs.rmSync(STATE_DIR, { recursive: true, force: true }));

export interface FerryDaemon {
  child: ChildProcess;
  /** The `serving` log record. */
  serving: Record<string, unknown>;
  stderr(): string;
  /** Resolves when a log line with this msg appears (or rejects after timeoutMs). */
  waitForLog(msg: string | RegExp, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** How many log lines with this msg have appeared so far. */
  logCount(msg: string | RegExp): number;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  exited: Promise<number | null>;
}

interface Teardownable {
  teardown(fn: () => void | Promise<void>): void;
}

export function startFerry(t: Teardownable, args: string[], timeoutMs = 60_000): Promise<FerryDaemon> {
  const child = spawn(process.execPath, ['-r', EXIT_WITH_PARENT, FERRY_BIN, ...args], {
    env: { ...process.env, STATE_DIRECTORY: STATE_DIR },
    stdio: ['ignore', 'ignore', 'pipe', 'pipe'], // fd 3: the daemon goes when the test process does (exit-with-parent)
  });
  let stderr = '';
  let alive = true;
  const records: Array<Record<string, unknown>> = [];
  const listeners = new Set<() => void>();
  const exited = new Promise<number | null>((resolve) =>
    // 'close' rather than 'exit': the last log lines are read by then
    child.on('close', (code) => {
      alive = false;
      resolve(code);
      for (const l of listeners) l();
    }),
  );
  t.teardown(async () => {
    if (alive) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  let pending = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (text: string) => {
    stderr += text;
    pending += text;
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      try {
        records.push(JSON.parse(line));
      } catch {
        records.push({ msg: line });
      }
      for (const l of listeners) l();
    }
  });
  const waitForLog = (msg: string | RegExp, ms = timeoutMs): Promise<Record<string, unknown>> =>
    new Promise((resolve, reject) => {
      const match = (): boolean => {
        const r = records.find((x) => (typeof msg === 'string' ? x.msg === msg : msg.test(String(x.msg))));
        if (r) {
          cleanup();
          resolve(r);
          return true;
        }
        if (!alive) {
          cleanup();
          reject(new Error(`ferry exited before logging "${msg}"; stderr:\n${stderr}`));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`ferry did not log "${msg}" within ${ms} ms; stderr:\n${stderr}`));
      }, ms);
      const cleanup = (): void => {
        clearTimeout(timer);
        listeners.delete(check);
      };
      const check = (): void => void match();
      if (!match()) listeners.add(check);
    });
  return waitForLog('serving').then((serving) => ({
    child,
    serving,
    stderr: () => stderr,
    waitForLog,
    logCount: (msg: string | RegExp) =>
      records.filter((x) => (typeof msg === 'string' ? x.msg === msg : msg.test(String(x.msg)))).length,
    exited,
    stop: async (signal: NodeJS.Signals = 'SIGTERM') => {
      if (alive) child.kill(signal);
      return exited;
    },
  }));
}

/** A loopback port that was free a moment ago. */
/**
 * A free loopback port below the kernel's ephemeral range (32768+), so that a
 * daemon restarted on it cannot find it taken by another test's `:0` listener
 * or outgoing connection in the meantime.
 */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const free = await new Promise<boolean>((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error('no free loopback port between 20000 and 32000');
}

/** The port of a `serving` record's address (host:port). */
export function servingPort(d: FerryDaemon): number {
  const address = String(d.serving.address);
  return Number(address.slice(address.lastIndexOf(':') + 1));
}

/** Runs `ferry ctl --control PATH ARGS…` to completion. */
export function ferryCtl(control: string, ...args: string[]): Promise<RunResult> {
  return run(process.execPath, [FERRY_BIN, 'ctl', '--control', control, ...args], { timeoutMs: 120_000 });
}

/** A destination's status through `ferry ctl status --json`. */
export async function ctlStatus(control: string): Promise<MigrationStatus> {
  const r = await ferryCtl(control, 'status', '--json');
  if (r.code !== 0) throw new Error(`ferry ctl status failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as MigrationStatus;
}
