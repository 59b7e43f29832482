/**
 * A real QEMU guest migrated live while `ferry dest` takes its disk from a
 * plain NBD source that cannot report writes (`ferry serve`): the destination
 * copies nothing before cutover, answers reads from the source until then,
 * and cuts over at its VM's first write. No acknowledged write may be lost.
 */
import path from 'node:path';
import t from 'tap';
import type { FerryDaemon } from '../helpers/ferry-daemon';
import { startFerryServe } from '../helpers/ferry-serve';
import { tempDir, writePatternFile } from '../helpers/temp-dir';
import { runScenario } from './helpers/scenario';
import {
  assertFinished,
  DAEMON_START_MS,
  destUri,
  DISK_BYTES,
  guestFor,
  startDest,
  vmUnavailable,
} from './helpers/vm-test';

const skip = vmUnavailable();

t.test('no write tracking: the destination cuts over at its first write', { skip: skip ?? false }, async (t) => {
  const dir = tempDir(t, 'ferry-vm-');
  const sourceImage = path.join(dir, 'source.img');
  const destImage = path.join(dir, 'dest.img');
  const initial = writePatternFile(sourceImage, DISK_BYTES, 14);
  const destControl = path.join(dir, 'dest-control.sock');
  const source = await startFerryServe(t, ['--image', sourceImage], { timeoutMs: DAEMON_START_MS });
  let dest: FerryDaemon | null = null;
  const r = await runScenario(t, {
    dir,
    guest: guestFor(t),
    sourceDiskUri: source.uri('source.img'),
    destDiskUri: () => destUri(dest!, destImage),
    migrateArgs: ['--dest-control', destControl],
    writesBefore: 50,
    writesAfter: 20,
    daemonLogs: () => dest?.stderr() ?? '',
    beforeMigration: async () => {
      dest = await startDest(t, source.uri('source.img'), destImage, destControl);
    },
  });
  const status = r.report?.destination as { state?: string; phase?: string; tracking?: string } | null;
  t.equal(r.report?.cutover, 'destination');
  t.equal(status?.state, 'complete', 'the destination completed');
  t.equal(status?.tracking, 'none', 'the source reported no writes: nothing was copied before cutover');
  await assertFinished(t, 'plain NBD, no tracking', r, destImage, initial, async () => void (await dest?.stop()));
});
