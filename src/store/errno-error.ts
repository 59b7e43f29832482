/**
 * An error for an errno the native addon's thread-pool tasks report: its
 * code is the errno's name (ENOTSUP for EOPNOTSUPP, which is the same number
 * on Linux and is what callers test for), EIO for a number Node does not name.
 */
import os from 'node:os';

const names = new Map<number, string>(Object.entries(os.constants.errno).map(([name, n]) => [n, name]));
names.set(os.constants.errno.EOPNOTSUPP, 'ENOTSUP');

export function errnoError(errno: number, syscall: string): NodeJS.ErrnoException {
  const code = names.get(errno) ?? 'EIO';
  return Object.assign(new Error(`${code}: ${syscall} failed (errno ${errno})`), { errno, code, syscall });
}
