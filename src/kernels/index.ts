// Library entry for the kernels as plain functions, usable without the pool.
import { Kernels } from './kernel-loader';

let instance: Kernels | undefined;

function kernels(): Kernels {
  instance ??= new Kernels();
  return instance;
}

/** xxHash64 of `bytes` (bit-exact with the reference XXH64), as an unsigned bigint. */
export function xxh64(bytes: Uint8Array, seed: bigint = 0n): bigint {
  return kernels().xxh64(bytes, seed);
}

/** True when every byte is zero. */
export function isZero(bytes: Uint8Array): boolean {
  return kernels().isZero(bytes);
}

/**
 * Compresses `bytes` to a raw LZ4 block (block format, no frame, no length
 * prefix). `acceleration` >= 1 trades ratio for speed.
 */
export function lz4Compress(bytes: Uint8Array, acceleration = 1): Uint8Array {
  if (!Number.isInteger(acceleration) || acceleration < 1 || acceleration > 65536) {
    throw new RangeError(`lz4Compress: acceleration must be an integer from 1 to 65536 (got ${acceleration})`);
  }
  return kernels().lz4Compress(bytes, acceleration);
}

/**
 * Decompresses a raw LZ4 block that must decode to exactly
 * `uncompressedLength` bytes. Throws an Error on malformed input.
 */
export function lz4Decompress(block: Uint8Array, uncompressedLength: number): Uint8Array {
  if (!Number.isInteger(uncompressedLength) || uncompressedLength < 0 || uncompressedLength > 0x7fffffff) {
    throw new RangeError(
      `lz4Decompress: uncompressedLength must be an integer from 0 to 2^31-1 (got ${uncompressedLength})`,
    );
  }
  return kernels().lz4Decompress(block, uncompressedLength);
}

/** Worst-case size of the LZ4 block for `length` input bytes. */
export function lz4Bound(length: number): number {
  return length + Math.floor(length / 255) + 16;
}
