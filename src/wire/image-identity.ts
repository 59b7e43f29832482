/**
 * A source image's stable identity: a UUID kept beside the image in
 * IMAGE.ferry-id, created the first time the image is served. Destinations
 * record it and never resume against an image with another.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';

export function imageIdentity(imagePath: string): string {
  const file = `${imagePath}.ferry-id`;
  try {
    const text = fs.readFileSync(file, 'utf8').trim();
    if (!/^ferry-image:[0-9a-f-]{36}$/.test(text)) throw new Error(`${file} does not hold a ferry image identity`);
    return text;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const identity = `ferry-image:${crypto.randomUUID()}`;
  try {
    fs.writeFileSync(file, identity + '\n', { flag: 'wx', mode: 0o644 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return imageIdentity(imagePath); // another process won the race
    throw new Error(`cannot record the image identity in ${file}: ${(e as Error).message}`, { cause: e });
  }
  return identity;
}
