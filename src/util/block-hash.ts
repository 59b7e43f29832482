/**
 * The strong per-block hash seeding compares: SHA-256 of each block's bytes
 * (the image's last block as long as it is). A block is taken from the seed
 * only when its digest equals the source's; with a cryptographic hash no
 * one, not even a guest writing chosen bytes into its own disk, can make two
 * different blocks match, so a match is the same content (a fast
 * non-cryptographic hash could be collided on purpose).
 */
import crypto from 'node:crypto';

export const BLOCK_HASH_BYTES = 32;

/** Digests of `data` cut into blocks of `blockSize` (the last may be shorter), back to back. */
export function hashBlocks(data: Buffer, blockSize: number): Buffer {
  const count = Math.ceil(data.length / blockSize);
  const out = Buffer.allocUnsafe(count * BLOCK_HASH_BYTES);
  for (let i = 0; i < count; i++) {
    const block = data.subarray(i * blockSize, Math.min(data.length, (i + 1) * blockSize));
    crypto
      .createHash('sha256')
      .update(block)
      .digest()
      .copy(out, i * BLOCK_HASH_BYTES);
  }
  return out;
}
