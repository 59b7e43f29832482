import t from 'tap';
import { CodecChooser } from '../src/wire/codec-chooser';
import { DedupeTable } from '../src/wire/dedupe-table';

t.test('a fixed codec is always used', async (t) => {
  const c = new CodecChooser('deflate', ['none', 'lz4', 'deflate'], 2);
  for (let i = 0; i < 40; i++) t.equal(c.current, 'deflate');
});

t.test('auto picks the codec with the highest effective rate for the link', async (t) => {
  let now = 0;
  const c = new CodecChooser('auto', ['none', 'lz4', 'deflate'], 2, () => now);
  const feed = (link: number) => {
    c.recordLinkRate(link);
    for (let i = 0; i < 50; i++) {
      now += 100;
      // none: 1x at 4 GB/s; lz4: 2.5x at 500 MB/s; deflate: 4x at 40 MB/s (per worker)
      c.recordEncode('none', 1 << 20, 1 << 20, 0.25);
      c.recordEncode('lz4', 1 << 20, (1 << 20) / 2.5, 2);
      c.recordEncode('deflate', 1 << 20, (1 << 20) / 4, 25);
    }
  };
  feed(1.25e6); // 10 Mbit/s: deflate moves 5 MB/s of data, lz4 3.1, none 1.25
  t.equal(c.selected, 'deflate', 'slow link: deflate');
  for (let i = 0; i < 20; i++) feed(125e6); // 1 Gbit/s: lz4 312 MB/s, deflate CPU-bound at 84, none 125
  t.equal(c.selected, 'lz4', 'fast link: lz4');
  for (let i = 0; i < 30; i++) feed(5e9); // 40 Gbit/s: none 5 GB/s... bounded by its CPU 8.4 GB/s
  t.equal(c.selected, 'none', 'very fast link: none');
  const tried = new Set<string>();
  for (let i = 0; i < 64; i++) tried.add(c.current);
  t.same([...tried].sort(), ['deflate', 'lz4', 'none'], 'every codec is tried now and then');
});

t.test('dedupe table: first sighting is remembered, later ones refer to it, bounded', async (t) => {
  const d = new DedupeTable(3);
  t.equal(d.lookupOrAdd(1n, 10), -1);
  t.equal(d.lookupOrAdd(1n, 11), 10);
  t.equal(d.lookupOrAdd(1n, 10), -1, 'a block is not a reference to itself');
  d.lookupOrAdd(2n, 20);
  d.lookupOrAdd(3n, 30);
  d.lookupOrAdd(4n, 40); // evicts checksum 1
  t.equal(d.size, 3);
  t.equal(d.lookupOrAdd(1n, 12), -1, 'the oldest was forgotten');
});
