/**
 * Loads the small native addon for hole punching, SEEK_DATA/SEEK_HOLE,
 * flock(2), block device geometry and SO_RCVLOWAT, which Node lacks. Without it
 * ferry still works: trims are not advertised, zeroing writes zeros, every range
 * reports as data, images are locked with pid files (see image-lock.ts), and a
 * large WRITE payload is read as it arrives.
 */
import path from 'node:path';
import type { Logger } from 'pino';

export interface FileOps {
  punchHole(fd: number, offset: number, length: number): void;
  zeroRange(fd: number, offset: number, length: number): void;
  /** The same two in a thread-pool task (fallocate can wait for the journal); then callback(errno, 0 = done). */
  punchHoleAsync(fd: number, offset: number, length: number, callback: (errno: number) => void): void;
  zeroRangeAsync(fd: number, offset: number, length: number, callback: (errno: number) => void): void;
  /** SEEK_DATA = 3, SEEK_HOLE = 4; returns -1 past the last data. */
  seek(fd: number, offset: number, whence: number): number;
  /** Reads what the page cache holds without blocking; -1 when it would block. */
  preadNoWait(fd: number, buffer: Buffer, position: number): number;
  /** Writes into the page cache without blocking; -1 when it would block, -2 when the file system cannot. */
  pwriteNoWait(fd: number, buffer: Buffer, position: number): number;
  /** Writes every buffer at its position in one thread-pool task; then callback(errno per buffer, 0 = written). */
  writeBatch(fd: number, buffers: Buffer[], positions: number[], callback: (errors: number[]) => void): void;
  /** flock(2) without waiting: true when taken, false when a conflicting lock is held elsewhere. */
  tryLock(fd: number, exclusive: 0 | 1): boolean;
  /** Size in bytes and logical sector size of a block device (BLKGETSIZE64, BLKSSZGET). */
  blockDeviceGeometry(fd: number): { size: number; logicalBlockSize: number };
  /** SO_RCVLOWAT of a socket: it reports readable once that many bytes are queued. */
  setReceiveLowWater(fd: number, bytes: number): void;
}

export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

/** Where `npm install` (native/install.js → node-gyp) puts the addon; from build/src/store. */
export const FILEOPS_ADDON = path.join(__dirname, '..', '..', '..', 'native', 'build', 'Release', 'fileops.node');

/** Every function FileOps has: an addon built from an older source lacks some. */
const FILEOPS_FUNCTIONS = [
  'punchHole',
  'zeroRange',
  'punchHoleAsync',
  'zeroRangeAsync',
  'seek',
  'preadNoWait',
  'pwriteNoWait',
  'writeBatch',
  'tryLock',
  'blockDeviceGeometry',
  'setReceiveLowWater',
] as const satisfies ReadonlyArray<keyof FileOps>;

/** Why a loaded addon cannot serve as FileOps (it is out of date), or null when it can. */
export function fileOpsProblem(addon: unknown): string | null {
  const missing = FILEOPS_FUNCTIONS.filter(
    (name) => typeof (addon as Record<string, unknown> | null)?.[name] !== 'function',
  );
  return missing.length
    ? `${FILEOPS_ADDON} was built from an older source (it lacks ${missing.join(', ')}); npm run build:addon rebuilds it`
    : null;
}

function load(): { ops: FileOps | null; error: string | null } {
  try {
    const addon: unknown = require(FILEOPS_ADDON);
    // Half an addon is worse than none: a missing function would fail every write that needs it.
    const problem = fileOpsProblem(addon);
    return problem ? { ops: null, error: problem } : { ops: addon as FileOps, error: null };
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'MODULE_NOT_FOUND')
      return {
        ops: null,
        error: `${FILEOPS_ADDON} is not built (npm install builds it with node-gyp; it needs python3, make and a C compiler)`,
      };
    return { ops: null, error: `${FILEOPS_ADDON} does not load: ${err.message}` };
  }
}

const loaded = load();
export const fileOps: FileOps | null = loaded.ops;
export const fileOpsError: string | null = loaded.error;

/** What a daemon says once at start-up when it runs without the addon. */
export function warnIfNoFileOps(log: Logger): void {
  if (fileOpsError)
    log.warn(
      { reason: fileOpsError },
      'native file operations unavailable: TRIM not offered, zeroing writes zeros, every range reads as data, no non-blocking cache reads',
    );
}
