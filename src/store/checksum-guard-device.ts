/**
 * The destination's image as everything that changes it sees it: every
 * write, zero and trim (whatever issues it: the VM, a landing fetch, a seed,
 * a hole) drops the landed checksums of the blocks it touches before it is
 * issued, and marks them changed once it is done. No change can reach the
 * image around it, so no checksum outlives a change to its block.
 */
import type { BlockDevice, ZeroOptions } from './block-device';
import { DelegatingDevice } from './delegating-device';
import type { LandedChecksums } from './landed-checksums';

export class ChecksumGuardDevice extends DelegatingDevice {
  readonly zeroNow?: (offset: number, length: number) => void;

  constructor(
    inner: BlockDevice,
    private readonly record: LandedChecksums,
    private readonly bs: number,
  ) {
    super(inner);
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

  override write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.guarded(offset, data.length, () => this.inner.write(offset, data, fua));
  }

  override trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.guarded(offset, length, () => this.inner.trim(offset, length, fua));
  }

  override zero(offset: number, length: number, options: ZeroOptions): Promise<void> {
    return this.guarded(offset, length, () => this.inner.zero(offset, length, options));
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
