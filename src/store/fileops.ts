/**
 * Loads the small native addon for hole punching, SEEK_DATA/SEEK_HOLE and
 * flock(2) and block device geometry, which Node's fs lacks. Without it ferry still works:
 * trims are not advertised, zeroing writes zeros, every range reports as data, and
 * images are locked with pid files (see image-lock.ts).
 */
import path from 'node:path';

export interface FileOps {
  punchHole(fd: number, offset: number, length: number): void;
  zeroRange(fd: number, offset: number, length: number): void;
  /** SEEK_DATA = 3, SEEK_HOLE = 4; returns -1 past the last data. */
  seek(fd: number, offset: number, whence: number): number;
  /** Reads what the page cache holds without blocking; -1 when it would block. */
  preadNoWait(fd: number, buffer: Buffer, position: number): number;
  /** flock(2) without waiting: true when taken, false when a conflicting lock is held elsewhere. */
  tryLock(fd: number, exclusive: 0 | 1): boolean;
  /** Size in bytes and logical sector size of a block device (BLKGETSIZE64, BLKSSZGET). */
  blockDeviceGeometry(fd: number): { size: number; logicalBlockSize: number };
}

export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

function load(): { ops: FileOps | null; error: string | null } {
  const candidates = [
    path.join(__dirname, '..', '..', 'Release', 'fileops.node'), // build/src/store → build/Release
    path.join(__dirname, '..', '..', '..', 'build', 'Release', 'fileops.node'),
  ];
  let error = 'not built';
  for (const candidate of candidates) {
    try {
      return { ops: require(candidate) as FileOps, error: null };
    } catch (e) {
      error = (e as Error).message;
    }
  }
  return { ops: null, error };
}

const loaded = load();
export const fileOps: FileOps | null = loaded.ops;
export const fileOpsError: string | null = loaded.error;
