/** Child processes for the migration bench: spawn on a "host", wait for a log line, sample RSS, clean up. */
import { ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export const FERRY_BIN = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');

const live = new Set<ChildProcess>();
/** Set by killAll: nothing new starts once the bench is shutting down. */
let stopping = false;

export interface Proc {
  name: string;
  child: ChildProcess;
  /** stderr lines seen so far (bounded). */
  lines: string[];
  spawnedAt: number;
  /** Resolves with the wall time (ms) a stderr line containing `text` appeared. */
  waitFor(text: string, timeoutMs: number): Promise<number>;
  stop(): Promise<void>;
}

export function spawnOn(prefix: string[], name: string, argv: string[]): Proc {
  if (stopping) throw new Error(`not starting ${name}: the bench is stopping`);
  const full = [...prefix, ...argv];
  const child = spawn(full[0], full.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  const lines: string[] = [];
  const stamps: number[] = [];
  const waiters: Array<{ text: string; resolve: (t: number) => void }> = [];
  let buf = '';
  const onLine = (line: string): void => {
    const now = Date.now();
    if (lines.length < 2000 || line.includes('migration complete')) {
      lines.push(line);
      stamps.push(now);
    }
    for (let i = waiters.length - 1; i >= 0; i--)
      if (line.includes(waiters[i].text)) {
        waiters[i].resolve(now);
        waiters.splice(i, 1);
      }
  };
  child.stderr!.on('data', (b: Buffer) => {
    buf += b.toString();
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      onLine(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
  });
  child.stdout!.resume();
  child.on('exit', () => live.delete(child));
  const proc: Proc = {
    name,
    child,
    lines,
    spawnedAt: Date.now(),
    waitFor(text, timeoutMs) {
      const hit = lines.findIndex((l) => l.includes(text));
      if (hit >= 0) return Promise.resolve(stamps[hit]);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          reject(new Error(`${name}: no "${text}" within ${timeoutMs} ms; last log: ${lines.slice(-5).join('\n')}`));
        }, timeoutMs);
        const onExit = (code: number | null): void => {
          clearTimeout(timer);
          reject(new Error(`${name} exited (${code}) before "${text}"; last log: ${lines.slice(-5).join('\n')}`));
        };
        child.once('exit', onExit);
        waiters.push({
          text,
          resolve: (t) => {
            clearTimeout(timer);
            child.off('exit', onExit);
            resolve(t);
          },
        });
      });
    },
    stop: () => stopProc(child),
  };
  return proc;
}

export function stopProc(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const kill = setTimeout(() => child.kill('SIGKILL'), 5_000);
    child.once('exit', () => {
      clearTimeout(kill);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/** Kills every child still running (SIGKILL, by pid). For exit and signal handlers. */
export function killAll(): void {
  stopping = true;
  for (const c of live) {
    try {
      c.kill('SIGKILL');
    } catch {
      // gone
    }
  }
}

/** Runs a command to completion; resolves with stdout and wall seconds. */
export function run(
  prefix: string[],
  argv: string[],
  timeoutMs: number,
): Promise<{ out: string; err: string; seconds: number }> {
  const full = [...prefix, ...argv];
  const started = Date.now();
  if (stopping) return Promise.reject(new Error(`not starting ${argv[0]}: the bench is stopping`));
  return new Promise((resolve, reject) => {
    const child = spawn(full[0], full.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(child);
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      live.delete(child);
      if (code !== 0) return reject(new Error(`${full.join(' ')} exited ${code ?? signal}: ${err.slice(-800)}`));
      resolve({ out, err, seconds: (Date.now() - started) / 1000 });
    });
  });
}

/** VmRSS of a process in bytes, or 0 if gone. */
export function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+)\s+kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}
