/**
 * A raw image file or block device as a BlockDevice: positional reads and
 * writes, fdatasync for FLUSH and FUA, holes for TRIM and zeroes, SEEK_HOLE
 * for block status. On a block device a "hole" is fallocate(PUNCH_HOLE),
 * which the kernel turns into a discard that must read back as zeros (or
 * refuses); where the device refuses, zeros are written. TRIM zeros too:
 * a block device holds another disk's old bytes, which a trimmed block the
 * VM reads again must never show.
 */
import fs from 'node:fs';
import { BlockDevice, BlockDeviceError, BlockSizeHint, Extent, ExtentFlags, ZeroOptions } from './block-device';
import { fileOps, SEEK_DATA, SEEK_HOLE } from './fileops';
import { blockDeviceGeometry } from './device-geometry';
import { WriteBatcher } from './write-batch';
import { errnoError } from './errno-error';

const ZERO_CHUNK = 1 << 20;
const MAX_STATUS_EXTENTS = 512;
const NOWAIT_MAX = 256 * 1024;
/** Bytes one fallocate call covers before the event loop gets a turn. */
const FALLOCATE_SLICE = 16 << 20;

export interface FileDeviceOptions {
  readOnly?: boolean;
  /** Create the file with this size if it does not exist. */
  createSize?: number;
  /** Mode of a file it creates, applied exactly (default owner-only: a disk image holds a VM's secrets). */
  createMode?: number;
  /** Serve only the first this many bytes of a block device (it may be larger than the image it receives). */
  deviceSize?: number;
}

export class FileDevice implements BlockDevice {
  readonly blockSize: BlockSizeHint = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 };
  readonly canTrim: boolean;
  readonly canFastZero: boolean;
  private closed = false;
  private noWaitWrites = true;
  private readonly batcher: WriteBatcher | null;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    readonly size: number,
    readonly readOnly: boolean,
    /** Logical sector size of a block device; null for a regular file. */
    private readonly sectorSize: number | null,
  ) {
    this.batcher = fileOps && !readOnly ? new WriteBatcher(fd, fileOps, (err) => deviceError(err, 'write')) : null;
    this.canTrim = !readOnly && (fileOps !== null || sectorSize !== null);
    this.canFastZero = !readOnly && fileOps !== null;
  }

  get isBlockDevice(): boolean {
    return this.sectorSize !== null;
  }

  static open(path: string, options: FileDeviceOptions = {}): FileDevice {
    const readOnly = options.readOnly ?? false;
    if (options.createSize !== undefined && !fs.existsSync(path)) {
      const mode = options.createMode ?? 0o600;
      const fd = fs.openSync(path, 'wx', mode);
      fs.fchmodSync(fd, mode);
      fs.ftruncateSync(fd, options.createSize);
      fs.closeSync(fd);
    }
    let fd: number;
    try {
      fd = fs.openSync(path, readOnly ? 'r' : 'r+');
    } catch (e) {
      throw new Error(`cannot open image ${path}: ${(e as Error).message}`, { cause: e });
    }
    try {
      const stat = fs.fstatSync(fd);
      if (stat.isFile()) return new FileDevice(path, fd, stat.size, readOnly, null);
      if (!stat.isBlockDevice()) throw new Error(`image ${path} is neither a regular file nor a block device`);
      const geometry = blockDeviceGeometry(fd, stat, path);
      const size = options.deviceSize ?? geometry.size;
      if (size > geometry.size)
        throw new Error(`block device ${path} has ${geometry.size} bytes, too small for an image of ${size} bytes`);
      return new FileDevice(path, fd, size, readOnly, geometry.logicalBlockSize);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  read(offset: number, into: Buffer): Promise<void> {
    if (this.closed) return Promise.reject(new BlockDeviceError('EIO', `image ${this.path} is closed`));
    // A read the page cache can satisfy is done here and now; only a miss
    // pays for the thread pool (and may wait on the disk there).
    if (fileOps && into.length <= NOWAIT_MAX) {
      const n = fileOps.preadNoWait(this.fd, into, offset);
      if (n === into.length) return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const step = (done: number): void => {
        fs.read(this.fd, into, done, into.length - done, offset + done, (err, n) => {
          if (err) return reject(deviceError(err, 'read'));
          if (n === 0) {
            into.fill(0, done); // a file shorter than its export reads as zeros
            return resolve();
          }
          if (done + n < into.length) return step(done + n);
          resolve();
        });
      };
      step(0);
    });
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.checkWritable();
    // Where the file system takes non-blocking buffered writes (xfs, btrfs), a
    // write the page cache absorbs at once is done here; ext4 refuses them,
    // and after the first refusal every write goes to the thread pool.
    let start = 0;
    if (fileOps && this.noWaitWrites && data.length <= NOWAIT_MAX) {
      const n = fileOps.pwriteNoWait(this.fd, data, offset);
      if (n === -2) this.noWaitWrites = false;
      else if (n === data.length) return fua ? this.flush() : Promise.resolve();
      else if (n > 0) start = n;
    }
    const written = this.batcher
      ? this.batcher.write(start ? data.subarray(start) : data, offset + start)
      : this.writeThroughPool(offset, data, start);
    return fua ? written.then(() => this.flush()) : written;
  }

  private writeThroughPool(offset: number, data: Buffer, start: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const step = (done: number): void => {
        fs.write(this.fd, data, done, data.length - done, offset + done, (err, n) => {
          if (err) return reject(deviceError(err, 'write'));
          if (done + n < data.length) return step(done + n);
          resolve();
        });
      };
      step(start);
    });
  }

  flush(): Promise<void> {
    if (this.closed) return Promise.reject(new BlockDeviceError('EIO', `image ${this.path} is closed`));
    return new Promise((resolve, reject) => {
      fs.fdatasync(this.fd, (err) => (err ? reject(deviceError(err, 'flush')) : resolve()));
    });
  }

  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    this.checkWritable();
    if (this.sectorSize !== null) return this.zero(offset, length, { fua, noHole: false, fastZero: false });
    if (!fileOps) return; // TRIM is advisory; not advertised without the addon
    try {
      await inSlices(offset, length, (at, n) => inPool(fileOps!.punchHoleAsync, this.fd, at, n));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOTSUP') throw deviceError(e as NodeJS.ErrnoException, 'trim');
    }
    if (fua) await this.flush();
  }

  /**
   * Punches a hole at once, on this thread: nothing else can touch the range
   * meanwhile. Throws ENOTSUP where the file system (or a missing addon) cannot.
   */
  zeroNow(offset: number, length: number): void {
    this.punchHoleNow(offset, length);
  }

  punchHoleNow(offset: number, length: number): void {
    this.checkWritable();
    if (!fileOps) throw new BlockDeviceError('ENOTSUP', 'punching holes needs the fileops addon');
    try {
      this.punchHole(offset, length);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw err.code === 'ENOTSUP'
        ? new BlockDeviceError(
            'ENOTSUP',
            `${this.isBlockDevice ? 'this device' : 'this file system'} cannot punch holes`,
          )
        : deviceError(err, 'zero');
    }
  }

  async zero(offset: number, length: number, options: ZeroOptions): Promise<void> {
    this.checkWritable();
    if (fileOps) {
      try {
        const ops = fileOps;
        // A block device zeroes a range by writing it (ZERO_RANGE there may write, and would block this thread).
        if (options.noHole && this.sectorSize !== null)
          throw Object.assign(new Error('allocated zeros are written on a block device'), { code: 'ENOTSUP' });
        // A file's range off the event loop; a block device's partial sectors are written here.
        await inSlices(offset, length, (at, n) =>
          this.sectorSize !== null
            ? this.punchHole(at, n)
            : inPool(options.noHole ? ops.zeroRangeAsync : ops.punchHoleAsync, this.fd, at, n),
        );
        if (options.fua) await this.flush();
        return;
      } catch (e) {
        const err = e as NodeJS.ErrnoException;
        if (err.code !== 'ENOTSUP') throw deviceError(err, 'zero');
      }
    }
    if (options.fastZero) throw new BlockDeviceError('ENOTSUP', 'fast zero is not possible on this file system');
    const zeros = Buffer.alloc(Math.min(length, ZERO_CHUNK));
    for (let done = 0; done < length; done += zeros.length) {
      const n = Math.min(zeros.length, length - done);
      await this.write(offset + done, n === zeros.length ? zeros : zeros.subarray(0, n), false);
    }
    if (options.fua) await this.flush();
  }

  /**
   * fallocate(PUNCH_HOLE). A block device takes only whole sectors: the
   * sectors inside the range are discarded and the partial ones at its edges
   * are written as zeros (a few bytes, synchronously, so that the range reads
   * as zeros when this returns).
   */
  private punchHole(offset: number, length: number): void {
    const ops = fileOps!;
    if (this.sectorSize === null) return ops.punchHole(this.fd, offset, length);
    const end = offset + length;
    const first = Math.ceil(offset / this.sectorSize) * this.sectorSize;
    const last = Math.floor(end / this.sectorSize) * this.sectorSize;
    if (last <= first) return this.writeZerosNow(offset, length);
    ops.punchHole(this.fd, first, last - first);
    if (first > offset) this.writeZerosNow(offset, first - offset);
    if (end > last) this.writeZerosNow(last, end - last);
  }

  private writeZerosNow(offset: number, length: number): void {
    const zeros = Buffer.alloc(length);
    for (let done = 0; done < length;) done += fs.writeSync(this.fd, zeros, done, length - done, offset + done);
  }

  async cache(): Promise<void> {
    // The page cache already holds what was read; nothing to prefetch from.
  }

  async status(offset: number, length: number): Promise<Extent[]> {
    const end = offset + length;
    // A block device has no holes to report (lseek would call all of it data).
    if (!fileOps || this.isBlockDevice) return [{ length, flags: ExtentFlags.None }];
    const extents: Extent[] = [];
    let at = offset;
    try {
      while (at < end && extents.length < MAX_STATUS_EXTENTS) {
        let data = fileOps.seek(this.fd, at, SEEK_DATA);
        if (data < 0 || data > end) data = end;
        if (data > at) {
          extents.push({ length: data - at, flags: ExtentFlags.Hole | ExtentFlags.Zero });
          at = data;
          continue;
        }
        let hole = fileOps.seek(this.fd, at, SEEK_HOLE);
        if (hole < 0 || hole > end) hole = end;
        if (hole <= at) hole = end; // defensive: never loop without progress
        extents.push({ length: hole - at, flags: ExtentFlags.None });
        at = hole;
      }
    } catch {
      if (extents.length === 0) return [{ length, flags: ExtentFlags.None }];
    }
    return extents;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Batched writes still queued or running must never reach a reused descriptor number.
    await this.batcher?.idle();
    await new Promise<void>((resolve) => fs.close(this.fd, () => resolve()));
  }

  private checkWritable(): void {
    // After close the descriptor number may belong to another file: never write through it.
    if (this.closed) throw new BlockDeviceError('EIO', `image ${this.path} is closed`);
    if (this.readOnly) throw new BlockDeviceError('EPERM', 'the image is read-only');
  }
}

/**
 * Runs a synchronous range operation (fallocate) slice by slice, yielding to
 * the event loop between slices: punching 64 MiB of cached data takes tens
 * of milliseconds, so one request for gigabytes must not run in one go.
 * Slice edges fall on multiples of the slice size.
 */
async function inSlices(
  offset: number,
  length: number,
  op: (at: number, n: number) => void | Promise<void>,
): Promise<void> {
  const end = offset + length;
  for (let at = offset; at < end;) {
    const next = Math.min(end, (Math.floor(at / FALLOCATE_SLICE) + 1) * FALLOCATE_SLICE);
    const done = op(at, next - at);
    at = next;
    if (done) await done;
    else if (at < end) await new Promise((resolve) => setImmediate(resolve));
  }
}

/** One of the addon's thread-pool fallocate tasks, as a promise. */
function inPool(
  task: (fd: number, offset: number, length: number, callback: (errno: number) => void) => void,
  fd: number,
  offset: number,
  length: number,
): Promise<void> {
  return new Promise((resolve, reject) =>
    task(fd, offset, length, (errno) => (errno === 0 ? resolve() : reject(errnoError(errno, 'fallocate')))),
  );
}

function deviceError(err: NodeJS.ErrnoException, what: string): BlockDeviceError {
  const errno = err.code === 'ENOSPC' || err.code === 'EDQUOT' ? 'ENOSPC' : 'EIO';
  return new BlockDeviceError(errno, `${what} failed: ${err.message}`);
}
