/**
 * The one interface every storage layer implements: the NBD server serves a
 * BlockDevice, the migrating destination is a BlockDevice that wraps another.
 * Offsets and lengths are in bytes; callers have already bounds-checked them.
 */

/** NBD_STATE_HOLE / NBD_STATE_ZERO bits of base:allocation. */
export const enum ExtentFlags {
  None = 0,
  Hole = 1,
  Zero = 2,
}

export interface Extent {
  length: number;
  flags: number;
}

export interface ZeroOptions {
  fua: boolean;
  /** Allocate zeros instead of punching a hole (NBD_CMD_FLAG_NO_HOLE). */
  noHole: boolean;
  /** Fail with ENOTSUP rather than fall back to a slow write (NBD_CMD_FLAG_FAST_ZERO). */
  fastZero: boolean;
}

export interface BlockSizeHint {
  minimum: number;
  preferred: number;
  maximum: number;
}

export interface BlockDevice {
  readonly size: number;
  readonly readOnly: boolean;
  readonly blockSize: BlockSizeHint;
  /** Whether trim really frees space (advertised as NBD_FLAG_SEND_TRIM). */
  readonly canTrim: boolean;
  /** Whether zero can be done without writing the bytes (NBD_FLAG_SEND_FAST_ZERO). */
  readonly canFastZero: boolean;
  /** Fills `into` (length bytes) from offset. */
  read(offset: number, into: Buffer): Promise<void>;
  /** `data` is the caller's again once the promise settles (the NBD server reuses it). */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  flush(): Promise<void>;
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  zero(offset: number, length: number, options: ZeroOptions): Promise<void>;
  /** Hint that a range will be read soon (NBD_CMD_CACHE). */
  cache(offset: number, length: number): Promise<void>;
  /**
   * Zeroes a range at once, on the calling thread, without writing the bytes
   * (a punched hole); throws ENOTSUP where it cannot. Optional: a device that
   * has it lets a layer above zero and record a range with no await between.
   */
  zeroNow?(offset: number, length: number): void;
  /** Allocation of [offset, offset+length): at least one extent, none past the end. */
  status(offset: number, length: number): Promise<Extent[]>;
  close(): Promise<void>;
}

/** An error a device reports to the client; errno is the POSIX name NBD maps. */
export class BlockDeviceError extends Error {
  constructor(
    readonly errno: 'EIO' | 'ENOSPC' | 'EINVAL' | 'EPERM' | 'ENOTSUP' | 'ENOMEM' | 'EOVERFLOW' | 'ESHUTDOWN',
    message: string,
  ) {
    super(message);
    this.name = 'BlockDeviceError';
  }
}
