/**
 * A disk image that looks like a VM's: runs of text, structured binary
 * records, incompressible data and empty space, deterministic from a seed.
 */
const WORDS = (
  'the of and to in is was for on that with as by at from this be are or an it not which have has ' +
  'kernel block device migration network storage image virtual machine source destination copy ' +
  'server client request reply flush write read zero trim cache status export sector page file'
).split(' ');

export interface ImageMix {
  zero: number;
  text: number;
  records: number;
  random: number;
}

export const DEFAULT_MIX: ImageMix = { zero: 0.4, text: 0.25, records: 0.2, random: 0.15 };

/** Fills `image` (a multiple of 64 KiB) with 64 KiB extents drawn from the mix. */
export function fillDemoImage(image: Buffer, seed = 1, mix: ImageMix = DEFAULT_MIX): void {
  let x = seed >>> 0 || 1;
  const next = (): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  const extent = 64 * 1024;
  for (let at = 0; at < image.length; at += extent) {
    const end = Math.min(at + extent, image.length);
    const pick = next() / 2 ** 32;
    if (pick < mix.zero) image.fill(0, at, end);
    else if (pick < mix.zero + mix.text) {
      let p = at;
      while (p < end) {
        const word = WORDS[next() % WORDS.length] + (next() % 11 === 0 ? '.\n' : ' ');
        p += image.write(word, p, end - p, 'latin1');
      }
    } else if (pick < mix.zero + mix.text + mix.records) {
      // 64-byte records: an id, a timestamp, flags and padding, as tables and logs have.
      for (let p = at; p + 64 <= end; p += 64) {
        image.fill(0, p, p + 64);
        image.writeUInt32LE(p / 64, p);
        image.writeUInt32LE(1_700_000_000 + (next() % 100_000), p + 8);
        image.writeUInt16LE(next() & 0x0f0f, p + 16);
        image.write('rec', p + 20, 'latin1');
      }
    } else {
      for (let p = at; p + 4 <= end; p += 4) image.writeUInt32LE(next(), p);
    }
  }
}
