import fs from 'node:fs';
import path from 'node:path';

/** Makes a create, rename or unlink in `dir` durable: the directory's own entry list is fsynced. */
export function syncDirectory(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** The same, for the directory that holds `file`. */
export function syncDirectoryOf(file: string): void {
  syncDirectory(path.dirname(file));
}
