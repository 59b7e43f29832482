import t from 'tap';
import { BlockEncoding, ENCODING_NAMES } from '../src/codec/batch';
import { toBlockEncoding, toWireEncoding, wireEncodingName } from '../src/wire/encoding-map';
import { WireEncoding } from '../src/wire/protocol';

const BLOCK = [BlockEncoding.Zero, BlockEncoding.Raw, BlockEncoding.Lz4, BlockEncoding.Deflate];

t.test('the wire numbers the data-plane encodings as the data plane does', async (t) => {
  // docs/wire-protocol.md lists these numbers; a change would break older peers.
  t.same(
    BLOCK.map((b) => toWireEncoding(b)),
    [0, 1, 2, 3],
  );
  t.equal(WireEncoding.Reference, 4);
});

t.test('every block encoding round trips through the wire and keeps its name', async (t) => {
  for (const b of BLOCK) {
    const w = toWireEncoding(b);
    t.equal(toBlockEncoding(w as Exclude<WireEncoding, WireEncoding.Reference>), b);
    t.equal(wireEncodingName(w), ENCODING_NAMES[b]);
  }
  t.same(Object.values(ENCODING_NAMES), ['zero', 'raw', 'lz4', 'deflate']);
});

t.test('a reference and an unknown number get names; an unknown number reaches the decoder as is', async (t) => {
  t.equal(wireEncodingName(WireEncoding.Reference), 'reference');
  const unknown = 9 as WireEncoding.Raw; // what decodeBatchMeta yields for a byte no encoding has
  t.equal(wireEncodingName(unknown), 'encoding 9');
  t.equal(toBlockEncoding(unknown), 9);
});
