/** A fresh temporary directory removed when the test ends. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

interface Teardownable {
  teardown(fn: () => void | Promise<void>): void;
}

export function tempDir(t: Teardownable, prefix = 'ferry-test-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A file of `size` bytes of deterministic pseudo-random content (seeded). */
export function writePatternFile(file: string, size: number, seed = 1): Buffer {
  const data = patternBytes(size, seed);
  fs.writeFileSync(file, data);
  return data;
}

export function patternBytes(size: number, seed = 1): Buffer {
  const data = Buffer.allocUnsafe(size);
  let x = seed >>> 0 || 1;
  let i = 0;
  for (; i + 4 <= size; i += 4) {
    // xorshift32: cheap and reproducible
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    data.writeUInt32LE(x >>> 0, i);
  }
  for (; i < size; i++) data[i] = i & 0xff;
  return data;
}
