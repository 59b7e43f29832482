// LZ4 block format, written from doc/lz4_Block_format.md.
// A sequence is: token (literal length << 4 | match length - 4), extra literal
// length bytes, literals, 16-bit little-endian offset, extra match length bytes.
// The last sequence carries literals only. End-of-block rules: the last 5 bytes
// are literals, and the last match starts at least 12 bytes before the end.

const MIN_MATCH: usize = 4;
const LAST_LITERALS: usize = 5;
const MF_LIMIT: usize = 12;
const MAX_OFFSET: usize = 65535;
// Inputs of at most 64 KiB have every position in 16 bits: they hash into
// u16 slots, 2^13 of them up to 65535 bytes and 2^12 at 65536 (where
// lz4-wasm moves to 2^12 u32 slots, so the ratios stay alike), cleared per
// call (16 KiB, a fraction of a microsecond). Larger inputs hash into 2^12
// u32 slots, which stay in L1 and give lz4-wasm's ratio (2^14 found 1-4%
// more matches but was up to 1.5x slower on binaries). The u16 slots were
// 1.2-1.8x faster than 2^14 u32 slots from 8 KiB to 48 KiB (see
// docs/benchmarks.md).
const HASH_LOG_NARROW: u32 = 13;
const HASH_LOG_LARGE: u32 = 12;
/** The largest input for the narrow table: 2^HASH_LOG_NARROW slots below it, 2^HASH_LOG_LARGE at it. */
const NARROW_INPUT: usize = 65536;
// After 2^SKIP_TRIGGER misses in a row the search step grows by one (the
// reference uses 6; 4 measured faster on binaries with a ratio still within
// 0.3% of lz4-wasm's; 3 lost over 1% on ext4 images). Acceleration multiplies
// the starting miss count.
const SKIP_TRIGGER: u32 = 4;

// The wide table, in static memory: 2^12 u32 entries (16 KiB). Entries hold
// `position - src + epoch`, and every call starts a new epoch more than
// MAX_OFFSET above all values written before, so entries from earlier calls
// fail the same distance test as matches too far back: no reset per call, one
// comparison per candidate, and the output depends only on the input.
const TABLE: usize = memory.data(4 << HASH_LOG_LARGE, 16);
// The narrow table: u16 entries holding `position - src`, zeroed per call (a
// zero names the input's first position, a real candidate that the byte
// comparison then checks). Never shared with the wide one: its entries read
// as u32 would pass the distance test.
const TABLE_NARROW: usize = memory.data(2 << HASH_LOG_NARROW, 16);
const EPOCH_GAP: u32 = <u32>MAX_OFFSET + 1;
let epoch: u32 = EPOCH_GAP;

/**
 * Moves the epoch, to exercise the table reset at wrap-around. Exported only
 * by the test kernels (test/kernels/test-kernels.ts), not by assembly/index.ts.
 */
export function lz4SetEpoch(value: u32): void {
  epoch = value < EPOCH_GAP ? EPOCH_GAP : value;
}

export const LZ4_ERR_OUTPUT_FULL: isize = -1;
export const LZ4_ERR_TRUNCATED: isize = -2;
export const LZ4_ERR_OUTPUT_OVERFLOW: isize = -3;
export const LZ4_ERR_BAD_OFFSET: isize = -4;

// @ts-ignore: decorator
@inline
function slot(seq: u32, shift: u32, narrow: bool): usize {
  const h = <usize>((seq * 2654435761) >> shift);
  return narrow ? TABLE_NARROW + (h << 1) : TABLE + (h << 2);
}

// @ts-ignore: decorator
@inline
function getSlot(at: usize, narrow: bool): u32 {
  return narrow ? <u32>load<u16>(at) : load<u32>(at);
}

// @ts-ignore: decorator
@inline
function setSlot(at: usize, value: u32, narrow: bool): void {
  if (narrow) store<u16>(at, <u16>value);
  else store<u32>(at, value);
}

/** Worst-case compressed size of `len` input bytes. */
export function lz4Bound(len: usize): usize {
  return len + len / 255 + 16;
}

// @ts-ignore: decorator
@inline
function matchLength(p: usize, m: usize, limit: usize): usize {
  const start = p;
  while (p + 8 <= limit) {
    const diff = load<u64>(p) ^ load<u64>(m);
    if (diff != 0) return p - start + <usize>(ctz<u64>(diff) >> 3);
    p += 8;
    m += 8;
  }
  while (p < limit && load<u8>(p) == load<u8>(m)) {
    p++;
    m++;
  }
  return p - start;
}

/**
 * Copies `len` bytes in 16-byte steps, writing up to 15 bytes past dst + len
 * and reading up to 15 past src + len: callers check both stay in bounds.
 */
// @ts-ignore: decorator
@inline
function wildCopy16(dst: usize, src: usize, len: usize): void {
  const end = dst + len;
  do {
    v128.store(dst, v128.load(src));
    dst += 16;
    src += 16;
  } while (dst < end);
}

// @ts-ignore: decorator
@inline
function writeLength(op: usize, rem: usize): usize {
  while (rem >= 255) {
    store<u8>(op, 255);
    op++;
    rem -= 255;
  }
  store<u8>(op, <u8>rem);
  return op + 1;
}

/**
 * Compresses `len` bytes at `src` into at most `cap` bytes at `dst` (greedy,
 * LZ4 "fast" strategy; `accel` >= 1 trades ratio for speed). Returns the
 * compressed length, or LZ4_ERR_OUTPUT_FULL if it would not fit in `cap`.
 */
export function lz4Compress(src: usize, len: usize, dst: usize, cap: usize, accel: u32): isize {
  // A copy of the loop per table, each with its size and entry width as
  // constants (see HASH_LOG_NARROW).
  if (len < NARROW_INPUT) return compressWith(src, len, dst, cap, accel, 32 - HASH_LOG_NARROW, true);
  if (len == NARROW_INPUT) return compressWith(src, len, dst, cap, accel, 32 - HASH_LOG_LARGE, true);
  return compressWith(src, len, dst, cap, accel, 32 - HASH_LOG_LARGE, false);
}

// @ts-ignore: decorator
@inline
function compressWith(src: usize, len: usize, dst: usize, cap: usize, accel: u32, shift: u32, narrow: bool): isize {
  const iend = src + len;
  const oend = dst + cap;
  let op = dst;
  let anchor = src;
  if (accel < 1) accel = 1;
  if (len > MF_LIMIT) {
    let base: u32 = 0;
    if (narrow) {
      memory.fill(TABLE_NARROW, 0, 2 << (32 - shift));
    } else {
      if (<u64>epoch + <u64>len + EPOCH_GAP > <u64>0xffffffff) {
        memory.fill(TABLE, 0, 4 << HASH_LOG_LARGE);
        epoch = EPOCH_GAP;
      }
      base = epoch;
      epoch += <u32>len + EPOCH_GAP;
    }
    // Table value of position p is p - origin (>= base). In the wide table,
    // values left by earlier calls are all more than MAX_OFFSET below base,
    // so the one distance test below also rejects them; in the narrow one
    // every value is an earlier position of this input, within MAX_OFFSET.
    const origin = src - <usize>base;
    const mflimit = iend - MF_LIMIT;
    const matchlimit = iend - LAST_LITERALS;
    let ip = src;
    setSlot(slot(load<u32>(ip), shift, narrow), <u32>(ip - origin), narrow);
    ip++;
    while (true) {
      // Find a match, stepping faster the longer nothing matches.
      let match: usize = 0;
      let attempts: u32 = accel << SKIP_TRIGGER;
      let step: usize = 1;
      while (true) {
        if (ip > mflimit) break;
        const seq = load<u32>(ip);
        const h = slot(seq, shift, narrow);
        const cur = <u32>(ip - origin);
        const v = getSlot(h, narrow);
        setSlot(h, cur, narrow);
        if (narrow || cur - v <= <u32>MAX_OFFSET) {
          match = origin + <usize>v;
          if (load<u32>(match) == seq) break;
        }
        ip += step;
        step = <usize>(attempts++ >> SKIP_TRIGGER);
      }
      if (ip > mflimit) break;
      while (ip > anchor && match > src) {
        if (load<u8>(ip - 1) != load<u8>(match - 1)) break;
        ip--;
        match--;
      }
      const mlen = MIN_MATCH + matchLength(ip + MIN_MATCH, match + MIN_MATCH, matchlimit);
      const litLen = ip - anchor;
      const ml = mlen - MIN_MATCH;
      // Room for token, lengths, literals and offset; the exact test (with its
      // divisions) only when the cheap over-estimate says it may not fit.
      if (op + litLen + ((litLen + ml) >> 7) + 8 > oend) {
        if (op + litLen + litLen / 255 + ml / 255 + 5 > oend) return LZ4_ERR_OUTPUT_FULL;
      }
      const tokenAt = op;
      op++;
      let token: u32;
      if (litLen >= 15) {
        token = 15 << 4;
        op = writeLength(op, litLen - 15);
      } else {
        token = <u32>litLen << 4;
      }
      if (op + litLen + 16 <= oend && ip + 16 <= iend) {
        wildCopy16(op, anchor, litLen);
      } else {
        memory.copy(op, anchor, litLen);
      }
      op += litLen;
      store<u16>(op, <u16>(ip - match));
      op += 2;
      if (ml >= 15) {
        token |= 15;
        op = writeLength(op, ml - 15);
      } else {
        token |= <u32>ml;
      }
      store<u8>(tokenAt, <u8>token);
      ip += mlen;
      anchor = ip;
      if (ip > mflimit) break;
      setSlot(slot(load<u32>(ip - 2), shift, narrow), <u32>(ip - 2 - origin), narrow);
    }
  }
  const litLen = iend - anchor;
  if (op + litLen + litLen / 255 + 2 > oend) return LZ4_ERR_OUTPUT_FULL;
  if (litLen >= 15) {
    store<u8>(op, 15 << 4);
    op = writeLength(op + 1, litLen - 15);
  } else {
    store<u8>(op, <u8>(litLen << 4));
    op++;
  }
  memory.copy(op, anchor, litLen);
  op += litLen;
  return <isize>(op - dst);
}

/**
 * Decompresses the LZ4 block of `srcLen` bytes at `src` into at most `dstCap`
 * bytes at `dst`. Returns the decompressed length or a negative LZ4_ERR_*.
 * Never reads outside [src, src+srcLen) nor writes outside [dst, dst+dstCap);
 * every sequence consumes input, so it always terminates.
 */
export function lz4Decompress(src: usize, srcLen: usize, dst: usize, dstCap: usize): isize {
  let ip = src;
  const iend = src + srcLen;
  let op = dst;
  const oend = dst + dstCap;
  while (true) {
    if (ip >= iend) return LZ4_ERR_TRUNCATED;
    const token = <u32>load<u8>(ip);
    ip++;
    let litLen = <usize>(token >> 4);
    if (litLen != 15 && ip + 32 <= iend && op + 32 <= oend) {
      // Fast path, far from both ends: one 16-byte over-copy, and the block
      // cannot end here (at least 17 input bytes remain).
      v128.store(op, v128.load(ip));
      ip += litLen;
      op += litLen;
    } else {
      if (litLen == 15) {
        let b: u32 = 255;
        while (b == 255) {
          if (ip >= iend) return LZ4_ERR_TRUNCATED;
          b = load<u8>(ip);
          ip++;
          litLen += b;
        }
      }
      if (litLen > iend - ip) return LZ4_ERR_TRUNCATED;
      if (litLen > oend - op) return LZ4_ERR_OUTPUT_OVERFLOW;
      if (litLen <= 32 && ip + 32 <= iend && op + 32 <= oend) {
        // Over-copy short literals; the spare bytes are inside the output and
        // are either overwritten next or beyond the final length.
        v128.store(op, v128.load(ip));
        v128.store(op, v128.load(ip, 16), 16);
      } else if (ip + litLen + 16 <= iend && op + litLen + 16 <= oend) {
        wildCopy16(op, ip, litLen);
      } else {
        memory.copy(op, ip, litLen);
      }
      ip += litLen;
      op += litLen;
      if (ip == iend) return <isize>(op - dst);
    }
    if (iend - ip < 2) return LZ4_ERR_TRUNCATED;
    const offset = <usize>load<u16>(ip);
    ip += 2;
    if (offset == 0 || offset > op - dst) return LZ4_ERR_BAD_OFFSET;
    let mlen = <usize>(token & 15);
    if (mlen != 15 && offset >= 16 && op + 18 <= oend) {
      // Short match (4..18 bytes): copy 18; with offset >= 16 the last two
      // source bytes are at most the ones the 16-byte store just wrote.
      const m = op - offset;
      v128.store(op, v128.load(m));
      store<u16>(op, load<u16>(m, 16), 16);
      op += mlen + MIN_MATCH;
      continue;
    }
    if (mlen == 15) {
      let b: u32 = 255;
      while (b == 255) {
        if (ip >= iend) return LZ4_ERR_TRUNCATED;
        b = load<u8>(ip);
        ip++;
        mlen += b;
      }
    }
    mlen += MIN_MATCH;
    if (mlen > oend - op) return LZ4_ERR_OUTPUT_OVERFLOW;
    const end = op + mlen;
    let m = op - offset;
    if (offset >= 16 && end + 16 <= oend) {
      // Over-copy in 16-byte steps: every load reads bytes already final
      // (offset >= 16), and the spare bytes stay inside the output.
      do {
        v128.store(op, v128.load(m));
        op += 16;
        m += 16;
      } while (op < end);
      op = end;
    } else if (offset >= 8 && end + 8 <= oend) {
      do {
        store<u64>(op, load<u64>(m));
        op += 8;
        m += 8;
      } while (op < end);
      op = end;
    } else if (offset >= 8) {
      if (offset >= mlen && mlen > 32) {
        memory.copy(op, m, mlen);
        op = end;
      } else {
        while (op + 8 <= end) {
          store<u64>(op, load<u64>(m));
          op += 8;
          m += 8;
        }
      }
    } else if (offset == 1) {
      memory.fill(op, load<u8>(m), mlen);
      op = end;
    }
    while (op < end) {
      store<u8>(op, load<u8>(m));
      op++;
      m++;
    }
  }
}
