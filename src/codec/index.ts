export * from './batch';
export type { Codec, CodecFactory, CodecOptions } from './codec';
export { codecNames, createCodec, isCodecName, defaultDecoderName } from './registry';
export type { CodecName } from './registry';
export { BatchCodec } from './batch-codec';
export type { BatchCodecOptions, BatchColumns, DecodedColumns, EncodedColumns, HashedColumns } from './batch-codec';
