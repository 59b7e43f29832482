// Size limits every layer shares. The config schema checks them, and the code
// that depends on them imports them from here, so a value is accepted by the
// config only when every layer can handle it.

/** Smallest block: the NBD minimum, and a multiple of 8 as the kernels need. */
export const MIN_BLOCK_SIZE = 512;
/** Largest block: a full batch of them still fits a BATCH frame (MAX_BATCH_BYTES). */
export const MAX_BLOCK_SIZE = 1 << 20;
/** Most blocks in one batch: one background fetch, one BATCH frame. */
export const MAX_BATCH_BLOCKS = 1024;
/** Most payload bytes in one batch: the wire's BATCH frame payload limit. */
export const MAX_BATCH_BYTES = 64 << 20;

export function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/** Why `blockSize` is not a block size ferry works with; undefined when it is one. */
export function blockSizeProblem(blockSize: number): string | undefined {
  return isPowerOfTwo(blockSize) && blockSize >= MIN_BLOCK_SIZE && blockSize <= MAX_BLOCK_SIZE
    ? undefined
    : `must be a power of two from ${MIN_BLOCK_SIZE} to ${MAX_BLOCK_SIZE}`;
}

/** Blocks of `blockSize` bytes one batch may hold. */
export function batchBlocksLimit(blockSize: number): number {
  return Math.min(MAX_BATCH_BLOCKS, Math.floor(MAX_BATCH_BYTES / blockSize));
}
