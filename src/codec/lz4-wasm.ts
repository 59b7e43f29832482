// The reference: lz4-wasm (lz4_flex compiled to wasm), one call per block. Its
// output is a raw LZ4 block behind a u32 little-endian length prefix, which is
// stripped here, so its blocks are interchangeable with the kernel's.
import type * as Lz4Wasm from 'lz4-wasm-nodejs';
import { BlockEncoding } from './batch';
import type { Codec, CodecFactory } from './codec';

/** Loaded with the first codec: its WebAssembly memory is a megabyte in every worker that never uses it. */
let lz4Wasm: typeof Lz4Wasm | undefined;

export const createLz4WasmCodec: CodecFactory = (): Codec => {
  const { compress, decompress } = (lz4Wasm ??= require('lz4-wasm-nodejs') as typeof Lz4Wasm);
  return {
    name: 'lz4-wasm',
    encoding: BlockEncoding.Lz4,
    compressBlock(block) {
      const out = compress(block);
      return out.length - 4 < block.length ? out.subarray(4) : null;
    },
    decompressBlock(payload, out) {
      const framed = new Uint8Array(payload.length + 4);
      new DataView(framed.buffer).setUint32(0, out.length, true);
      framed.set(payload, 4);
      let result: Uint8Array;
      try {
        result = decompress(framed);
      } catch (err) {
        throw new Error(`lz4-wasm: malformed block: ${(err as Error).message ?? String(err)}`, { cause: err });
      }
      if (result.length !== out.length) {
        throw new Error(`lz4-wasm: block decodes to ${result.length} bytes, expected ${out.length}`);
      }
      out.set(result);
    },
  };
};
