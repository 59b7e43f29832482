/**
 * Retrying with exponential backoff, and a gate to wait on until something
 * (a connection) is up. Every wait ends early when its AbortSignal fires, so
 * nothing keeps retrying after its owner is closed.
 */
import { setTimeout as sleep } from 'node:timers/promises';

export interface BackoffOptions {
  /** First delay. */
  minMs: number;
  /** Ceiling of the delay. */
  maxMs: number;
  /** Growth per failure (default 2). */
  factor?: number;
}

/** Delays that grow from minMs to maxMs on each failure and start over on success. */
export class Backoff {
  private failures = 0;

  constructor(private readonly options: BackoffOptions) {}

  /** The delay before the next attempt; counts one more failure. */
  next(): number {
    const { minMs, maxMs, factor = 2 } = this.options;
    const ms = Math.min(maxMs, minMs * factor ** Math.min(this.failures, 52));
    this.failures++;
    return ms;
  }

  get attempts(): number {
    return this.failures;
  }

  reset(): void {
    this.failures = 0;
  }
}

/** Waits `ms`; resolves false (at once) if `signal` aborts first, true otherwise. Never rejects. */
export async function pause(ms: number, signal?: AbortSignal): Promise<boolean> {
  if (signal?.aborted) return false;
  try {
    await sleep(ms, undefined, { signal });
    return true;
  } catch {
    return false;
  }
}

export interface RetryOptions extends BackoffOptions {
  signal?: AbortSignal;
  /** Delays to continue from (a connection's, kept across its reconnects); default: a new one from minMs. */
  backoff?: Backoff;
  /** Whether an error is worth another attempt (default: every error). */
  retryable?: (err: unknown) => boolean;
  /** Called before each wait, e.g. to log. */
  onRetry?: (err: unknown, attempt: number, delayMs: number) => void;
}

/**
 * Runs `attempt` until it succeeds, waiting with backoff between failures.
 * Rejects with the last error when it is not retryable, or when `signal`
 * aborts (the owner closed).
 */
export async function retry<T>(attempt: (n: number) => Promise<T>, options: RetryOptions): Promise<T> {
  const backoff = options.backoff ?? new Backoff(options);
  for (let n = 0; ; n++) {
    try {
      return await attempt(n);
    } catch (err) {
      if (options.signal?.aborted || (options.retryable && !options.retryable(err))) throw err;
      const ms = backoff.next();
      options.onRetry?.(err, n, ms);
      if (!(await pause(ms, options.signal))) throw err;
    }
  }
}

/**
 * Something that is open or shut (a connection that is up or down). wait()
 * resolves while it is open, at once or when it opens; it rejects when the
 * gate is closed for good.
 */
export class Gate {
  private waiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  private state: 'open' | 'shut' | 'closed' = 'shut';
  private closedWith: Error | null = null;

  get isOpen(): boolean {
    return this.state === 'open';
  }

  open(): void {
    if (this.state === 'closed') return;
    this.state = 'open';
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.resolve();
  }

  shut(): void {
    if (this.state === 'open') this.state = 'shut';
  }

  /** Ends the gate: every present and future wait rejects with `reason`. */
  close(reason: Error): void {
    this.state = 'closed';
    this.closedWith = reason;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.reject(reason);
  }

  wait(): Promise<void> {
    if (this.state === 'open') return Promise.resolve();
    if (this.state === 'closed') return Promise.reject(this.closedWith!);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }
}
