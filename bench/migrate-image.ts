/** A realistic VM disk for the migration bench: ext4 (mkfs.ext4 -d) holding real system files, partly empty. */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export interface DiskImage {
  path: string;
  sizeBytes: number;
  /** Bytes of file content copied in. */
  contentBytes: number;
  files: number;
  description: string;
}

const SOURCES = ['/usr/lib/x86_64-linux-gnu', '/usr/share/doc'];

export function findMkfs(): string | undefined {
  for (const p of ['/usr/sbin/mkfs.ext4', '/sbin/mkfs.ext4']) if (fs.existsSync(p)) return p;
  return undefined;
}

/** Copies regular files from SOURCES (in turn, name order) into `dir` until `budget` bytes. */
function copyFiles(dir: string, budget: number): { bytes: number; files: number } {
  let bytes = 0;
  let files = 0;
  const walk = (from: string, to: string): void => {
    let names: string[];
    try {
      names = fs.readdirSync(from).sort();
    } catch {
      return;
    }
    for (const name of names) {
      if (bytes >= budget) return;
      const p = path.join(from, name);
      let st: fs.Stats;
      try {
        st = fs.lstatSync(p);
      } catch {
        continue;
      }
      if (st.isDirectory()) walk(p, path.join(to, name));
      else if (st.isFile() && st.size > 0 && bytes + st.size <= budget) {
        try {
          fs.mkdirSync(to, { recursive: true });
          fs.copyFileSync(p, path.join(to, name));
          bytes += st.size;
          files++;
        } catch {
          // unreadable: skip
        }
      }
    }
  };
  for (const src of SOURCES) walk(src, path.join(dir, path.basename(src)));
  return { bytes, files };
}

/** Builds `sizeBytes` of ext4 at `imagePath`, about `fill` of it file content. */
export function buildExt4Image(workDir: string, imagePath: string, sizeBytes: number, fill = 0.45): DiskImage {
  const mkfs = findMkfs();
  if (!mkfs) throw new Error('mkfs.ext4 not found (install e2fsprogs)');
  const content = path.join(workDir, 'image-content');
  const { bytes, files } = copyFiles(content, Math.floor(sizeBytes * fill));
  execFileSync(mkfs, ['-q', '-d', content, '-F', imagePath, `${Math.floor(sizeBytes / 1024)}k`], { stdio: 'pipe' });
  fs.rmSync(content, { recursive: true, force: true });
  return {
    path: imagePath,
    sizeBytes,
    contentBytes: bytes,
    files,
    description: `ext4 (mkfs.ext4 -q -d) of ${files} files (${(bytes / 2 ** 20).toFixed(0)} MiB) from ${SOURCES.join(' and ')}, ${((bytes / sizeBytes) * 100).toFixed(0)}% full`,
  };
}
