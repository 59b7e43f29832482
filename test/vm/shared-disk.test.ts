/**
 * `ferry migrate-vm` with a real QEMU guest on a disk both QEMUs share (one
 * `ferry serve` export): the switch-over pauses for the cutover with the source
 * VM stopped, and a cutover that does not happen leaves the VM at the source.
 * No write the guest had acknowledged may be lost either way.
 */
import path from 'node:path';
import t, { type Test } from 'tap';
import { QmpClient } from '../../src/qemu/qmp';
import { startFerryServe } from '../helpers/ferry-serve';
import { tempDir, writePatternFile } from '../helpers/temp-dir';
import { startRecordingControl } from './helpers/recording-control';
import { checkFinalImage, runScenario } from './helpers/scenario';
import type { Vm } from './helpers/qemu-vm';
import { assertFinished, assertNoLoss, DAEMON_START_MS, DISK_BYTES, guestFor, vmUnavailable } from './helpers/vm-test';

const skip = vmUnavailable();

/** The source QEMU's run state and migration status, as the cutover sees them. */
async function sourceState(qmpPath: string): Promise<{ vm: string; running: boolean; migration: string }> {
  const qmp = await QmpClient.connect(qmpPath);
  try {
    const status = await qmp.execute<{ status: string; running: boolean }>('query-status');
    const migration = await qmp.execute<{ status: string }>('query-migrate');
    return { vm: status.status, running: status.running, migration: migration.status };
  } finally {
    qmp.close();
  }
}

/** One `ferry serve` export as both QEMUs' disk, and a source control socket that answers the cutover with `answer`. */
async function sharedDisk(t: Test, seed: number, answer: () => { ok: true } | { ok: false; error: string }) {
  const dir = tempDir(t, 'ferry-vm-');
  const image = path.join(dir, 'disk.img');
  const initial = writePatternFile(image, DISK_BYTES, seed);
  const serve = await startFerryServe(t, ['--image', image], { timeoutMs: DAEMON_START_MS });
  const sourceControl = path.join(dir, 'source-control.sock');
  let sourceQmp = '';
  const control = await startRecordingControl(t, sourceControl, () => sourceState(sourceQmp), answer);
  const scenario = {
    dir,
    guest: guestFor(t),
    sourceDiskUri: serve.uri('disk.img'),
    destDiskUri: () => serve.uri('disk.img'),
    migrateArgs: ['--source-control', sourceControl],
    writesAfter: 20,
    beforeMigration: async (source: Vm) => void (sourceQmp = source.testQmpPath),
    daemonLogs: () => serve.stderr(),
  };
  return { image, initial, control, scenario };
}

t.test('the switch-over pauses for the cutover with the source VM stopped', { skip: skip ?? false }, async (t) => {
  const { image, initial, control, scenario } = await sharedDisk(t, 11, () => ({ ok: true }));
  const r = await runScenario(t, { ...scenario, writesBefore: 50 });
  t.same(
    control.requests.map((l) => JSON.parse(l)),
    [{ cmd: 'cutover' }],
    'migrate-vm asked the source for one cutover',
  );
  t.same(
    control.observed,
    [{ vm: 'finish-migrate', running: false, migration: 'pre-switchover' }],
    'during the cutover the source VM was stopped, its migration paused before switch-over',
  );
  t.equal(r.report?.cutover, 'source');
  await assertFinished(t, 'shared disk', r, image, initial);
});

t.test('a refused cutover cancels the migration: the VM runs on at the source', { skip: skip ?? false }, async (t) => {
  const { image, initial, control, scenario } = await sharedDisk(t, 21, () => ({
    ok: false,
    error: 'cutover: refused for the test',
  }));
  const r = await runScenario(t, { ...scenario, writesBefore: 20, expect: 'stays-at-source' });
  t.equal(control.observed.length, 1, 'the cutover was asked for once, at switch-over');
  t.match(
    r.migrate.stderr,
    /disk cutover did not run: ferry source refused the cutover: cutover: refused for the test; the migration was cancelled and the source VM runs on \[source VM: running\]/,
  );
  t.equal(r.sourceStatus, 'running', 'QEMU resumed the source VM');
  t.equal(r.writes.atDestination, 0, 'the guest never ran at the destination');
  const check = await checkFinalImage(r, image, initial);
  assertNoLoss(t, r, check);
});
