/**
 * A BlockDevice over another that passes every call and property through
 * unchanged: the base of a layer that changes only some of them (it
 * overrides those and keeps the rest).
 *
 * zeroNow is not passed through: it changes the image, so a layer that
 * watches changes would miss it. A layer offers zeroNow only by defining it
 * itself, and a check such as `if (device.zeroNow)` answers for the layer.
 */
import type { BlockDevice, BlockSizeHint, Extent, ZeroOptions } from './block-device';

export abstract class DelegatingDevice implements BlockDevice {
  constructor(protected readonly inner: BlockDevice) {}

  get size(): number {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  get blockSize(): BlockSizeHint {
    return this.inner.blockSize;
  }
  get canTrim(): boolean {
    return this.inner.canTrim;
  }
  get canFastZero(): boolean {
    return this.inner.canFastZero;
  }

  read(offset: number, into: Buffer): Promise<void> {
    return this.inner.read(offset, into);
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.inner.write(offset, data, fua);
  }

  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.inner.trim(offset, length, fua);
  }

  zero(offset: number, length: number, options: ZeroOptions): Promise<void> {
    return this.inner.zero(offset, length, options);
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  cache(offset: number, length: number): Promise<void> {
    return this.inner.cache(offset, length);
  }

  status(offset: number, length: number): Promise<Extent[]> {
    return this.inner.status(offset, length);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
