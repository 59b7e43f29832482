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
      const out = deflateRawSync(block, { level });
      return out.length < block.length ? out : null;
    },
    decompressBlock(payload, out) {
      let result: Buffer;
      try {
        // maxOutputLength bounds a hostile stream (zip bomb) to the block size.
        result = inflateRawSync(payload, { maxOutputLength: out.length });
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
