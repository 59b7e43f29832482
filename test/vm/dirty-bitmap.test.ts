/**
 * A real QEMU guest migrated live while ferry copies its disk from a QEMU NBD
 * export with a dirty bitmap (qemu-storage-daemon): no ferry at the source, so
 * `ferry migrate-vm` does not pause and the destination cuts over at its VM's
 * first write, reading the bitmap. No acknowledged write may be lost.
 */
import path from 'node:path';
import t from 'tap';
import type { FerryDaemon } from '../helpers/ferry-daemon';
import { tempDir, writePatternFile } from '../helpers/temp-dir';
import { hasTool } from '../helpers/tools';
import { runScenario } from './helpers/scenario';
import {
  assertFinished,
  destUri,
  DISK_BYTES,
  guestFor,
  hasFlag,
  startBitmapExport,
  startDest,
  vmUnavailable,
  warmThenWrite,
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
    destDiskUri: () => destUri(dest!, destImage),
    migrateArgs: ['--dest-control', destControl],
    writesBefore: 50,
    writesAfter: 20,
    daemonLogs: () => dest?.stderr() ?? '',
    beforeMigration: async (vm) => {
      dest = await startDest(t, `nbd://127.0.0.1:${nbdPort}/source`, destImage, destControl, [
        '--dirty-bitmap',
        'ferry',
      ]);
      await warmThenWrite(t, destControl, vm);
    },
  });
  t.equal(r.report?.cutover, 'destination');
  t.equal((r.report?.destination as { state?: string } | null)?.state, 'complete', 'the destination completed');
  await assertFinished(t, 'dirty bitmap', r, destImage, initial, async () => void (await dest?.stop()));
});
