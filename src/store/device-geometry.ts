/**
 * The size of a block device, which fstat reports as 0: from the native
 * addon's ioctls, else from sysfs (/sys/dev/block/MAJOR:MINOR), which counts
 * 512-byte sectors whatever the device's own sector size.
 */
import fs from 'node:fs';
import { fileOps } from './fileops';

export interface BlockDeviceGeometry {
  size: number;
  /** Discard and zeroing ioctls need offsets and lengths aligned to this. */
  logicalBlockSize: number;
}

/** Sector size assumed when neither the addon nor sysfs tells: a multiple of every real one up to 4 KiB. */
const ASSUMED_SECTOR = 4096;

export function blockDeviceGeometry(fd: number, stat: fs.Stats, path: string): BlockDeviceGeometry {
  if (fileOps) {
    try {
      return fileOps.blockDeviceGeometry(fd);
    } catch {
      // fall through to sysfs
    }
  }
  const sys = `/sys/dev/block/${devNumbers(stat.rdev)}`;
  let sectors: number;
  try {
    sectors = Number(fs.readFileSync(`${sys}/size`, 'utf8').trim());
  } catch (e) {
    throw new Error(`cannot find the size of block device ${path} (${sys}/size: ${(e as Error).message})`, {
      cause: e,
    });
  }
  let logicalBlockSize = ASSUMED_SECTOR;
  try {
    logicalBlockSize = Number(fs.readFileSync(`${sys}/queue/logical_block_size`, 'utf8').trim()) || ASSUMED_SECTOR;
  } catch {
    // a partition has no queue directory of its own
  }
  return { size: sectors * 512, logicalBlockSize };
}

/** "MAJOR:MINOR" of a device number (glibc's encoding of dev_t), as /sys/dev/block names it. */
export function devNumbers(rdev: number | bigint): string {
  const dev = BigInt(rdev);
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}
