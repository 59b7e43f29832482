// Loads build/kernels.wasm and wraps its pointer-and-length exports in typed
// methods that manage a scratch area in the module's linear memory.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { MetaRecord } from './kernel-abi';

export interface KernelExports {
  memory: WebAssembly.Memory;
  heapBase(): number;
  metaSize(): number;
  xxh64(ptr: number, len: number, seed: bigint): bigint;
  isZero(ptr: number, len: number): number;
  lz4Bound(len: number): number;
  lz4Compress(src: number, len: number, dst: number, cap: number, accel: number): number;
  lz4Decompress(src: number, srcLen: number, dst: number, dstCap: number): number;
  encodeBatch(
    inPtr: number,
    count: number,
    blockSize: number,
    outPtr: number,
    metaPtr: number,
    mode: number,
    accel: number,
  ): number;
  hashBatch(inPtr: number, count: number, blockSize: number, metaPtr: number): void;
  decodeBatch(
    payloadPtr: number,
    payloadLen: number,
    metaPtr: number,
    count: number,
    blockSize: number,
    outPtr: number,
    lz4: number,
  ): number;
  verifyBatch(metaPtr: number, count: number, blockSize: number, outPtr: number): number;
}

/** Size of one block metadata record in linear memory (src/kernels/kernel-abi.ts). */
export const META_SIZE: number = MetaRecord.Size;

export const enum KernelMode {
  Raw = 0,
  Lz4 = 1,
}

const LZ4_ERRORS: Record<number, string> = {
  [-1]: 'output buffer full',
  [-2]: 'input truncated',
  [-3]: 'output would exceed the stated length',
  [-4]: 'match offset points before the start of the output',
};

export function lz4ErrorMessage(code: number): string {
  return LZ4_ERRORS[code] ?? `error ${code}`;
}

/** Default location: build/src/kernels/kernel-loader.js → build/kernels.wasm. */
export function defaultKernelPath(): string {
  return join(__dirname, '..', '..', 'kernels.wasm');
}

let cachedModule: WebAssembly.Module | undefined;

function compiledModule(path: string): WebAssembly.Module {
  if (path !== defaultKernelPath()) return new WebAssembly.Module(readFileSync(path));
  cachedModule ??= new WebAssembly.Module(readFileSync(path));
  return cachedModule;
}

const align = (n: number): number => (n + 15) & ~15;

/**
 * A new array holding a copy of `bytes`. Every byte is overwritten at once,
 * so the memory need not be zeroed first: about twice as fast as slice() on
 * the few-KiB results of one block, which is a tenth of compressing it.
 */
function copyToNew(bytes: Uint8Array): Uint8Array {
  const out = Buffer.allocUnsafeSlow(bytes.length);
  out.set(bytes);
  return new Uint8Array(out.buffer, out.byteOffset, out.length);
}

/**
 * One instance of the kernels. Not thread-safe (one per worker); every call
 * reuses the same scratch area above the module's heap base.
 */
export class Kernels {
  readonly raw: KernelExports;
  private readonly base: number;
  private bytes: Uint8Array;

  constructor(path: string = defaultKernelPath()) {
    const instance = new WebAssembly.Instance(compiledModule(path), {
      env: {
        abort: (_msg: number, _file: number, line: number, col: number) => {
          throw new Error(`kernels: abort at ${line}:${col}`);
        },
      },
    });
    this.raw = instance.exports as unknown as KernelExports;
    if (this.raw.metaSize() !== META_SIZE) {
      throw new Error(`kernels: metadata record is ${this.raw.metaSize()} bytes, expected ${META_SIZE}`);
    }
    this.base = align(this.raw.heapBase());
    this.bytes = new Uint8Array(this.raw.memory.buffer);
  }

  /** Makes [heapBase, heapBase + size) usable; returns the heap base. */
  reserve(size: number): number {
    const need = this.base + size;
    if (need > this.bytes.length) {
      const have = this.raw.memory.buffer.byteLength;
      if (need > have) this.raw.memory.grow(Math.ceil((need - have) / 65536));
      this.bytes = new Uint8Array(this.raw.memory.buffer);
    }
    return this.base;
  }

  /** A view of linear memory; invalid after the next reserve(). */
  view(ptr: number, len: number): Uint8Array {
    return this.bytes.subarray(ptr, ptr + len);
  }

  get memory(): Uint8Array {
    return this.bytes;
  }

  xxh64(data: Uint8Array, seed: bigint = 0n): bigint {
    const p = this.reserve(data.length);
    this.bytes.set(data, p);
    // The i64 parameter takes any bigint modulo 2^64; the i64 result is signed.
    const h = this.raw.xxh64(p, data.length, seed);
    return h < 0n ? h + 0x10000000000000000n : h;
  }

  isZero(data: Uint8Array): boolean {
    const p = this.reserve(data.length);
    this.bytes.set(data, p);
    return this.raw.isZero(p, data.length) !== 0;
  }

  lz4Compress(data: Uint8Array, acceleration = 1): Uint8Array {
    const cap = data.length + Math.floor(data.length / 255) + 16;
    const src = this.reserve(align(data.length) + cap);
    const dst = src + align(data.length);
    this.bytes.set(data, src);
    const n = this.raw.lz4Compress(src, data.length, dst, cap, acceleration);
    if (n < 0) throw new Error(`lz4Compress: ${lz4ErrorMessage(n)}`);
    return copyToNew(this.bytes.subarray(dst, dst + n));
  }

  /** Throws on a malformed block or one that does not decode to exactly `length` bytes. */
  lz4Decompress(block: Uint8Array, length: number): Uint8Array {
    const src = this.reserve(align(block.length) + length);
    const dst = src + align(block.length);
    this.bytes.set(block, src);
    const n = this.raw.lz4Decompress(src, block.length, dst, length);
    if (n < 0) throw new Error(`lz4Decompress: malformed LZ4 block of ${block.length} bytes: ${lz4ErrorMessage(n)}`);
    if (n !== length) {
      throw new Error(`lz4Decompress: block decodes to ${n} bytes, expected ${length}`);
    }
    return copyToNew(this.bytes.subarray(dst, dst + n));
  }
}
