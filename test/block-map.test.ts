import t, { Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BlockMap } from '../src/store/block-map';

function dir(t: Test): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-map-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

const header = {
  blockSize: 4096,
  imageSize: 100 * 4096 + 5,
  sourceIdentity: 'id-1',
  sourceUrl: 'nbd://h:1/x',
  phase: 'warming' as const,
  trackingEpoch: '',
  session: 'session-1',
};

/** Marks blocks held the way the block-state owner does. */
function hold(map: BlockMap, ...blocks: number[]): void {
  const writer = writers.get(map) ?? map.takeBitWriter();
  writers.set(map, writer);
  for (const b of blocks) writer.setHeld(b);
}
const writers = new WeakMap<BlockMap, ReturnType<BlockMap['takeBitWriter']>>();

t.test('bits reach disk only through persist, after the data sync', async (t) => {
  const p = path.join(dir(t), 'map');
  const map = BlockMap.create(p, header);
  t.equal(map.blockCount, 101);
  hold(map, 0, 100);
  t.equal(map.heldCount, 2);
  t.equal(BlockMap.open(p).heldCount, 0, 'not on disk before persist');
  const order: string[] = [];
  await map.persist(async () => {
    order.push('data');
    t.equal(BlockMap.open(p).heldCount, 0, 'bits still not on disk while the data syncs');
  });
  order.push('done');
  t.same(order, ['data', 'done']);
  const reopened = BlockMap.open(p);
  t.ok(reopened.isHeld(0) && reopened.isHeld(100) && !reopened.isHeld(1));
  t.equal(reopened.heldCount, 2);
  t.equal(reopened.sourceIdentity, 'id-1');
  reopened.close();
  map.close();
});

t.test('a failed data sync keeps the bits pending for the next persist', async (t) => {
  const p = path.join(dir(t), 'map');
  const map = BlockMap.create(p, header);
  hold(map, 7);
  await t.rejects(
    map.persist(async () => {
      throw new Error('EIO');
    }),
  );
  t.equal(BlockMap.open(p).heldCount, 0);
  await map.persist(async () => undefined);
  t.equal(BlockMap.open(p).heldCount, 1);
  map.close();
});

t.test('completion and source URL survive reopening through alternating header slots', async (t) => {
  const p = path.join(dir(t), 'map');
  const map = BlockMap.create(p, { ...header, imageSize: 3 * 4096 });
  await map.setSourceUrl('nbd://new:2/x');
  for (let b = 0; b < 3; b++) hold(map, b);
  t.ok(map.allHeld);
  await map.markComplete(async () => undefined);
  map.close();
  const again = BlockMap.open(p);
  t.ok(again.complete);
  t.equal(again.sourceUrl, 'nbd://new:2/x');
  t.equal(again.heldCount, 3);
  again.close();
  // Damage the newest slot: the older one still opens.
  const fd = fs.openSync(p, 'r+');
  const buf = Buffer.alloc(4096);
  fs.readSync(fd, buf, 0, 4096, 0);
  const newestAt = buf.readBigUInt64LE(24) > buf.readBigUInt64LE(2048 + 24) ? 0 : 2048;
  fs.writeSync(fd, Buffer.from('garbage!'), 0, 8, newestAt + 40);
  fs.closeSync(fd);
  const older = BlockMap.open(p);
  t.equal(older.sourceUrl, 'nbd://new:2/x', 'older slot still has the URL');
  t.notOk(older.complete, 'the damaged newest slot (completion) is ignored');
  older.close();
});

t.test('refuses files that are not block maps, and bad block sizes', async (t) => {
  const d = dir(t);
  fs.writeFileSync(path.join(d, 'junk'), Buffer.alloc(8192, 7));
  t.throws(() => BlockMap.open(path.join(d, 'junk')), /not a ferry block map/);
  t.throws(() => BlockMap.create(path.join(d, 'm'), { ...header, blockSize: 3000 }), /power of two/);
  t.throws(() => BlockMap.create(path.join(d, 'm2'), { ...header, sourceIdentity: 'x'.repeat(2000) }), /longer/);
});

t.test('nextMissing skips held bytes quickly', async (t) => {
  const p = path.join(dir(t), 'map');
  const map = BlockMap.create(p, { ...header, imageSize: 4096 * 1000 });
  for (let b = 0; b < 999; b++) hold(map, b);
  t.equal(map.nextMissing(0), 999);
  t.equal(map.nextMissing(999), 999);
  hold(map, 999);
  t.equal(map.nextMissing(0), -1);
  map.close();
});
