/**
 * A source image's stable identity, a UUID that destinations record and
 * never resume against an image with another. It is kept in the source's
 * state directory, not beside the image (whose directory may be read-only),
 * in a file named after the image's path. The file also records which file
 * or device held that path: when another one does (the image was replaced,
 * a loop device re-attached), the image gets a new identity, so that no
 * destination resumes its copy of the old one.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { devNumbers } from '../store/device-geometry';

interface IdentityRecord {
  identity: string;
  /** What held the path when the identity was made. */
  object: string;
}

const IDENTITY = /^ferry-image:[0-9a-f-]{36}$/;

/** `stateDir` exists; `key` names the image (one file name per image path). */
export function imageIdentity(imagePath: string, stateDir: string, key: string): string {
  const file = path.join(stateDir, `${key}.ferry-id`);
  const object = objectOf(imagePath);
  const recorded = readRecord(file);
  if (recorded?.object === object) return recorded.identity;
  const identity = recorded ? mint() : (legacyIdentity(imagePath) ?? mint());
  const text = JSON.stringify({ identity, object, image: path.resolve(imagePath) }) + '\n';
  try {
    if (recorded) {
      // Replace atomically: a reader sees the old record or the new one.
      fs.writeFileSync(`${file}.tmp`, text, { mode: 0o644 });
      fs.renameSync(`${file}.tmp`, file);
    } else fs.writeFileSync(file, text, { flag: 'wx', mode: 0o644 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return imageIdentity(imagePath, stateDir, key); // another process won the race
    throw new Error(`cannot record the image identity in ${file}: ${(e as Error).message}`, { cause: e });
  }
  return identity;
}

/**
 * A file name that stands for an image path, one to one: /dev/vg0/web1 →
 * "dev+vg0+web1". The path is made absolute but symlinks are kept, since
 * /dev/disk/by-id names outlive /dev/sdX ones.
 */
export function imageKey(imagePath: string): string {
  return path
    .resolve(imagePath)
    .slice(1)
    .replace(/[%+]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)
    .replaceAll('/', '+');
}

function mint(): string {
  return `ferry-image:${crypto.randomUUID()}`;
}

function readRecord(file: string): IdentityRecord | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new Error(`cannot read the image identity ${file}: ${(e as Error).message}`, { cause: e });
  }
  let record: IdentityRecord;
  try {
    record = JSON.parse(text) as IdentityRecord;
  } catch {
    throw new Error(`${file} does not hold a ferry image identity (remove it to give the image a new one)`);
  }
  if (typeof record.identity !== 'string' || !IDENTITY.test(record.identity) || typeof record.object !== 'string')
    throw new Error(`${file} does not hold a ferry image identity (remove it to give the image a new one)`);
  return record;
}

/**
 * The file or device at the path. A file is its inode and birth time (an
 * inode number is reused once freed). A block device is its device number
 * and disk sequence number, which changes when other media appear behind
 * the same number (a loop device attached to another file).
 */
function objectOf(imagePath: string): string {
  const stat = fs.statSync(imagePath, { bigint: true });
  if (!stat.isBlockDevice()) return `file:${stat.dev}:${stat.ino}:${stat.birthtimeNs}`;
  let diskseq = 'none';
  try {
    const name = path.basename(fs.realpathSync(`/sys/dev/block/${devNumbers(stat.rdev)}`));
    diskseq = fs.readFileSync(`/sys/class/block/${name}/diskseq`, 'utf8').trim();
  } catch {
    // no diskseq (old kernel, partition): the device number alone
  }
  return `block:${devNumbers(stat.rdev)}:${diskseq}`;
}

/** An identity an earlier ferry kept beside the image (IMAGE.ferry-id): adopted, so its destinations can resume. */
function legacyIdentity(imagePath: string): string | null {
  try {
    const text = fs.readFileSync(`${imagePath}.ferry-id`, 'utf8').trim();
    return IDENTITY.test(text) ? text : null;
  } catch {
    return null;
  }
}
