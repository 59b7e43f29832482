// Checksums and zero detection only; every other block travels raw.
import { KernelMode } from '../kernels/kernel-loader';
import { BlockEncoding } from './batch';
import type { Codec, CodecFactory } from './codec';

export const createNoneCodec: CodecFactory = (): Codec => ({
  name: 'none',
  encoding: BlockEncoding.Raw,
  kernelMode: KernelMode.Raw,
});
