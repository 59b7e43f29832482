/**
 * The source image as its VM sees it while a migration copies it: every
 * write, trim and zero is reported to the registered sinks once it has
 * completed and before it is acknowledged, so no write can reach the VM's
 * view of the disk without a destination hearing of it. Once fenced it takes
 * no more writes (EPERM): the destination is the authority from then on.
 */
import type { Logger } from 'pino';
import { BlockDevice, BlockDeviceError, ZeroOptions } from './block-device';
import { DelegatingDevice } from './delegating-device';

/** Told of every range the device's data may have changed in. */
export interface WriteSink {
  markDirty(offset: number, length: number): void;
}

export class TrackingDevice extends DelegatingDevice {
  private readonly sinks = new Set<WriteSink>();
  private fenced = false;
  private inFlight = 0;
  private idleWaiters: Array<() => void> = [];
  /** Writes refused because the device was fenced. */
  refusedWrites = 0;

  constructor(
    inner: BlockDevice,
    private readonly log: Logger,
  ) {
    super(inner);
    if (inner.readOnly) throw new Error('a tracking device needs a writable image');
  }

  override get readOnly(): boolean {
    return false;
  }
  get isFenced(): boolean {
    return this.fenced;
  }

  addSink(sink: WriteSink): void {
    this.sinks.add(sink);
  }

  removeSink(sink: WriteSink): void {
    this.sinks.delete(sink);
  }

  /** Refuses writes from now on and resolves once those already started have completed (and been reported). */
  fence(): Promise<void> {
    this.fenced = true;
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Takes writes again (the migration was abandoned). */
  unfence(): void {
    this.fenced = false;
  }

  override write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.tracked('write', offset, data.length, () => this.inner.write(offset, data, fua));
  }

  override trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.tracked('trim', offset, length, () => this.inner.trim(offset, length, fua));
  }

  override zero(offset: number, length: number, options: ZeroOptions): Promise<void> {
    return this.tracked('zero', offset, length, () => this.inner.zero(offset, length, options));
  }

  private async tracked(what: string, offset: number, length: number, op: () => Promise<void>): Promise<void> {
    if (this.fenced) {
      this.refusedWrites++;
      // A VM still writing here after cutover would diverge from the destination's copy.
      this.log.warn({ op: what, offset, length }, 'refused a write: the source is fenced (cut over to a destination)');
      throw new BlockDeviceError('EPERM', 'the source is fenced: the disk was cut over to a destination');
    }
    this.inFlight++;
    try {
      await op();
    } finally {
      // Even a failed write may have changed some of the range.
      for (const sink of this.sinks) sink.markDirty(offset, length);
      if (--this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
  }
}
