// ferry data-plane kernels. Every export works on flat linear memory: the JS
// side (src/kernels/kernel-loader.ts) places inputs above heapBase() and reads
// results back; nothing here allocates.
import { xxh64, isZero } from './xxh64';
import { lz4Compress, lz4Decompress, lz4Bound } from './lz4';
import { BlockEncoding } from '../src/codec/encodings';
import { KernelStatus, MetaRecord } from '../src/kernels/kernel-abi';

export { xxh64, isZero, lz4Compress, lz4Decompress, lz4Bound };

// Block encodings, as the metadata byte holds them.
const ENC_ZERO = <u8>BlockEncoding.Zero;
const ENC_RAW = <u8>BlockEncoding.Raw;
const ENC_LZ4 = <u8>BlockEncoding.Lz4;

// Per-block decode status (src/kernels/kernel-abi.ts).
const ST_OK = <u8>KernelStatus.Ok;
const ST_CHECKSUM = <u8>KernelStatus.ChecksumMismatch;
const ST_MALFORMED = <u8>KernelStatus.Malformed;
const ST_FOREIGN = <u8>KernelStatus.Foreign; // encoding this kernel does not decode; JS does it
const ST_UNVERIFIED = <u8>KernelStatus.Unverified; // decoded by JS, checksum still to check

// Block metadata record (src/kernels/kernel-abi.ts).
const META_SIZE = <usize>MetaRecord.Size;

export const MODE_RAW: u32 = 0;
export const MODE_LZ4: u32 = 1;

export function heapBase(): usize {
  return __heap_base;
}

export function metaSize(): usize {
  return META_SIZE;
}

/**
 * Encodes `count` blocks of `blockSize` bytes at `inPtr`: checksum, zero test,
 * and (MODE_LZ4) LZ4 compression where it makes the block smaller. Payloads
 * are written back to back at `outPtr` (capacity count * blockSize suffices,
 * since a block is never stored larger than raw). Returns the payload length.
 */
export function encodeBatch(
  inPtr: usize,
  count: u32,
  blockSize: usize,
  outPtr: usize,
  metaPtr: usize,
  mode: u32,
  accel: u32,
): usize {
  let op = outPtr;
  let zeroHash: u64 = 0;
  let haveZeroHash = false;
  for (let i: u32 = 0; i < count; i++) {
    const block = inPtr + <usize>i * blockSize;
    const meta = metaPtr + <usize>i * META_SIZE;
    store<u8>(meta, ST_OK, MetaRecord.Status);
    if (isZero(block, blockSize)) {
      if (!haveZeroHash) {
        zeroHash = xxh64(block, blockSize, 0);
        haveZeroHash = true;
      }
      store<u64>(meta, zeroHash);
      store<u32>(meta, 0, MetaRecord.Length);
      store<u8>(meta, ENC_ZERO, MetaRecord.Encoding);
      continue;
    }
    store<u64>(meta, xxh64(block, blockSize, 0));
    if (mode == MODE_LZ4) {
      const n = lz4Compress(block, blockSize, op, blockSize - 1, accel);
      if (n > 0) {
        store<u32>(meta, <u32>n, MetaRecord.Length);
        store<u8>(meta, ENC_LZ4, MetaRecord.Encoding);
        op += <usize>n;
        continue;
      }
    }
    memory.copy(op, block, blockSize);
    store<u32>(meta, <u32>blockSize, MetaRecord.Length);
    store<u8>(meta, ENC_RAW, MetaRecord.Encoding);
    op += blockSize;
  }
  return op - outPtr;
}

/** Checksums and zero flags only (encoding zero or raw, length 0 or blockSize). */
export function hashBatch(inPtr: usize, count: u32, blockSize: usize, metaPtr: usize): void {
  for (let i: u32 = 0; i < count; i++) {
    const block = inPtr + <usize>i * blockSize;
    const meta = metaPtr + <usize>i * META_SIZE;
    const zero = isZero(block, blockSize);
    store<u64>(meta, xxh64(block, blockSize, 0));
    store<u32>(meta, zero ? 0 : <u32>blockSize, MetaRecord.Length);
    store<u8>(meta, zero ? ENC_ZERO : ENC_RAW, MetaRecord.Encoding);
    store<u8>(meta, ST_OK, MetaRecord.Status);
  }
}

/**
 * Decodes a batch: `count` metadata records at `metaPtr` describe payloads
 * laid back to back at `payloadPtr` (`payloadLen` bytes). Blocks go to
 * `outPtr + i * blockSize`; each gets a status byte. Zero, raw and (with
 * `lz4` set) LZ4 blocks are decoded and verified here; other encodings get
 * ST_FOREIGN for JS to decode. Returns the number of failed blocks.
 */
export function decodeBatch(
  payloadPtr: usize,
  payloadLen: usize,
  metaPtr: usize,
  count: u32,
  blockSize: usize,
  outPtr: usize,
  lz4: bool,
): u32 {
  let cursor: u64 = 0;
  let failed: u32 = 0;
  // Every zero block of the batch has the same checksum: hashed once, on the first one.
  let zeroHash: u64 = 0;
  let haveZeroHash = false;
  for (let i: u32 = 0; i < count; i++) {
    const meta = metaPtr + <usize>i * META_SIZE;
    const out = outPtr + <usize>i * blockSize;
    const len = <u64>load<u32>(meta, MetaRecord.Length);
    const enc = load<u8>(meta, MetaRecord.Encoding);
    const at = payloadPtr + <usize>cursor;
    cursor += len;
    let status = ST_OK;
    if (cursor > <u64>payloadLen) {
      status = ST_MALFORMED;
    } else if (enc == ENC_ZERO) {
      if (len != 0) status = ST_MALFORMED;
      else {
        memory.fill(out, 0, blockSize);
        if (!haveZeroHash) {
          zeroHash = xxh64(out, blockSize, 0);
          haveZeroHash = true;
        }
        if (zeroHash != load<u64>(meta)) status = ST_CHECKSUM;
        if (status == ST_CHECKSUM) failed++;
        store<u8>(meta, status, MetaRecord.Status);
        continue;
      }
    } else if (enc == ENC_RAW) {
      if (len != <u64>blockSize) status = ST_MALFORMED;
      else memory.copy(out, at, blockSize);
    } else if (enc == ENC_LZ4 && lz4) {
      const n = lz4Decompress(at, <usize>len, out, blockSize);
      if (n != <isize>blockSize) status = ST_MALFORMED;
    } else {
      status = ST_FOREIGN;
    }
    if (status == ST_OK && xxh64(out, blockSize, 0) != load<u64>(meta)) status = ST_CHECKSUM;
    if (status == ST_CHECKSUM || status == ST_MALFORMED) failed++;
    store<u8>(meta, status, MetaRecord.Status);
  }
  return failed;
}

/** Verifies the checksum of every block whose status is ST_UNVERIFIED. */
export function verifyBatch(metaPtr: usize, count: u32, blockSize: usize, outPtr: usize): u32 {
  let failed: u32 = 0;
  for (let i: u32 = 0; i < count; i++) {
    const meta = metaPtr + <usize>i * META_SIZE;
    const status = load<u8>(meta, MetaRecord.Status);
    if (status == ST_UNVERIFIED) {
      const ok = xxh64(outPtr + <usize>i * blockSize, blockSize, 0) == load<u64>(meta);
      store<u8>(meta, ok ? ST_OK : ST_CHECKSUM, MetaRecord.Status);
      if (!ok) failed++;
    } else if (status != ST_OK) {
      failed++;
    }
  }
  return failed;
}
