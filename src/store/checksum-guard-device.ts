/**
 * The destination's image as everything that changes it sees it: every
 * write, zero and trim (whatever issues it: the VM, a landing fetch, a seed,
 * a hole) drops the landed checksums of the blocks it touches before it is
 * issued, and marks them changed once it is done. No change can reach the
 * image around it, so no checksum outlives a change to its block.
 */
import type { BlockDevice, BlockSizeHint, Extent, ZeroOptions } from './block-device';
import type { LandedChecksums } from './landed-checksums';

export class ChecksumGuardDevice implements BlockDevice {
  readonly zeroNow?: (offset: number, length: number) => void;

  constructor(
    private readonly inner: BlockDevice,
    private readonly record: LandedChecksums,
    private readonly bs: number,
  ) {
    const zeroNow = inner.zeroNow?.bind(inner);
    if (zeroNow)
      this.zeroNow = (offset, length) => {
        const [first, count] = this.blocksOf(offset, length);
        this.record.changing(first, count);
        let ok = false;
        try {
          zeroNow(offset, length);
          ok = true;
        } finally {
          this.record.changed(first, count, ok);
        }
      };
  }

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
    return this.guarded(offset, data.length, () => this.inner.write(offset, data, fua));
  }

  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.guarded(offset, length, () => this.inner.trim(offset, length, fua));
  }

  zero(offset: number, length: number, options: ZeroOptions): Promise<void> {
    return this.guarded(offset, length, () => this.inner.zero(offset, length, options));
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

  private async guarded(offset: number, length: number, op: () => Promise<void>): Promise<void> {
    if (length <= 0) return op();
    const [first, count] = this.blocksOf(offset, length);
    this.record.changing(first, count);
    let ok = false;
    try {
      await op();
      ok = true;
    } finally {
      // Even a failed change may have reached part of the range: its entries are gone either way.
      this.record.changed(first, count, ok);
    }
  }

  private blocksOf(offset: number, length: number): [number, number] {
    const first = Math.floor(offset / this.bs);
    return [first, Math.floor((offset + Math.max(length, 1) - 1) / this.bs) - first + 1];
  }
}
