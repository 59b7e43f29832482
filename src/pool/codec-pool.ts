// A Piscina pool of kernel workers with two priorities and a bounded queue.
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Piscina } from 'piscina';
import {
  type BlockEntry,
  type BlockStatus,
  type DecodedBatch,
  type EncodedBatch,
  checkBlockSize,
} from '../codec/batch';
import type { EncodedColumns, DecodedColumns, HashedColumns } from '../codec/batch-codec';
import { isCodecName, codecNames } from '../codec/registry';
import { PoolClosedError, QueueFullError, WorkerCrashError } from './errors';
import { PriorityTaskQueue } from './priority-queue';
import { executeTask, taskBytes } from './task-runner';
import type { CodecSelection, WorkerTask } from './tasks';
import { reapplyHeapLimits } from '../util/heap-growth';
import type { Logger } from 'pino';

/** Young generation of each worker's heap (V8's default grows to 3 × 16 MiB). */
const WORKER_YOUNG_GENERATION_MB = 2;

export interface CodecPoolOptions {
  /** Worker threads (default: available cores). */
  workers?: number;
  /**
   * The workers start with the first task that needs one and stop once no
   * task has come for this long (default 30 s; Infinity: never): a pool
   * nobody uses costs no threads, and a migration's workers leave once its
   * copy is done (each is 8–10 MiB of resident memory).
   */
  idleWorkerMs?: number;
  /** Background batches that may wait for a worker (default 4 per worker). */
  maxQueued?: number;
  /** Urgent tasks that may wait (default: maxQueued); urgent never waits behind background. */
  maxUrgentQueued?: number;
  /** Codec for encode (and the LZ4 decoder used by decode): none | lz4 | lz4-wasm | deflate. */
  codec?: string;
  /** Deflate level 0..9 (default 6). */
  level?: number;
  /** LZ4 acceleration >= 1 (default 1). */
  acceleration?: number;
  /** Path of kernels.wasm (default build/kernels.wasm). */
  kernelPath?: string;
  /**
   * Tasks handed to each worker at once (default 1). With 1 an urgent task
   * waits only for the batches already running; with 2 the next batch already
   * waits inside the worker (no idle round trip between batches: about +20%
   * for one worker in our measurements), but an urgent task may then also wait
   * behind one more background batch per worker.
   */
  pipelineDepth?: number;
  /**
   * Urgent tasks of at most this many bytes run on the calling thread at once
   * (default 64 KiB; 0 = never): a single block a VM waits for costs
   * microseconds to code, far less than waiting for a worker busy with a
   * background batch. While the workers are stopped, every urgent task runs
   * there rather than wait for them to start (unless this is 0).
   */
  inlineUrgentBytes?: number;
  /**
   * Niceness of the worker threads (0..19, default 0): above 0 they yield the
   * cores to the main thread, which serves the VM and codes its urgent blocks,
   * and to the rest of the host.
   */
  workerNice?: number;
  /** Where a worker that fails outside a task (at start-up, most often) is logged; the pool carries on. */
  log?: Pick<Logger, 'error'>;
  /**
   * The worker module (default: this folder's worker.js). Another module must
   * export a default task function that answers like src/pool/worker.ts.
   */
  workerModule?: string;
}

export interface TaskOptions {
  /** A VM is waiting for this: run it before any queued background batch. */
  urgent?: boolean;
  /** encode only: this codec instead of the pool's (the source's `auto` choice varies by batch). */
  codec?: string;
}

/**
 * An encoded batch. `payload` is a view at the start of the buffer that held
 * the input blocks: the input's memory is recycled for the output.
 */
export type EncodeResult = EncodedBatch & {
  /** Milliseconds the worker spent encoding (queueing excluded). */
  workerMs: number;
};

export interface HashResult {
  blockSize: number;
  checksums: bigint[];
  /** true where the block is all zeros. */
  zero: boolean[];
  /** The input buffer, handed back. */
  blocks: ArrayBuffer;
}

export class CodecPool {
  readonly workers: number;
  readonly idleWorkerMs: number;
  readonly maxQueued: number;
  readonly maxUrgentQueued: number;
  readonly codec: string;
  readonly pipelineDepth: number;
  readonly workerNice: number;
  /** whenNotFull callers, woken when a background slot frees. */
  private readonly roomWaiters: Array<() => void> = [];
  private readonly urgentWaiters: Array<() => void> = [];
  readonly inlineUrgentBytes: number;
  private readonly selection: CodecSelection;
  /** Tasks waiting for a worker; a new one each time the workers start, so stopping ones take nothing from it. */
  private queue = this.newQueue();
  private readonly workerModule: string;
  /** The running workers; null while stopped. */
  private piscina: Piscina | null = null;
  /** Tasks handed to the workers and not settled. */
  private inFlight = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  /** Workers being stopped after idling: close() waits for them. */
  private readonly stopping = new Set<Promise<void>>();
  private closing: Promise<void> | undefined;
  /** Worker sets retired because a worker failed outside a task, with that failure. */
  private readonly failedStarts = new WeakMap<Piscina, Error>();
  private readonly log: Pick<Logger, 'error'> | undefined;

  constructor(options: CodecPoolOptions = {}) {
    this.workers = options.workers ?? Math.max(1, availableParallelism());
    this.idleWorkerMs = options.idleWorkerMs ?? 30_000;
    if (!(this.idleWorkerMs >= 0)) {
      throw new RangeError(`CodecPool: idleWorkerMs must be a number >= 0 or Infinity (got ${this.idleWorkerMs})`);
    }
    this.maxQueued = options.maxQueued ?? 4 * this.workers;
    this.maxUrgentQueued = options.maxUrgentQueued ?? this.maxQueued;
    this.codec = options.codec ?? 'lz4';
    this.pipelineDepth = options.pipelineDepth ?? 1;
    this.workerNice = options.workerNice ?? 0;
    if (!Number.isInteger(this.workerNice) || this.workerNice < 0 || this.workerNice > 19)
      throw new RangeError(`CodecPool: workerNice must be an integer from 0 to 19 (got ${options.workerNice})`);
    this.inlineUrgentBytes = options.inlineUrgentBytes ?? 64 << 10;
    for (const [key, value] of [
      ['workers', this.workers],
      ['maxQueued', this.maxQueued],
      ['maxUrgentQueued', this.maxUrgentQueued],
      ['pipelineDepth', this.pipelineDepth],
      ['inlineUrgentBytes', this.inlineUrgentBytes],
    ] as const) {
      const min = key === 'workers' || key === 'pipelineDepth' ? 1 : 0;
      if (!Number.isInteger(value) || value < min) {
        throw new RangeError(`CodecPool: ${key} must be an integer >= ${min} (got ${value})`);
      }
    }
    if (!isCodecName(this.codec)) {
      throw new RangeError(`CodecPool: unknown codec "${this.codec}" (known: ${codecNames().join(', ')})`);
    }
    this.selection = {
      codec: this.codec,
      level: options.level,
      acceleration: options.acceleration,
      kernelPath: options.kernelPath,
    };
    this.workerModule = options.workerModule ?? join(__dirname, 'worker.js');
    this.log = options.log;
  }

  /** Worker threads running now: 0 while stopped, else `workers`. */
  get runningWorkers(): number {
    return this.piscina?.threads.length ?? 0;
  }

  private newQueue(): PriorityTaskQueue {
    const queue = new PriorityTaskQueue();
    queue.onShift = () => {
      if (this.urgentWaiters.length && queue.urgentSize < this.maxUrgentQueued)
        for (const wake of this.urgentWaiters.splice(0)) wake();
      if (this.isFull || this.roomWaiters.length === 0) return;
      // Every waiter retries; those that find the queue full again wait again.
      const waiters = this.roomWaiters.splice(0);
      for (const wake of waiters) wake();
    };
    return queue;
  }

  private startWorkers(): Piscina {
    // The stopped workers' queue is empty: they stopped with no task in flight.
    this.queue = this.newQueue();
    const piscina = new Piscina({
      filename: this.workerModule,
      workerData: { nice: this.workerNice },
      // All at once, marked ready from the start: tasks go to them as they boot, and never wait
      // in the queue (counted against its bound) for a worker to start.
      minThreads: this.workers,
      maxThreads: this.workers,
      idleTimeout: Infinity,
      taskQueue: this.queue,
      // A task Piscina cannot dispatch goes back to the front, keeping FIFO order.
      stricterFIFO: true,
      // Piscina's own bound counts both priorities; ours are separate.
      maxQueue: Infinity,
      concurrentTasksPerWorker: this.pipelineDepth,
      // Measured on the main thread with batches in flight: plain message
      // ports cost less per task than Atomics wake-ups, and the timing
      // histograms are not used.
      atomics: 'disabled',
      recordTiming: false,
      // A worker's heap holds a task's small column arrays and little else; left
      // to grow, V8's young generation takes up to 48 MiB per worker, and the
      // zlib objects of a deflate batch keep it busy (docs/benchmarks.md, "Memory").
      resourceLimits: { maxYoungGenerationSizeMb: WORKER_YOUNG_GENERATION_MB },
    });
    // A starting worker resets the process's V8 flags, the main thread's heap limits among them.
    for (const worker of piscina.threads) worker.once('online', reapplyHeapLimits);
    piscina.on('workerCreate', reapplyHeapLimits); // a replacement, online by now
    piscina.on('error', (err: Error) => {
      this.workerFailed(err);
      this.retireIfShort(piscina, err);
    });
    return piscina;
  }

  private workerFailed(err: Error): void {
    this.log?.error({ err: err.message }, 'a codec worker failed; the pool starts new workers for the next batch');
  }

  /**
   * Piscina replaces a worker that failed while running, but not one that
   * failed while starting (with a task of its own or not), and tasks queued
   * for workers that never come would wait for ever. A set short of workers
   * is retired: its queued tasks fail (WorkerCrashError, naming the cause),
   * and the next task starts a new set. Returns whether `piscina` is retired.
   */
  private retireIfShort(piscina: Piscina, err: Error): boolean {
    if (this.failedStarts.has(piscina)) return true;
    if (this.closing || piscina.threads.length >= this.workers) return false;
    this.failedStarts.set(piscina, err);
    if (this.piscina === piscina) this.piscina = null;
    const stopped = piscina.destroy().finally(() => this.stopping.delete(stopped));
    this.stopping.add(stopped);
    return true;
  }

  /**
   * Starts the workers now, for a caller that will need them soon (their start
   * then overlaps its own); they stop again after idleWorkerMs without a task.
   */
  warm(): void {
    if (this.piscina || this.closing) return;
    this.piscina = this.startWorkers();
    if (this.inFlight === 0) this.armIdleTimer();
  }

  private armIdleTimer(): void {
    clearTimeout(this.idleTimer);
    if (Number.isFinite(this.idleWorkerMs) && !this.closing)
      this.idleTimer = setTimeout(() => this.stopIdleWorkers(), this.idleWorkerMs).unref();
  }

  /** No task came for idleWorkerMs: the workers go until the next one. */
  private stopIdleWorkers(): void {
    const piscina = this.piscina;
    if (!piscina || this.inFlight > 0 || this.closing) return;
    this.piscina = null;
    const stopped = piscina.close().finally(() => this.stopping.delete(stopped));
    this.stopping.add(stopped);
  }

  /** True when a background task would be refused now (backpressure). */
  get isFull(): boolean {
    return this.queue.backgroundSize >= this.maxQueued;
  }

  /** Tasks waiting for a worker, by priority. */
  get queued(): { urgent: number; background: number } {
    return { urgent: this.queue.urgentSize, background: this.queue.backgroundSize };
  }

  /** Resolves once a background task would be accepted. */
  whenNotFull(): Promise<void> {
    if (!this.isFull) return Promise.resolve();
    // A list, not event listeners: every batch in flight may wait here at once (hundreds with no rate limit).
    return new Promise((resolve) => this.roomWaiters.push(resolve));
  }

  /** Resolves once a task of this priority would be accepted (the urgent queue has its own bound). */
  whenAccepting(urgent: boolean): Promise<void> {
    if (!urgent) return this.whenNotFull();
    const room = (): boolean => this.queue.urgentSize < this.maxUrgentQueued;
    if (room()) return Promise.resolve();
    // Callers re-check on waking: another may have taken the room first.
    return new Promise((resolve) => this.urgentWaiters.push(resolve));
  }

  /**
   * Encodes `count = blocks.byteLength / blockSize` blocks. `blocks` is
   * transferred to a worker (detached here) and comes back holding the
   * payload: `result.payload` is a view at its start.
   */
  async encode(blocks: ArrayBuffer, blockSize: number, options: TaskOptions = {}): Promise<EncodeResult> {
    checkBlockSize(blockSize, 'CodecPool.encode');
    if (options.codec && !isCodecName(options.codec)) {
      throw new RangeError(`CodecPool.encode: unknown codec "${options.codec}" (known: ${codecNames().join(', ')})`);
    }
    const r = (await this.run(
      { op: 'encode', ...this.selection, ...(options.codec ? { codec: options.codec } : {}), blocks, blockSize },
      [blocks],
      options,
      `encode of ${blocks.byteLength / blockSize} blocks`,
    )) as EncodedColumns & { workerMs: number };
    const entries: BlockEntry[] = new Array(r.encodings.length);
    for (let i = 0; i < entries.length; i++) {
      entries[i] = { encoding: r.encodings[i], checksum: r.checksums[i], length: r.lengths[i] };
    }
    return { blockSize, entries, payload: r.payload, workerMs: r.workerMs };
  }

  /**
   * Decodes a batch and verifies every block's checksum. A block that fails is
   * reported in `failed` (by index) and `status`; the others are good.
   * The whole buffer under `batch.payload` is transferred to the worker
   * (detached here); when it holds at least count × blockSize bytes the
   * blocks come back in it, else in a new buffer.
   */
  async decode(batch: EncodedBatch, options: TaskOptions = {}): Promise<DecodedBatch> {
    checkBlockSize(batch.blockSize, 'CodecPool.decode');
    const n = batch.entries.length;
    const encodings = new Uint8Array(n);
    const lengths = new Uint32Array(n);
    const checksums = new BigUint64Array(n);
    for (let i = 0; i < n; i++) {
      const e = batch.entries[i];
      encodings[i] = e.encoding;
      lengths[i] = e.length;
      checksums[i] = e.checksum;
    }
    const { buffer, byteOffset, byteLength } = batch.payload;
    if (!(buffer instanceof ArrayBuffer))
      throw new TypeError('CodecPool.decode: payload must be backed by an ArrayBuffer');
    const r = (await this.run(
      {
        op: 'decode',
        ...this.selection,
        payload: buffer,
        payloadOffset: byteOffset,
        payloadLength: byteLength,
        blockSize: batch.blockSize,
        encodings,
        lengths,
        checksums,
      },
      [buffer, encodings.buffer, lengths.buffer, checksums.buffer],
      options,
      `decode of ${n} blocks`,
    )) as DecodedColumns;
    const status = Array.from(r.status) as BlockStatus[];
    const failed: number[] = [];
    status.forEach((s, i) => {
      if (s !== 0) failed.push(i);
    });
    return { blockSize: batch.blockSize, blocks: r.blocks, status, failed };
  }

  /** Checksums and zero flags only (for dedupe and seeding manifests). */
  async hash(blocks: ArrayBuffer, blockSize: number, options: TaskOptions = {}): Promise<HashResult> {
    checkBlockSize(blockSize, 'CodecPool.hash');
    const r = (await this.run(
      { op: 'hash', ...this.selection, blocks, blockSize },
      [blocks],
      options,
      `hash of ${blocks.byteLength / blockSize} blocks`,
    )) as HashedColumns & { blocks: ArrayBuffer };
    return {
      blockSize,
      checksums: Array.from(r.checksums),
      zero: Array.from(r.zero, (z) => z === 1),
      blocks: r.blocks,
    };
  }

  /**
   * Stops the pool. By default queued work finishes first; with
   * `cancelQueued` queued tasks fail with PoolClosedError and only running
   * ones finish. New tasks are refused from the moment close() is called.
   */
  close(options: { cancelQueued?: boolean } = {}): Promise<void> {
    clearTimeout(this.idleTimer);
    this.closing ??= Promise.all([
      this.piscina?.close({ force: options.cancelQueued === true }),
      ...this.stopping,
    ]).then(() => undefined);
    // Waiters retry and are refused now, instead of waiting for room that never comes.
    for (const wake of this.roomWaiters.splice(0)) wake();
    for (const wake of this.urgentWaiters.splice(0)) wake();
    return this.closing;
  }

  private async run(
    task: WorkerTask,
    transferList: ArrayBuffer[],
    options: TaskOptions,
    what: string,
  ): Promise<unknown> {
    if (this.closing) throw new PoolClosedError(`CodecPool: pool is closed, refusing ${what}`);
    const urgent = options.urgent === true;
    if (urgent && this.inlineUrgentBytes > 0) {
      // Starting the workers takes longer than coding a batch here.
      if (taskBytes(task) <= this.inlineUrgentBytes || !this.piscina) return executeTask(task).value;
    }
    if (urgent ? this.queue.urgentSize >= this.maxUrgentQueued : this.isFull) {
      throw new QueueFullError(
        `CodecPool: ${urgent ? 'urgent' : 'background'} queue is full (${urgent ? this.maxUrgentQueued : this.maxQueued} waiting), refusing ${what}`,
      );
    }
    const queued = Object.assign(task, { [Piscina.queueOptionsSymbol]: { urgent } });
    const piscina = (this.piscina ??= this.startWorkers());
    this.inFlight++;
    clearTimeout(this.idleTimer);
    try {
      return await piscina.run(queued, { transferList });
    } catch (err) {
      const e = err as Error;
      const known = this.failedStarts.has(piscina);
      if (this.retireIfShort(piscina, e)) {
        if (!known && this.failedStarts.get(piscina) === e) this.workerFailed(e); // no 'error' event for this one
        throw new WorkerCrashError(
          `CodecPool: a worker failed (${this.failedStarts.get(piscina)!.message}) before ${what} ran; new workers start with the next task, retry it`,
          { cause: e },
        );
      }
      if (/^worker exited with code/.test(e.message)) {
        throw new WorkerCrashError(
          `CodecPool: worker crashed during ${what} (${e.message}); it was replaced, retry the task`,
          {
            cause: e,
          },
        );
      }
      if (e.name === 'AbortError' && this.closing) {
        throw new PoolClosedError(`CodecPool: pool closed before ${what} ran`, { cause: e });
      }
      throw e;
    } finally {
      if (--this.inFlight === 0) this.armIdleTimer();
    }
  }
}
