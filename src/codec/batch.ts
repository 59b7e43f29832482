// The batch description the data plane produces and the wire protocol carries.
// Pure data: no I/O, no kernels.

import { blockSizeProblem } from '../util/limits';
import { BlockEncoding } from './encodings';

export { BlockEncoding };

/** The name of each block encoding, as status and metrics show it. */
export const ENCODING_NAMES: Readonly<Record<BlockEncoding, string>> = {
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

/** Checks a block size the data plane accepts (src/util/limits.ts). */
export function checkBlockSize(blockSize: number, where: string): void {
  const problem = blockSizeProblem(blockSize);
  if (problem) throw new RangeError(`${where}: blockSize ${problem} (got ${blockSize})`);
}
