/**
 * Preloaded into a `ferry dest` by a test (NODE_OPTIONS=--require): once the
 * process receives SIGTERM, every fdatasync of its block map (a file whose
 * name contains ".ferry-state") fails with EIO, as on a disk that died. It
 * makes the destination's final save fail without touching the product.
 */
import fs from 'node:fs';

const stateFds = new Set<number>();
let terminating = false;

// Registered before the daemon's own handler, so it runs first.
process.on('SIGTERM', () => (terminating = true));

const openSync = fs.openSync;
fs.openSync = function (path: fs.PathLike, ...rest: unknown[]): number {
  const fd = (openSync as (...a: unknown[]) => number)(path, ...rest);
  if (String(path).includes('.ferry-state')) stateFds.add(fd);
  return fd;
} as typeof fs.openSync;

const fdatasync = fs.fdatasync;
fs.fdatasync = function (fd: number, callback: fs.NoParamCallback): void {
  if (terminating && stateFds.has(fd)) {
    const err: NodeJS.ErrnoException = new Error('EIO: i/o error, fdatasync');
    err.code = 'EIO';
    err.errno = -5;
    err.syscall = 'fdatasync';
    process.nextTick(callback, err);
    return;
  }
  fdatasync(fd, callback);
} as typeof fs.fdatasync;
