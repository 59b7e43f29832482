// LZ4 block compression by the AssemblyScript kernel, whole batch in one call.
import { KernelMode, lz4ErrorMessage } from '../kernels/kernel-loader';
import { BlockEncoding } from './batch';
import type { Codec, CodecFactory } from './codec';

export const createLz4Codec: CodecFactory = ({ kernels, acceleration = 1 }): Codec => ({
  name: 'lz4',
  encoding: BlockEncoding.Lz4,
  kernelMode: KernelMode.Lz4,
  compressBlock(block) {
    const out = kernels.lz4Compress(block, acceleration);
    return out.length < block.length ? out : null;
  },
  decompressBlock(payload, out) {
    const src = kernels.reserve(((payload.length + 15) & ~15) + out.length);
    const dst = src + ((payload.length + 15) & ~15);
    kernels.memory.set(payload, src);
    const n = kernels.raw.lz4Decompress(src, payload.length, dst, out.length);
    if (n < 0) throw new Error(`lz4: malformed block: ${lz4ErrorMessage(n)}`);
    if (n !== out.length) throw new Error(`lz4: block decodes to ${n} bytes, expected ${out.length}`);
    out.set(kernels.view(dst, n));
  },
});
