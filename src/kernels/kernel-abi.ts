// What the kernels and their JS callers must agree on: the layout of one
// block's metadata record and the status byte in it. Compiled by tsc
// (src/kernels, src/codec) and by asc (assembly/index.ts): keep it to const
// enums with literal values, which both accept.

/** One block's metadata record in linear memory (little endian): byte offsets, and its size. */
export const enum MetaRecord {
  /** u64: xxh64 (seed 0) of the block's bytes. */
  Checksum = 0,
  /** u32: payload bytes. */
  Length = 8,
  /** u8: BlockEncoding (src/codec/encodings.ts). */
  Encoding = 12,
  /** u8: KernelStatus. */
  Status = 13,
  /** Bytes per record. */
  Size = 16,
}

/** The status byte. 0 to 3 are also BlockStatus values (src/codec/batch.ts). */
export const enum KernelStatus {
  Ok = 0,
  ChecksumMismatch = 1,
  Malformed = 2,
  /** An encoding the kernel does not decode: JS decodes it, or it stays BlockStatus.UnknownEncoding. */
  Foreign = 3,
  /** Decoded by JS; the checksum is still to verify (verifyBatch). */
  Unverified = 4,
}
