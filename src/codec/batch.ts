// The batch description the data plane produces and the wire protocol carries.
// Pure data: no I/O, no kernels.

/** How one block's payload is stored. Values are wire values; never renumber. */
export const enum BlockEncoding {
  /** All zero; no payload. */
  Zero = 0,
  /** The block as is; payload is blockSize bytes. */
  Raw = 1,
  /** A raw LZ4 block (no frame, no length prefix). */
  Lz4 = 2,
  /** A raw deflate stream (zlib.deflateRaw). */
  Deflate = 3,
}

export const ENCODING_NAMES: Record<number, string> = {
  [BlockEncoding.Zero]: 'zero',
  [BlockEncoding.Raw]: 'raw',
  [BlockEncoding.Lz4]: 'lz4',
  [BlockEncoding.Deflate]: 'deflate',
};

/** One block of a batch. */
export interface BlockEntry {
  encoding: BlockEncoding;
  /** xxh64 (seed 0) of the block's uncompressed bytes. */
  checksum: bigint;
  /** Payload bytes of this block inside the batch payload. */
  length: number;
}

/** A batch: entries in block order, payloads back to back in the same order. */
export interface EncodedBatch {
  blockSize: number;
  entries: BlockEntry[];
  /** Payload bytes (may be a view at the start of a larger, recycled buffer). */
  payload: Uint8Array;
}

/** Outcome of decoding one block. Values match the kernels' status bytes. */
export const enum BlockStatus {
  Ok = 0,
  /** Decoded, but the bytes do not match the checksum. */
  ChecksumMismatch = 1,
  /** The payload is truncated, corrupt or of the wrong length. */
  Malformed = 2,
  /** No decoder for this block's encoding. */
  UnknownEncoding = 3,
}

export interface DecodedBatch {
  blockSize: number;
  /** count * blockSize bytes (a view; may start a larger recycled buffer); a failed block's bytes are zeroed. */
  blocks: Uint8Array;
  /** One status per block. */
  status: BlockStatus[];
  /** Indexes of the blocks whose status is not Ok: refetch just those. */
  failed: number[];
}

/** Byte offset of each entry's payload, plus the total at the end. */
export function payloadOffsets(entries: readonly BlockEntry[]): number[] {
  const offsets = new Array<number>(entries.length + 1);
  let at = 0;
  for (let i = 0; i < entries.length; i++) {
    offsets[i] = at;
    at += entries[i].length;
  }
  offsets[entries.length] = at;
  return offsets;
}

/**
 * Checks a block size the data plane accepts: a power of two from 512 B to
 * 4 MiB (the kernels need a multiple of 8; the bound keeps batches small).
 */
export function checkBlockSize(blockSize: number, where: string): void {
  if (!Number.isInteger(blockSize) || blockSize < 512 || blockSize > 1 << 22 || (blockSize & (blockSize - 1)) !== 0) {
    throw new RangeError(`${where}: blockSize must be a power of two from 512 to 4194304 (got ${blockSize})`);
  }
}
