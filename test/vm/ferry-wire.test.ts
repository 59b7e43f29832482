/**
 * A real QEMU guest migrated live with ferry moving its disk over the ferry
 * wire: the source VM's disk is `ferry source --nbd-listen` (which tracks its
 * writes), the destination VM's is `ferry dest`, and `ferry migrate-vm` cuts
 * the source over at switch-over. No acknowledged write may be lost.
 */
import path from 'node:path';
import t from 'tap';
import { startFerry, type FerryDaemon } from '../helpers/ferry-daemon';
import { tempDir, writePatternFile } from '../helpers/temp-dir';
import { runScenario } from './helpers/scenario';
import {
  assertFinished,
  DAEMON_START_MS,
  destUri,
  DISK_BYTES,
  guestFor,
  hasFlag,
  servingPortOf,
  startDest,
  vmUnavailable,
  warmThenWrite,
} from './helpers/vm-test';

const skip = vmUnavailable();

t.test('a source that tracks writes, cut over at switch-over', { skip: skip ?? false }, async (t) => {
  if (!(await hasFlag('source', '--control'))) {
    t.plan(0, 'skipped: ferry source has no --control (write tracking and fence) in this build');
    return;
  }
  const dir = tempDir(t, 'ferry-vm-');
  const sourceImage = path.join(dir, 'source.img');
  const destImage = path.join(dir, 'dest.img');
  const initial = writePatternFile(sourceImage, DISK_BYTES, 12);
  const sourceControl = path.join(dir, 'source-control.sock');
  const destControl = path.join(dir, 'dest-control.sock');
  const source = await startFerry(
    t,
    [
      'source',
      '--image',
      sourceImage,
      '--listen',
      '127.0.0.1:0',
      '--nbd-listen',
      '127.0.0.1:0',
      '--control',
      sourceControl,
      '--insecure',
    ],
    DAEMON_START_MS,
  );
  let dest: FerryDaemon | null = null;
  const r = await runScenario(t, {
    dir,
    guest: guestFor(t),
    sourceDiskUri: `nbd://127.0.0.1:${servingPortOf(source, 'nbd')}/source.img`,
    destDiskUri: () => destUri(dest!, destImage),
    migrateArgs: ['--source-control', sourceControl, '--dest-control', destControl],
    writesBefore: 50,
    writesAfter: 20,
    daemonLogs: () => `${source.stderr()}\n${dest?.stderr() ?? ''}`,
    beforeMigration: async (vm) => {
      dest = await startDest(
        t,
        `ferry://127.0.0.1:${servingPortOf(source, 'address')}/source.img`,
        destImage,
        destControl,
        ['--insecure'],
      );
      await warmThenWrite(t, destControl, vm);
    },
  });
  t.equal(r.report?.cutover, 'source');
  t.equal((r.report?.destination as { state?: string } | null)?.state, 'complete', 'the destination completed');
  await assertFinished(t, 'ferry wire', r, destImage, initial, async () => {
    await dest?.stop();
    await source.stop();
  });
});
