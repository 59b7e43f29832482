// Encodes and decodes whole batches on the calling thread. Workers of the pool
// run one BatchCodec each; benchmarks and tests use it directly.
import { KernelStatus, MetaRecord } from '../kernels/kernel-abi';
import { Kernels, META_SIZE } from '../kernels/kernel-loader';
import { BlockEncoding, BlockStatus, checkBlockSize } from './batch';
import type { Codec } from './codec';
import { createCodec, defaultDecoderName } from './registry';

/** Batch entries as parallel typed arrays (cheap to move between threads). */
export interface BatchColumns {
  encodings: Uint8Array;
  lengths: Uint32Array;
  checksums: BigUint64Array;
}

export interface EncodedColumns extends BatchColumns {
  payload: Uint8Array;
}

export interface DecodedColumns {
  blocks: Uint8Array;
  status: Uint8Array;
  failed: number;
}

export interface HashedColumns {
  checksums: BigUint64Array;
  /** 1 where the block is all zeros. */
  zero: Uint8Array;
}

export interface BatchCodecOptions {
  codec: string;
  level?: number;
  acceleration?: number;
  /** Path of kernels.wasm; defaults to build/kernels.wasm. */
  kernelPath?: string;
}

const align = (n: number): number => (n + 15) & ~15;

/** Copies kernel output into `into` (reused memory, no page faults) or a new buffer. */
function copyOut(bytes: Uint8Array, into?: Uint8Array): Uint8Array {
  if (!into) return bytes.slice();
  if (into.length < bytes.length) {
    throw new RangeError(`codec: output buffer of ${into.length} bytes is too small for ${bytes.length}`);
  }
  into.set(bytes);
  return into.subarray(0, bytes.length);
}

export class BatchCodec {
  readonly codec: Codec;
  private readonly kernels: Kernels;
  /** A second instance for codecs, so their calls never clobber a batch in flight. */
  private readonly codecKernels: Kernels;
  private readonly acceleration: number;
  private readonly decoders = new Map<number, Codec | null>();

  constructor(private readonly options: BatchCodecOptions) {
    this.kernels = new Kernels(options.kernelPath);
    this.codecKernels = new Kernels(options.kernelPath);
    this.acceleration = options.acceleration ?? 1;
    if (!Number.isInteger(this.acceleration) || this.acceleration < 1 || this.acceleration > 65536) {
      throw new RangeError(`codec: acceleration must be an integer from 1 to 65536 (got ${this.acceleration})`);
    }
    this.codec = createCodec(options.codec, {
      kernels: this.codecKernels,
      level: options.level,
      acceleration: this.acceleration,
    });
  }

  private countOf(bytes: number, blockSize: number, where: string): number {
    checkBlockSize(blockSize, where);
    if (bytes % blockSize !== 0) {
      throw new RangeError(`${where}: ${bytes} bytes is not a whole number of ${blockSize}-byte blocks`);
    }
    return bytes / blockSize;
  }

  /**
   * Encodes a batch. The payload is written to `into` when given (it must
   * hold blocks.length bytes; it may be `blocks` itself, which is read in
   * full before anything is written), else to a new buffer.
   */
  encode(blocks: Uint8Array, blockSize: number, into?: Uint8Array): EncodedColumns {
    const count = this.countOf(blocks.length, blockSize, 'encode');
    const k = this.kernels;
    const metaPtr = k.reserve(align(count * META_SIZE) + 2 * blocks.length);
    const inPtr = metaPtr + align(count * META_SIZE);
    const outPtr = inPtr + blocks.length;
    k.memory.set(blocks, inPtr);
    const cols: BatchColumns = {
      encodings: new Uint8Array(count),
      lengths: new Uint32Array(count),
      checksums: new BigUint64Array(count),
    };
    if (this.codec.kernelMode !== undefined) {
      const total = k.raw.encodeBatch(
        inPtr,
        count,
        blockSize,
        outPtr,
        metaPtr,
        this.codec.kernelMode,
        this.acceleration,
      );
      this.readMeta(metaPtr, cols);
      return { ...cols, payload: copyOut(k.memory.subarray(outPtr, outPtr + total), into) };
    }
    k.raw.hashBatch(inPtr, count, blockSize, metaPtr);
    this.readMeta(metaPtr, cols);
    const parts: Uint8Array[] = [];
    let total = 0;
    for (let i = 0; i < count; i++) {
      if (cols.encodings[i] === BlockEncoding.Zero) continue;
      // Read the kernel's copy, so that `into` may alias `blocks`.
      const block = k.memory.subarray(inPtr + i * blockSize, inPtr + (i + 1) * blockSize);
      const packed = this.codec.compressBlock?.(block) ?? null;
      const part = packed ?? block;
      cols.encodings[i] = packed ? this.codec.encoding : BlockEncoding.Raw;
      cols.lengths[i] = part.length;
      parts.push(part);
      total += part.length;
    }
    const payload = into ? into.subarray(0, total) : new Uint8Array(total);
    let at = 0;
    for (const part of parts) {
      payload.set(part, at);
      at += part.length;
    }
    return { ...cols, payload };
  }

  /**
   * Decodes a batch into `into` when given (count * blockSize bytes; it may
   * alias `payload`, which is fully consumed first), else into a new buffer.
   */
  decode(payload: Uint8Array, cols: BatchColumns, blockSize: number, into?: Uint8Array): DecodedColumns {
    checkBlockSize(blockSize, 'decode');
    const count = cols.encodings.length;
    if (cols.lengths.length !== count || cols.checksums.length !== count) {
      throw new RangeError(
        `decode: entry columns disagree (${count} encodings, ${cols.lengths.length} lengths, ${cols.checksums.length} checksums)`,
      );
    }
    const k = this.kernels;
    const metaBytes = align(count * META_SIZE);
    const metaPtr = k.reserve(metaBytes + align(payload.length) + count * blockSize);
    const payloadPtr = metaPtr + metaBytes;
    const outPtr = payloadPtr + align(payload.length);
    const mem = k.memory;
    const dv = new DataView(mem.buffer, mem.byteOffset);
    for (let i = 0; i < count; i++) {
      const m = metaPtr + i * META_SIZE;
      dv.setBigUint64(m + MetaRecord.Checksum, cols.checksums[i], true);
      dv.setUint32(m + MetaRecord.Length, cols.lengths[i], true);
      dv.setUint8(m + MetaRecord.Encoding, cols.encodings[i]);
      dv.setUint8(m + MetaRecord.Status, KernelStatus.Ok);
    }
    mem.set(payload, payloadPtr);
    // The kernel decodes LZ4 itself unless the chosen codec is another LZ4 decoder.
    const kernelLz4 = this.codec.encoding !== BlockEncoding.Lz4 || this.codec.kernelMode !== undefined;
    const kernelFailed = k.raw.decodeBatch(
      payloadPtr,
      payload.length,
      metaPtr,
      count,
      blockSize,
      outPtr,
      kernelLz4 ? 1 : 0,
    );
    let foreign = false;
    let cursor = 0;
    for (let i = 0; i < count; i++) {
      const m = metaPtr + i * META_SIZE;
      const start = cursor;
      cursor += cols.lengths[i];
      if (mem[m + MetaRecord.Status] === KernelStatus.Foreign) {
        foreign = true;
        const decoder = this.decoderFor(cols.encodings[i]);
        if (!decoder?.decompressBlock) continue; // stays UnknownEncoding
        if (cursor > payload.length) {
          mem[m + MetaRecord.Status] = BlockStatus.Malformed;
          continue;
        }
        const out = new Uint8Array(blockSize);
        try {
          decoder.decompressBlock(payload.subarray(start, cursor), out);
          mem.set(out, outPtr + i * blockSize);
          mem[m + MetaRecord.Status] = KernelStatus.Unverified;
        } catch {
          mem[m + MetaRecord.Status] = BlockStatus.Malformed;
        }
      }
    }
    // The kernel's count is final unless JS decoded blocks after it.
    const failed = foreign ? k.raw.verifyBatch(metaPtr, count, blockSize, outPtr) : kernelFailed;
    const status = new Uint8Array(count);
    for (let i = 0; i < count; i++) {
      status[i] = mem[metaPtr + i * META_SIZE + MetaRecord.Status];
      if (status[i] !== BlockStatus.Ok) mem.fill(0, outPtr + i * blockSize, outPtr + (i + 1) * blockSize);
    }
    return { blocks: copyOut(mem.subarray(outPtr, outPtr + count * blockSize), into), status, failed };
  }

  hash(blocks: Uint8Array, blockSize: number): HashedColumns {
    const count = this.countOf(blocks.length, blockSize, 'hash');
    const k = this.kernels;
    const metaPtr = k.reserve(align(count * META_SIZE) + blocks.length);
    const inPtr = metaPtr + align(count * META_SIZE);
    k.memory.set(blocks, inPtr);
    k.raw.hashBatch(inPtr, count, blockSize, metaPtr);
    const cols: BatchColumns = {
      encodings: new Uint8Array(count),
      lengths: new Uint32Array(count),
      checksums: new BigUint64Array(count),
    };
    this.readMeta(metaPtr, cols);
    const zero = new Uint8Array(count);
    for (let i = 0; i < count; i++) zero[i] = cols.encodings[i] === BlockEncoding.Zero ? 1 : 0;
    return { checksums: cols.checksums, zero };
  }

  private readMeta(metaPtr: number, cols: BatchColumns): void {
    const mem = this.kernels.memory;
    const dv = new DataView(mem.buffer, mem.byteOffset);
    for (let i = 0; i < cols.encodings.length; i++) {
      const m = metaPtr + i * META_SIZE;
      cols.checksums[i] = dv.getBigUint64(m + MetaRecord.Checksum, true);
      cols.lengths[i] = dv.getUint32(m + MetaRecord.Length, true);
      cols.encodings[i] = dv.getUint8(m + MetaRecord.Encoding);
    }
  }

  private decoderFor(encoding: number): Codec | null {
    if (this.codec.encoding === encoding && this.codec.decompressBlock) return this.codec;
    let decoder = this.decoders.get(encoding);
    if (decoder === undefined) {
      const name = defaultDecoderName(encoding as BlockEncoding);
      decoder = name
        ? createCodec(name, { kernels: this.codecKernels, level: this.options.level, acceleration: this.acceleration })
        : null;
      this.decoders.set(encoding, decoder);
    }
    return decoder;
  }
}
