// Block encodings between the data plane (BlockEncoding, src/codec/encodings.ts)
// and the wire (WireEncoding, src/wire/protocol.ts). The wire numbers the four
// data-plane encodings as the data plane does and adds Reference; this table
// is the one place that pairs them.
import { BlockEncoding, ENCODING_NAMES } from '../codec/batch';
import { WireEncoding } from './protocol';

const WIRE_OF_BLOCK: Readonly<Record<BlockEncoding, WireEncoding>> = {
  [BlockEncoding.Zero]: WireEncoding.Zero,
  [BlockEncoding.Raw]: WireEncoding.Raw,
  [BlockEncoding.Lz4]: WireEncoding.Lz4,
  [BlockEncoding.Deflate]: WireEncoding.Deflate,
};

const BLOCK_OF_WIRE = new Map<WireEncoding, BlockEncoding>(
  (Object.keys(WIRE_OF_BLOCK) as unknown as BlockEncoding[]).map((block) => [WIRE_OF_BLOCK[block], Number(block)]),
);

/** How the wire carries a block the codecs encoded. */
export function toWireEncoding(encoding: BlockEncoding): WireEncoding {
  return WIRE_OF_BLOCK[encoding];
}

/**
 * The encoding to decode a wire block with. A number ferry does not know is
 * handed on as it is: the decoder reports that block as
 * BlockStatus.UnknownEncoding (and the block is fetched again).
 */
export function toBlockEncoding(encoding: Exclude<WireEncoding, WireEncoding.Reference>): BlockEncoding {
  const unknown: number = encoding;
  return BLOCK_OF_WIRE.get(encoding) ?? unknown;
}

/** The name of a wire encoding, as statistics show it. */
export function wireEncodingName(encoding: WireEncoding): string {
  if (encoding === WireEncoding.Reference) return 'reference';
  const block = BLOCK_OF_WIRE.get(encoding);
  return block === undefined ? `encoding ${encoding}` : ENCODING_NAMES[block];
}
