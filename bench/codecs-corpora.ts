// Benchmark corpora: zeros, text, random, binaries and a real ext4 image.
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildExt4Image, findMkfs } from './migrate-image';

export interface Corpus {
  name: string;
  description: string;
  bytes: Uint8Array;
}

function filesUnder(dir: string, accept: (name: string) => boolean, budget: number): string[] {
  const out: string[] = [];
  let total = 0;
  const walk = (d: string) => {
    let names: string[];
    try {
      names = readdirSync(d).sort();
    } catch {
      return;
    }
    for (const name of names) {
      const p = join(d, name);
      let st;
      try {
        st = statSync(p);
      } catch {
        continue;
      }
      if (st.isDirectory()) walk(p);
      else if (st.isFile() && st.size > 0 && total + st.size <= budget && accept(name)) {
        out.push(p);
        total += st.size;
      }
    }
  };
  walk(dir);
  return out;
}

function concat(files: string[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let at = 0;
  while (at < size && files.length) {
    for (const f of files) {
      const data = readFileSync(f);
      const n = Math.min(data.length, size - at);
      out.set(data.subarray(0, n), at);
      at += n;
      if (at >= size) break;
    }
  }
  return out;
}

const LIB_DIR = '/usr/lib/x86_64-linux-gnu';
const BIN_DIR = '/usr/bin';

/** True when the file starts with the ELF magic (an executable, not a script). */
function isElf(path: string): boolean {
  try {
    const fd = openSync(path, 'r');
    try {
      const head = Buffer.alloc(4);
      return readSync(fd, head, 0, 4, 0) === 4 && head.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
    } finally {
      closeSync(fd);
    }
  } catch {
    return false;
  }
}

export function buildCorpora(size: number, log: (line: string) => void): Corpus[] {
  const root = join(__dirname, '..', '..');
  const textFiles = filesUnder(join(root, 'node_modules'), (n) => /\.(js|ts|md|json)$/.test(n), size * 2);
  const binFiles = filesUnder(LIB_DIR, (n) => /\.so(\.|$)/.test(n), size * 2);
  const corpora: Corpus[] = [
    { name: 'zeros', description: 'all-zero blocks', bytes: new Uint8Array(size) },
    {
      name: 'text',
      description: 'JavaScript, TypeScript, Markdown and JSON from node_modules',
      bytes: concat(textFiles, size),
    },
    { name: 'random', description: 'crypto.randomBytes (incompressible)', bytes: new Uint8Array(randomBytes(size)) },
    { name: 'binary', description: `shared libraries from ${LIB_DIR}`, bytes: concat(binFiles, size) },
    {
      name: 'elf',
      description: `ELF executables from ${BIN_DIR}`,
      bytes: concat(filesUnder(BIN_DIR, () => true, size * 4).filter(isElf), size),
    },
  ];
  // Small images waste too much on metadata and journal to hold 40% of data.
  const image = ext4Image(Math.max(size, 32 << 20), log);
  if (image) corpora.push(image);
  return corpora;
}

/** An ext4 image of real system files, about 40% full (the migration bench's disk, smaller). */
function ext4Image(size: number, log: (line: string) => void): Corpus | undefined {
  if (!findMkfs()) {
    log('skipping the ext4 corpus: mkfs.ext4 not found (install e2fsprogs)');
    return undefined;
  }
  const dir = mkdtempSync(join(tmpdir(), 'ferry-bench-'));
  try {
    const image = buildExt4Image(dir, join(dir, 'disk.img'), size, 0.4);
    return { name: 'ext4', description: image.description, bytes: new Uint8Array(readFileSync(image.path)) };
  } catch (err) {
    log(`skipping the ext4 corpus: ${(err as Error).message}`);
    return undefined;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
