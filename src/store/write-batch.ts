/**
 * Positional writes gathered over one turn of the event loop and handed to
 * the thread pool as one task (the fileops addon's writeBatch). A task per
 * write costs a thread wake-up each way, which on a virtual machine costs
 * more than a 4 KiB write itself; the writes of one batch share it. Large
 * writes still get a task each, so they keep running in parallel.
 */
import type { FileOps } from './fileops';
import { errnoError } from './errno-error';

/** A batch is sent at once when its bytes reach this (and at the end of the turn otherwise). */
const BATCH_BYTES = 256 * 1024;

export class WriteBatcher {
  private buffers: Buffer[] = [];
  private positions: number[] = [];
  private settles: Array<(err: Error | null) => void> = [];
  private bytes = 0;
  private scheduled = false;
  private outstanding = 0;
  private idleWaiters: Array<() => void> = [];
  private readonly submit = (): void => {
    this.scheduled = false;
    this.send();
  };

  constructor(
    private readonly fd: number,
    private readonly ops: Pick<FileOps, 'writeBatch'>,
    /** What a failed write rejects with, from its errno. */
    private readonly toError: (err: NodeJS.ErrnoException) => Error,
  ) {}

  /** Writes all of `data` at `position`; settles when it is in the file (or failed, with its errno). */
  write(data: Buffer, position: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.buffers.push(data);
      this.positions.push(position);
      this.settles.push((err) => (err ? reject(err) : resolve()));
      this.bytes += data.length;
      if (this.bytes >= BATCH_BYTES) this.send();
      else if (!this.scheduled) {
        this.scheduled = true;
        // After the current callback and its promise reactions: every write
        // the requests decoded from one socket read start in that time.
        process.nextTick(this.submit);
      }
    });
  }

  /** Resolves once no batch is queued or running (before the descriptor may be closed). */
  idle(): Promise<void> {
    if (this.outstanding === 0 && this.buffers.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private send(): void {
    if (this.buffers.length === 0) return;
    const settles = this.settles;
    const buffers = this.buffers;
    const positions = this.positions;
    this.buffers = [];
    this.positions = [];
    this.settles = [];
    this.bytes = 0;
    this.outstanding++;
    this.ops.writeBatch(this.fd, buffers, positions, (errors) => {
      this.outstanding--;
      for (let i = 0; i < settles.length; i++)
        settles[i](errors[i] ? this.toError(errnoError(errors[i], 'pwrite')) : null);
      if (this.outstanding === 0 && this.buffers.length === 0) for (const wake of this.idleWaiters.splice(0)) wake();
    });
  }
}
