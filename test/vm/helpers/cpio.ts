/**
 * The cpio "newc" archive format the Linux kernel unpacks as its initramfs.
 * Pure: entries in, archive bytes out. Written here (instead of running cpio)
 * so device nodes such as /dev/console need no privileges to create.
 */

export type CpioEntry =
  | { kind: 'dir'; path: string; mode?: number }
  | { kind: 'file'; path: string; data: Buffer; mode?: number }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'char'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function pad4(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}

function hex8(value: number): string {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff)
    throw new Error(`cpio: field value out of range (got ${value})`);
  return value.toString(16).padStart(8, '0');
}

function record(ino: number, mode: number, name: string, data: Buffer, rdev = { major: 0, minor: 0 }): Buffer[] {
  const nameBytes = Buffer.from(name + '\0', 'utf8');
  const fields = [
    ino,
    mode,
    0, // uid
    0, // gid
    mode & S_IFDIR ? 2 : 1, // nlink
    0, // mtime: reproducible archives
    data.length,
    0, // dev major
    0, // dev minor
    rdev.major,
    rdev.minor,
    nameBytes.length,
    0, // check: unused in newc
  ];
  const header = Buffer.from('070701' + fields.map(hex8).join(''), 'latin1');
  const head = Buffer.concat([header, nameBytes]);
  return [head, pad4(head.length), data, pad4(data.length)];
}

/** The archive: every entry in order (parents before children), then the trailer. */
export function buildCpio(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const e of entries) {
    const name = e.path.replace(/^\/+/, '');
    if (name === '') throw new Error('cpio: an entry needs a path');
    switch (e.kind) {
      case 'dir':
        parts.push(...record(ino++, S_IFDIR | (e.mode ?? 0o755), name, Buffer.alloc(0)));
        break;
      case 'file':
        parts.push(...record(ino++, S_IFREG | (e.mode ?? 0o644), name, e.data));
        break;
      case 'symlink':
        parts.push(...record(ino++, S_IFLNK | 0o777, name, Buffer.from(e.target, 'utf8')));
        break;
      case 'char':
        parts.push(...record(ino++, S_IFCHR | (e.mode ?? 0o600), name, Buffer.alloc(0), e));
        break;
    }
  }
  parts.push(...record(0, 0, 'TRAILER!!!', Buffer.alloc(0)));
  return Buffer.concat(parts);
}
