/**
 * A WELCOME that names another image than the one being copied (a source
 * that answered a reconnect with another disk) is refused, for good; one of
 * another wire version is refused too, but may be retried.
 */
import t from 'tap';
import { welcomeProblem } from '../src/upstream/wire-welcome';
import type { Welcome } from '../src/wire/messages';
import { WIRE_VERSION } from '../src/wire/protocol';

const welcome = (fields: Partial<Welcome> = {}): Welcome => ({
  version: WIRE_VERSION,
  imageSize: 8 << 20,
  identity: 'disk-a',
  codec: 'lz4',
  tracking: 0,
  trackingEpoch: '',
  ...fields,
});
const known = { identity: 'disk-a', size: 8 << 20 };

t.test('the first WELCOME says which image; later ones must name the same', async (t) => {
  t.equal(welcomeProblem(welcome(), null), null, 'the first stream: any image');
  t.equal(welcomeProblem(welcome(), known), null, 'the same image');
  for (const other of [
    welcome({ identity: 'disk-b' }),
    welcome({ identity: '' }),
    welcome({ imageSize: 16 << 20 }),
    welcome({ imageSize: 0 }),
    welcome({ imageSize: (8 << 20) - 4096 }),
  ]) {
    const p = welcomeProblem(other, known);
    t.ok(p?.otherImage, `refused for good: identity ${other.identity}, size ${other.imageSize}`);
    t.match(p?.reason, /another image/);
  }
});

t.test('a WELCOME of another wire version is refused, not as another image', async (t) => {
  for (const version of [0, 1, WIRE_VERSION + 1, 0xffff]) {
    const p = welcomeProblem(welcome({ version }), known);
    t.equal(p?.otherImage, false, `version ${version}`);
    t.match(p?.reason, new RegExp(`version ${version}`));
  }
});
