// How one block's payload is stored: the one definition, compiled both by tsc
// (src/codec/batch.ts re-exports it) and by asc (assembly/index.ts imports
// it). Keep it to const enums with literal values, which both accept.

/** Values are wire values (src/wire/encoding-map.ts); never renumber. */
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
