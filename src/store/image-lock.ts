/**
 * One image, one owner: an advisory lock taken on an image (and on a
 * destination's state file) before it is opened, so that two processes never
 * write one image. Writers lock exclusively; read-only servers share.
 *
 * With the native addon the lock is flock(2) on a descriptor of the file
 * itself: the kernel drops it when the process dies, kill -9 included, and
 * the holder's pid for the refusal is read from /proc/locks. Without the
 * addon it is a pid file, PATH.ferry-lock, created atomically; one left by a
 * dead process is noticed (no such pid) and replaced. In that mode shared
 * locks exclude each other too.
 */
import fs from 'node:fs';
import { fileOps, type FileOps } from './fileops';

export type LockMode = 'shared' | 'exclusive';

/** Undoes the lock; calling it again does nothing. */
export type ReleaseLock = () => void;

export class ImageLockedError extends Error {
  constructor(
    readonly path: string,
    /** Processes holding the lock, when they can be told. */
    readonly holders: number[],
    message: string,
  ) {
    super(message);
    this.name = 'ImageLockedError';
  }
}

/** How locks are taken: flock through the addon, or pid files. */
export type LockBackend = { kind: 'flock'; ops: Pick<FileOps, 'tryLock'> } | { kind: 'pid-file' };

export const defaultLockBackend: LockBackend = fileOps ? { kind: 'flock', ops: fileOps } : { kind: 'pid-file' };

/** Locks `path` (which must exist) or throws ImageLockedError naming the holder. */
export function lockImage(path: string, mode: LockMode, backend: LockBackend = defaultLockBackend): ReleaseLock {
  return backend.kind === 'flock' ? flockFile(backend.ops, path, mode) : pidFileLock(path);
}

/**
 * Throws the refusal lockImage would give when another process holds `path`
 * (naming it and its holder), and otherwise holds nothing: so that a
 * newcomer is told who owns an image before any other check speaks of it.
 * A path that does not exist passes.
 */
export function refuseIfHeld(
  path: string,
  mode: LockMode = 'exclusive',
  backend: LockBackend = defaultLockBackend,
): void {
  if (!fs.existsSync(path)) return;
  let release: ReleaseLock;
  try {
    release = lockImage(path, mode, backend);
  } catch (e) {
    if (e instanceof ImageLockedError) throw e;
    return; // cannot be opened to be locked: the owner's own open says why
  }
  release();
}

/** Locks each path in order; on a refusal the ones already taken are released. */
export function lockImages(paths: string[], mode: LockMode, backend: LockBackend = defaultLockBackend): ReleaseLock {
  const taken: ReleaseLock[] = [];
  try {
    for (const p of paths) taken.push(lockImage(p, mode, backend));
  } catch (e) {
    for (const release of taken.reverse()) release();
    throw e;
  }
  return () => {
    for (const release of taken.reverse().splice(0)) release();
  };
}

function refusal(path: string, holders: number[], holderMode: string): ImageLockedError {
  const who = holders.length ? `pid ${holders.join(', pid ')}` : 'another process (its pid is not visible here)';
  return new ImageLockedError(
    path,
    holders,
    `${path} is in use by ${who}, which holds ${holderMode} lock on it; ` +
      'one image has one owner: stop that process first, or choose another image',
  );
}

function flockFile(ops: Pick<FileOps, 'tryLock'>, path: string, mode: LockMode): ReleaseLock {
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (e) {
    throw new Error(`cannot lock ${path}: ${(e as Error).message}`, { cause: e });
  }
  let taken: boolean;
  try {
    taken = ops.tryLock(fd, mode === 'exclusive' ? 1 : 0);
  } catch (e) {
    fs.closeSync(fd);
    throw new Error(`cannot lock ${path}: ${(e as Error).message}`, { cause: e });
  }
  if (!taken) {
    const holders = flockHolders(fd);
    fs.closeSync(fd);
    const kinds = new Set(holders.map((h) => h.mode));
    const holderMode = kinds.size === 1 && kinds.has('shared') ? 'a shared' : 'an exclusive';
    return throwing(refusal(path, [...new Set(holders.map((h) => h.pid))], holderMode));
  }
  let released = false;
  return () => {
    if (released) return;
    released = true;
    fs.closeSync(fd); // the last descriptor of this open file: the kernel drops the lock
  };
}

function throwing(e: Error): never {
  throw e;
}

/** Holders of flock locks on the file behind `fd`, from /proc/locks (empty where it cannot be read). */
function flockHolders(fd: number): Array<{ pid: number; mode: LockMode }> {
  let table: string;
  try {
    table = fs.readFileSync('/proc/locks', 'utf8');
  } catch {
    return [];
  }
  const st = fs.fstatSync(fd, { bigint: true });
  // /proc/locks names the file as MAJOR:MINOR:INODE, the device numbers in hex.
  const major = ((st.dev >> 8n) & 0xfffn) | ((st.dev >> 32n) & ~0xfffn);
  const minor = (st.dev & 0xffn) | ((st.dev >> 12n) & ~0xffn);
  const holders: Array<{ pid: number; mode: LockMode }> = [];
  for (const line of table.split('\n')) {
    // "1: FLOCK  ADVISORY  WRITE 4781 fe:00:2147002 0 EOF"; waiters ("1: -> FLOCK …") hold nothing.
    const m = /^\d+:\s+FLOCK\s+\S+\s+(READ|WRITE)\s+(\d+)\s+([0-9a-f]+):([0-9a-f]+):(\d+)\s/.exec(line);
    if (!m) continue;
    if (BigInt(m[5]) !== st.ino || BigInt('0x' + m[3]) !== major || BigInt('0x' + m[4]) !== minor) continue;
    const pid = Number(m[2]);
    if (pid > 0) holders.push({ pid, mode: m[1] === 'READ' ? 'shared' : 'exclusive' });
  }
  return holders;
}

const pidFilesHeld = new Set<string>();
let exitHookInstalled = false;

function pidFileLock(path: string): ReleaseLock {
  const lockPath = `${path}.ferry-lock`;
  for (let attempt = 0; ; attempt++) {
    if (createPidFile(lockPath)) break;
    const holder = readPid(lockPath);
    if (holder !== null && isAlive(holder)) return throwing(refusal(path, [holder], 'a pid-file'));
    if (attempt >= 2) return throwing(refusal(path, holder === null ? [] : [holder], 'a pid-file'));
    removeStale(lockPath, holder);
  }
  pidFilesHeld.add(lockPath);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const p of pidFilesHeld) removeIfOurs(p);
    });
  }
  let released = false;
  return () => {
    if (released) return;
    released = true;
    pidFilesHeld.delete(lockPath);
    removeIfOurs(lockPath);
  };
}

/** Writes our pid to a private file and links it into place: the lock file never exists half-written. */
function createPidFile(lockPath: string): boolean {
  const temp = `${lockPath}.${process.pid}.${Date.now()}`;
  fs.writeFileSync(temp, `${process.pid}\n`, { mode: 0o600, flag: 'wx' });
  try {
    fs.linkSync(temp, lockPath);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    return false;
  } finally {
    fs.rmSync(temp, { force: true });
  }
}

function readPid(lockPath: string): number | null {
  try {
    const pid = Number(fs.readFileSync(lockPath, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // it exists, under another user
  }
}

/** Moves a dead holder's file aside; if another process replaced it meanwhile, puts that one back. */
function removeStale(lockPath: string, deadPid: number | null): void {
  const aside = `${lockPath}.stale.${process.pid}`;
  try {
    fs.renameSync(lockPath, aside);
  } catch {
    return; // gone already
  }
  if (readPid(aside) !== deadPid) {
    try {
      fs.linkSync(aside, lockPath);
    } catch {
      // Someone locked in between: theirs stands, and so this attempt is refused.
    }
  }
  fs.rmSync(aside, { force: true });
}

function removeIfOurs(lockPath: string): void {
  if (readPid(lockPath) === process.pid) fs.rmSync(lockPath, { force: true });
}
