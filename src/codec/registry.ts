// Codecs by name. Adding a codec: one file in this folder, one line here.
import { BlockEncoding } from './batch';
import type { Codec, CodecFactory, CodecOptions } from './codec';
import { createDeflateCodec } from './deflate';
import { createLz4Codec } from './lz4';
import { createLz4WasmCodec } from './lz4-wasm';
import { createNoneCodec } from './none';

const CODECS: Record<string, CodecFactory> = {
  none: createNoneCodec,
  lz4: createLz4Codec,
  'lz4-wasm': createLz4WasmCodec,
  deflate: createDeflateCodec,
};

/** Codec that decodes an encoding when the batch's own codec does not. */
const DEFAULT_DECODER: Partial<Record<BlockEncoding, string>> = {
  [BlockEncoding.Lz4]: 'lz4',
  [BlockEncoding.Deflate]: 'deflate',
};

export type CodecName = 'none' | 'lz4' | 'lz4-wasm' | 'deflate';

export function codecNames(): string[] {
  return Object.keys(CODECS);
}

export function isCodecName(name: string): boolean {
  return Object.prototype.hasOwnProperty.call(CODECS, name);
}

export function createCodec(name: string, options: CodecOptions): Codec {
  if (!isCodecName(name)) {
    throw new RangeError(`codec: unknown codec "${name}" (known: ${codecNames().join(', ')})`);
  }
  return CODECS[name](options);
}

export function defaultDecoderName(encoding: BlockEncoding): string | undefined {
  return DEFAULT_DECODER[encoding];
}
