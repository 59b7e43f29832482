/**
 * The highest resident set size of the processes under test, sampled from
 * /proc every 100 ms while a scenario runs (a sample, not a synchronisation).
 */
import fs from 'node:fs';

export class PeakRss {
  private peak = 0;
  private readonly pids = new Set<number>();
  private readonly timer: NodeJS.Timeout;

  constructor() {
    this.timer = setInterval(() => this.sample(), 100);
    this.timer.unref();
  }

  watch(pid: number | undefined): void {
    if (pid) this.pids.add(pid);
    this.sample();
  }

  /** MiB, one decimal. */
  get peakMiB(): number {
    this.sample();
    return Math.round((this.peak / (1 << 20)) * 10) / 10;
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private sample(): void {
    for (const pid of this.pids) {
      let status: string;
      try {
        status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
      } catch {
        this.pids.delete(pid); // gone
        continue;
      }
      const m = /VmRSS:\s+(\d+) kB/.exec(status);
      if (m) this.peak = Math.max(this.peak, Number(m[1]) * 1024);
    }
  }
}

/** Resolves with the promise's value, or rejects naming `what` once `ms` have passed (a hang). */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new HangError(`${what}: no answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export class HangError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HangError';
  }
}
