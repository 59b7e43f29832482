/**
 * A VM read of a missing block while the local disk is full: the fetched
 * bytes answer the read and the block stays missing (nothing is claimed that
 * the image does not have); writes get ENOSPC; once the disk has room again
 * the block is fetched, landed and held.
 */
import t from 'tap';
import crypto from 'node:crypto';
import path from 'node:path';
import pino from 'pino';
import { BlockDeviceError, type BlockDevice } from '../src/store/block-device';
import { BlockMap } from '../src/store/block-map';
import { FileDevice } from '../src/store/file-device';
import { MigratingDevice } from '../src/migrate/migrating-device';
import { FakeUpstream } from './helpers/fake-upstream';
import { tempDir } from './helpers/temp-dir';

const log = pino({ level: 'silent' });
const BS = 4096;

/** The image, with a switch that makes every write and zero fail as a full disk does. */
function fillableDisk(file: FileDevice): { device: BlockDevice; full: { on: boolean } } {
  const full = { on: true };
  const refuse = (): never => {
    throw new BlockDeviceError('ENOSPC', 'No space left on device');
  };
  const device: BlockDevice = {
    get size() {
      return file.size;
    },
    readOnly: false,
    blockSize: file.blockSize,
    canTrim: file.canTrim,
    canFastZero: false,
    read: (o, into) => file.read(o, into),
    write: async (o, d, fua) => (full.on ? refuse() : file.write(o, d, fua)),
    zero: async (o, n, opts) => (full.on ? refuse() : file.zero(o, n, opts)),
    trim: async (o, n, fua) => (full.on ? refuse() : file.trim(o, n, fua)),
    flush: () => file.flush(),
    cache: async () => undefined,
    status: (o, n) => file.status(o, n),
    close: () => file.close(),
  };
  return { device, full };
}

t.test('a read of a missing block on a full disk is answered from the fetched bytes', async (t) => {
  const dir = tempDir(t);
  const source = crypto.randomBytes(16 * BS);
  const upstream = new FakeUpstream(source);
  const { device: disk, full } = fillableDisk(FileDevice.open(path.join(dir, 'img'), { createSize: source.length }));
  const map = BlockMap.create(path.join(dir, 'state'), {
    blockSize: BS,
    imageSize: source.length,
    sourceIdentity: upstream.identity,
    sourceUrl: upstream.description,
    phase: 'post-copy',
    trackingEpoch: '',
    session: 'test',
  });
  const device = new MigratingDevice(disk, map, upstream, { fetchTimeoutMs: 10_000 }, log);
  t.teardown(async () => {
    map.close();
    await device.close();
  });
  device.on('store-error', () => undefined);

  const into = Buffer.alloc(3 * BS - 100);
  await device.read(2 * BS + 100, into); // blocks 2, 3, 4: all missing, none can land
  t.ok(into.equals(source.subarray(2 * BS + 100, 5 * BS)), 'the read returns the source bytes');
  t.equal(upstream.recycled, 0, 'fetched bytes the image refused are not handed back for reuse');
  t.notOk(map.isHeld(2) || map.isHeld(3) || map.isHeld(4), 'the blocks stay missing');

  const err = await device.write(8 * BS, Buffer.alloc(BS, 1), false).catch((e: BlockDeviceError) => e);
  t.equal((err as BlockDeviceError | undefined)?.errno, 'ENOSPC', 'a write gets ENOSPC');
  await device.flush(); // nothing the map claims is missing from the image

  full.on = false;
  const again = Buffer.alloc(BS);
  await device.read(3 * BS, again);
  t.ok(again.equals(source.subarray(3 * BS, 4 * BS)), 'with room again the block is read');
  t.ok(map.isHeld(3), 'and now held');
  t.ok(upstream.recycled > 0, 'fetched bytes that landed are handed back for reuse');
});
