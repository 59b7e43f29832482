// Node's zlib (raw deflate), for slow links where ratio matters more than CPU.
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { BlockEncoding } from './batch';
import type { Codec, CodecFactory } from './codec';

export const DEFAULT_DEFLATE_LEVEL = 6;

export const createDeflateCodec: CodecFactory = ({ level = DEFAULT_DEFLATE_LEVEL }): Codec => {
  if (!Number.isInteger(level) || level < 0 || level > 9) {
    throw new RangeError(`codec deflate: level must be an integer from 0 to 9 (got ${level})`);
  }
  return {
    name: 'deflate',
    encoding: BlockEncoding.Deflate,
    compressBlock(block) {
      // One output chunk of the block's size: Node's default of 16 KiB is garbage four times as large.
      const out = deflateRawSync(block, { level, chunkSize: Math.max(64, block.length) });
      return out.length < block.length ? out : null;
    },
    decompressBlock(payload, out) {
      let result: Buffer;
      try {
        // maxOutputLength bounds a hostile stream (zip bomb) to the block size; the output is one chunk of it.
        result = inflateRawSync(payload, { maxOutputLength: out.length, chunkSize: Math.max(64, out.length) });
      } catch (err) {
        throw new Error(`deflate: malformed block: ${(err as Error).message}`, { cause: err });
      }
      if (result.length !== out.length) {
        throw new Error(`deflate: block decodes to ${result.length} bytes, expected ${out.length}`);
      }
      out.set(result);
    },
  };
};
