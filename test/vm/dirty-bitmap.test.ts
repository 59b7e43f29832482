/**
 * A real QEMU guest migrated live while ferry copies its disk from a QEMU NBD
 * export with a dirty bitmap (qemu-storage-daemon): no ferry at the source, so
 * `ferry migrate-vm` does not pause and the destination cuts over at its VM's
 * first write, reading the bitmap. No acknowledged write may be lost.
 */
import path from 'node:path';
import t from 'tap';
import { startFerry, type FerryDaemon } from '../helpers/ferry-daemon';
import { tempDir, writePatternFile } from '../helpers/temp-dir';
import { hasTool } from '../helpers/tools';
import { checkFinalImage, runScenario } from './helpers/scenario';
import {
  assertMigrated,
  assertNoLoss,
  DAEMON_START_MS,
  DISK_BYTES,
  guestFor,
  hasFlag,
  reportFigures,
  servingPortOf,
  startBitmapExport,
  vmUnavailable,
  warmUp,
} from './helpers/vm-test';

const skip = vmUnavailable();

t.test('the destination cuts over at its first write, from the bitmap', { skip: skip ?? false }, async (t) => {
  if (!hasTool('qemu-storage-daemon')) {
    t.plan(0, 'skipped: qemu-storage-daemon is not installed');
    return;
  }
  if (!(await hasFlag('dest', '--dirty-bitmap'))) {
    t.plan(0, 'skipped: ferry dest has no --dirty-bitmap in this build');
    return;
  }
  const dir = tempDir(t, 'ferry-vm-');
  const sourceImage = path.join(dir, 'source.img');
  const destImage = path.join(dir, 'dest.img');
  const initial = writePatternFile(sourceImage, DISK_BYTES, 13);
  const destControl = path.join(dir, 'dest-control.sock');
  const nbdPort = await startBitmapExport(t, dir, sourceImage, 'ferry');
  let dest: FerryDaemon | null = null;
  const r = await runScenario(t, {
    dir,
    guest: guestFor(t),
    sourceDiskUri: `nbd://127.0.0.1:${nbdPort}/source`,
    destDiskUri: () => `nbd://127.0.0.1:${servingPortOf(dest!, 'address')}/dest.img`,
    migrateArgs: ['--dest-control', destControl],
    writesBefore: 50,
    writesAfter: 20,
    beforeMigration: async (vm) => {
      dest = await startFerry(
        t,
        [
          'dest',
          '--source',
          `nbd://127.0.0.1:${nbdPort}/source`,
          '--dirty-bitmap',
          'ferry',
          '--image',
          destImage,
          '--listen',
          '127.0.0.1:0',
          '--control',
          destControl,
        ],
        DAEMON_START_MS,
      );
      await warmUp(t, destControl);
      const from = vm.lines.length;
      vm.send('write 100');
      await vm.waitFor(/^FERRY WROTE seq=\d+ errors=0$/, 240_000, from);
    },
  });
  t.equal(r.report?.cutover, 'destination');
  t.equal((r.report?.destination as { state?: string } | null)?.state, 'complete', 'the destination completed');
  reportFigures(t, 'dirty bitmap', r);
  const check = await checkFinalImage(r, destImage, initial, async () => void (await dest?.stop()));
  assertNoLoss(t, r, check);
  assertMigrated(t, r);
});
