import t from 'tap';
import { WireRatio } from '../src/migrate/wire-ratio';

t.test('the ratio follows the wire bytes per image byte of recent deliveries', async (t) => {
  const r = new WireRatio();
  t.equal(r.ratio, 1, 'one wire byte per image byte before anything was seen');
  r.observe({ bytesOnWire: 0, bytesBeforeEncoding: 0 });
  r.observe({ bytesOnWire: 50, bytesBeforeEncoding: 100 });
  t.equal(r.ratio, 0.5);
  t.equal(r.wireBytes(1000), 500);
});

t.test('a step from references to raw data is planned for at once', async (t) => {
  const r = new WireRatio(8);
  let wire = 0;
  let image = 0;
  r.observe({ bytesOnWire: wire, bytesBeforeEncoding: image });
  for (let i = 0; i < 8; i++) r.observe({ bytesOnWire: (wire += 1000), bytesBeforeEncoding: (image += 64_000) });
  t.ok(r.ratio < 0.02, `references: ${r.ratio}`);
  r.observe({ bytesOnWire: wire + 64_000, bytesBeforeEncoding: image + 64_000 });
  t.equal(r.ratio, 1, 'the latest delivery (raw) sets the prediction, not the average');
});

t.test('deliveries without image bytes and counters that go back are ignored; bounds hold', async (t) => {
  const r = new WireRatio(8, 1 / 256, 2);
  r.observe({ bytesOnWire: 100, bytesBeforeEncoding: 100 });
  r.observe({ bytesOnWire: 200, bytesBeforeEncoding: 100 });
  t.equal(r.ratio, 1);
  r.observe({ bytesOnWire: 100, bytesBeforeEncoding: 200 });
  t.equal(r.ratio, 1, 'a counter that went backwards says nothing');
  r.observe({ bytesOnWire: 10_100, bytesBeforeEncoding: 300 });
  t.equal(r.ratio, 2, 'at most the ceiling');
  const z = new WireRatio(1);
  z.observe({ bytesOnWire: 0, bytesBeforeEncoding: 0 });
  z.observe({ bytesOnWire: 0, bytesBeforeEncoding: 1 << 30 });
  t.equal(z.ratio, 1 / 256, 'at least the floor');
});
