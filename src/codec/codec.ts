// The interface every block codec implements. A codec is one file in this
// folder plus one line in registry.ts.
import type { Kernels, KernelMode } from '../kernels/kernel-loader';
import type { BlockEncoding } from './batch';

export interface CodecOptions {
  /** The worker's kernel instance (hashing, zero test, LZ4). */
  kernels: Kernels;
  /** Compression level, for codecs that have one (deflate: 0..9). */
  level?: number;
  /** LZ4 acceleration (>= 1; higher is faster with a lower ratio). */
  acceleration?: number;
}

export interface Codec {
  readonly name: string;
  /** Encoding that this codec's compressed blocks are tagged with. */
  readonly encoding: BlockEncoding;
  /**
   * Set when the kernels run the whole batch (hash, zero test and compression)
   * in one call; compressBlock is then not used for encoding.
   */
  readonly kernelMode?: KernelMode;
  /** Compresses one block; returns null when the result is not smaller. */
  compressBlock?(block: Uint8Array): Uint8Array | null;
  /**
   * Decodes one payload of this codec's encoding into `out`, filling it
   * exactly; throws on malformed input.
   */
  decompressBlock?(payload: Uint8Array, out: Uint8Array): void;
}

export type CodecFactory = (options: CodecOptions) => Codec;
