import { EventEmitter } from 'node:events';
import {
  emptyLinkStats,
  type ByteRange,
  type DirtyReport,
  type FetchPriority,
  type LinkStats,
  type Upstream,
  type WriteTracking,
} from '../../src/upstream/upstream';

/** An in-memory source with random fetch delays, optional failures, and a switch to go down. */
export class FakeUpstream extends EventEmitter implements Upstream {
  readonly identity = 'fake:1';
  readonly description = 'fake://source';
  reconnects = 0;
  connected = true;
  readonly tracking: WriteTracking = 'none';
  readonly trackingEpoch = '';
  fetchCalls: Array<{ offset: number; length: number; priority: FetchPriority }> = [];
  /** Fetches that have returned or thrown. */
  fetchesReturned = 0;
  private waiters: Array<() => void> = [];
  private gate: Promise<void> | null = null;

  constructor(
    readonly content: Buffer,
    private readonly delayMs: () => number = () => 0,
    private readonly failOneIn = 0,
  ) {
    super();
  }

  /** What cutover() hands over as the source's final write set. */
  finalSet: ByteRange[] = [];

  cutover(): Promise<DirtyReport> {
    return Promise.resolve({ ranges: this.finalSet, ack: () => undefined });
  }

  get size(): number {
    return this.content.length;
  }

  async fetch(offset: number, length: number, priority: FetchPriority): Promise<Buffer> {
    while (!this.connected) await new Promise<void>((r) => this.waiters.push(r));
    this.fetchCalls.push({ offset, length, priority });
    try {
      const delay = this.delayMs();
      if (delay > 0) await new Promise((r) => setTimeout(r, delay));
      if (this.gate) await this.gate;
      if (this.failOneIn && Math.floor(Math.random() * this.failOneIn) === 0) throw new Error('injected fetch failure');
      if (!this.connected) throw new Error('connection lost');
      return Buffer.from(this.content.subarray(offset, offset + length));
    } finally {
      this.fetchesReturned++;
    }
  }

  /** Buffers handed back by recycle(). */
  recycled = 0;

  /** Scribbles over the buffer, as its reuse by a later fetch would: a device that still served from it would serve garbage. */
  recycle(data: Buffer): void {
    this.recycled++;
    data.fill(0xee);
  }

  /** Fetches waiting for the source to come back (setConnected(true)). */
  get fetchesWaitingForSource(): number {
    return this.waiters.length;
  }

  /** Holds every fetch (started or not) before it returns, until the returned function is called. */
  holdFetches(): () => void {
    let release!: () => void;
    this.gate = new Promise<void>((resolve) => (release = resolve));
    return () => {
      this.gate = null;
      release();
    };
  }

  linkStats(): LinkStats {
    const bytes = this.fetchCalls.reduce((n, c) => n + c.length, 0);
    return { ...emptyLinkStats(), bytesOnWire: bytes, bytesBeforeEncoding: bytes };
  }

  setConnected(up: boolean): void {
    this.connected = up;
    if (up) for (const w of this.waiters.splice(0)) w();
  }

  async reconnect(): Promise<void> {
    this.setConnected(true);
  }

  async close(): Promise<void> {
    this.connected = false;
  }
}
