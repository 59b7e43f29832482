// Benchmark corpora: zeros, text, random, binaries and a real ext4 image.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

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
  ];
  // Small images waste too much on metadata and journal to hold 40% of data.
  const image = ext4Image(Math.max(size, 32 << 20), log);
  if (image) corpora.push(image);
  return corpora;
}

/** An ext4 image made with mkfs.ext4 -d from a copy of system libraries, about 40% full. */
function ext4Image(size: number, log: (line: string) => void): Corpus | undefined {
  let mkfs = '';
  for (const p of ['/usr/sbin/mkfs.ext4', '/sbin/mkfs.ext4']) {
    try {
      statSync(p);
      mkfs = p;
      break;
    } catch {
      // try the next one
    }
  }
  if (!mkfs) {
    log('skipping the ext4 corpus: mkfs.ext4 not found (install e2fsprogs)');
    return undefined;
  }
  const dir = mkdtempSync(join(tmpdir(), 'ferry-bench-'));
  try {
    const content = join(dir, 'content');
    const files = filesUnder(LIB_DIR, () => true, size * 0.4);
    for (const f of files) {
      const target = join(content, f.slice(LIB_DIR.length));
      mkdirSync(dirname(target), { recursive: true });
      copyFileSync(f, target);
    }
    const img = join(dir, 'disk.img');
    execFileSync(mkfs, ['-q', '-d', content, '-F', img, `${Math.floor(size / 1024)}k`], { stdio: 'pipe' });
    const bytes = new Uint8Array(readFileSync(img));
    return {
      name: 'ext4',
      description: `ext4 image (mkfs.ext4 -d) holding ${files.length} files from ${LIB_DIR}, ~40% full`,
      bytes,
    };
  } catch (err) {
    log(`skipping the ext4 corpus: ${(err as Error).message}`);
    return undefined;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
