// xxHash64, written from doc/xxhash_spec.md (XXH64 section).

const P1: u64 = 0x9e3779b185ebca87;
const P2: u64 = 0xc2b2ae3d27d4eb4f;
const P3: u64 = 0x165667b19e3779f9;
const P4: u64 = 0x85ebca77c2b2ae63;
const P5: u64 = 0x27d4eb2f165667c5;

// @ts-ignore: decorator
@inline
function round(acc: u64, lane: u64): u64 {
  acc += lane * P2;
  acc = rotl<u64>(acc, 31);
  return acc * P1;
}

// @ts-ignore: decorator
@inline
function mergeRound(acc: u64, val: u64): u64 {
  acc ^= round(0, val);
  return acc * P1 + P4;
}

/** xxh64 of `len` bytes at `ptr`. */
export function xxh64(ptr: usize, len: usize, seed: u64): u64 {
  let p = ptr;
  const end = ptr + len;
  let acc: u64;
  if (len >= 32) {
    let v1 = seed + P1 + P2;
    let v2 = seed + P2;
    let v3 = seed;
    let v4 = seed - P1;
    const limit = end - 32;
    do {
      v1 = round(v1, load<u64>(p));
      v2 = round(v2, load<u64>(p, 8));
      v3 = round(v3, load<u64>(p, 16));
      v4 = round(v4, load<u64>(p, 24));
      p += 32;
    } while (p <= limit);
    acc = rotl<u64>(v1, 1) + rotl<u64>(v2, 7) + rotl<u64>(v3, 12) + rotl<u64>(v4, 18);
    acc = mergeRound(acc, v1);
    acc = mergeRound(acc, v2);
    acc = mergeRound(acc, v3);
    acc = mergeRound(acc, v4);
  } else {
    acc = seed + P5;
  }
  acc += <u64>len;
  while (p + 8 <= end) {
    acc ^= round(0, load<u64>(p));
    acc = rotl<u64>(acc, 27) * P1 + P4;
    p += 8;
  }
  if (p + 4 <= end) {
    acc ^= <u64>load<u32>(p) * P1;
    acc = rotl<u64>(acc, 23) * P2 + P3;
    p += 4;
  }
  while (p < end) {
    acc ^= <u64>load<u8>(p) * P5;
    acc = rotl<u64>(acc, 11) * P1;
    p++;
  }
  acc ^= acc >> 33;
  acc *= P2;
  acc ^= acc >> 29;
  acc *= P3;
  acc ^= acc >> 32;
  return acc;
}

/** 1 when all `len` bytes at `ptr` are zero, else 0. */
export function isZero(ptr: usize, len: usize): bool {
  let p = ptr;
  const end = ptr + len;
  while (p + 32 <= end) {
    if ((load<u64>(p) | load<u64>(p, 8) | load<u64>(p, 16) | load<u64>(p, 24)) != 0) return false;
    p += 32;
  }
  while (p + 8 <= end) {
    if (load<u64>(p) != 0) return false;
    p += 8;
  }
  while (p < end) {
    if (load<u8>(p) != 0) return false;
    p++;
  }
  return true;
}
