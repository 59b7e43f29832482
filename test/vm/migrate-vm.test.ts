/**
 * A real QEMU guest (TCG when there is no KVM) migrated live with `ferry migrate-vm`
 * while it writes: no write acknowledged to the guest, at the source or at the
 * destination, may be missing from the disk it ends on.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t, { Test } from 'tap';
import { QmpClient } from '../../src/qemu/qmp';
import { ctlStatus, freePort, startFerry, type FerryDaemon } from '../helpers/ferry-daemon';
import { startFerryServe } from '../helpers/ferry-serve';
import { runOk } from '../helpers/run';
import { tempDir, writePatternFile } from '../helpers/temp-dir';
import { hasTool } from '../helpers/tools';
import { buildGuestImage, guestUnavailable, type GuestImage } from './helpers/guest-image';
import type { ImageCheck } from './helpers/guest-records';
import { startRecordingControl } from './helpers/recording-control';
import { checkFinalImage, runScenario, type ScenarioResult } from './helpers/scenario';

const FERRY_BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'ferry.js');
const MiB = 1 << 20;
const DISK_BYTES = 64 * MiB;

function unavailable(): string | null {
  if (!hasTool('qemu-system-x86_64')) return 'qemu-system-x86_64 is not installed (qemu-system-x86)';
  return guestUnavailable();
}

/** Whether a ferry command has a flag, from its --help. */
async function hasFlag(command: string, flag: string): Promise<boolean> {
  const help = await runOk(process.execPath, [FERRY_BIN, command, '--help']);
  return help.includes(flag);
}

function port(daemon: FerryDaemon, field: string): number {
  const address = String(daemon.serving[field]);
  return Number(address.slice(address.lastIndexOf(':') + 1));
}

/** The figures worth recording, and the status fields about writes the source took. */
function reportFigures(t: Test, name: string, r: ScenarioResult): void {
  const memory = (r.report?.memory ?? {}) as Record<string, number>;
  const dest = (r.report?.destination ?? null) as Record<string, unknown> | null;
  const dirtyFields = dest
    ? Object.entries(dest).filter(([k, v]) => typeof v === 'number' && /dirty|refetch|cutover|stale/i.test(k))
    : [];
  t.comment(
    `${name}: memory downtime ${memory.downtimeMs} ms (cutover ${memory.cutoverMs} ms of it), ` +
      `total ${memory.totalTimeMs} ms, ${memory.ramTransferredBytes} bytes of memory; ` +
      `cutover to complete ${String(r.report?.cutoverToCompleteMs)} ms; ` +
      `writes: ${r.writes.atSourceBefore} before + ${r.writes.atSourceDuring} during at the source, ` +
      `${r.writes.atDestination} at the destination, ${r.writes.total} in all, ${r.table.size} slots; ` +
      `destination status: ${dirtyFields.map(([k, v]) => `${k}=${String(v)}`).join(' ') || '(no write-set fields)'}`,
  );
}

function assertNoLoss(t: Test, r: ScenarioResult, image: ImageCheck): void {
  t.equal(r.writes.errors, 0, 'the guest saw no write error');
  t.same(r.errorLines, [], 'no write failed at the source or at the destination');
  t.equal(r.verify.bad, 0, `the guest read back every record it wrote ${r.verify.badLines.join('; ')}`);
  t.equal(r.verify.ok, r.table.size, 'the guest checked every slot of its table');
  t.ok(r.writes.atDestination > 0, 'the guest wrote at the destination');
  t.ok(r.writes.atSourceDuring > 0, 'the guest wrote at the source while its memory migrated');
  t.same(image.lostWrites, [], 'the final image holds every acknowledged write (0 lost)');
  t.equal(image.recordsMatched, r.table.size, 'every record of the guest table is on the final image');
  t.same(image.strayChanges, [], 'nothing else on the image changed');
  t.equal(r.sourceStatus, 'postmigrate', 'the source VM is stopped after the migration');
  t.equal(r.destStatus, 'running', 'the VM runs at the destination');
}

const skip = unavailable();
let guest: GuestImage | null = null;
const guestDir = skip ? null : tempDir(t, 'ferry-vm-guest-');
if (guestDir) guest = buildGuestImage(guestDir);

t.test('shared disk: the switch-over pauses for the cutover with the source VM stopped', { skip: skip ?? false }, async (t) => {
  const dir = tempDir(t, 'ferry-vm-');
  const image = path.join(dir, 'disk.img');
  const initial = writePatternFile(image, DISK_BYTES, 11);
  const serve = await startFerryServe(t, ['--image', image]);
  const sourceControl = path.join(dir, 'source-control.sock');
  let sourceQmp = '';
  const control = await startRecordingControl(
    t,
    sourceControl,
    async () => {
      const qmp = await QmpClient.connect(sourceQmp);
      try {
        const status = await qmp.execute<{ status: string; running: boolean }>('query-status');
        const migration = await qmp.execute<{ status: string }>('query-migrate');
        return { vm: status.status, running: status.running, migration: migration.status };
      } finally {
        qmp.close();
      }
    },
    () => ({ ok: true }),
  );
  const r = await runScenario(t, {
    dir,
    guest: guest!,
    sourceDiskUri: serve.uri('disk.img'),
    destDiskUri: () => serve.uri('disk.img'),
    migrateArgs: ['--source-control', sourceControl],
    writesBefore: 50,
    writesAfter: 20,
    beforeMigration: async (source) => void (sourceQmp = source.testQmpPath),
  });
  t.same(control.requests.map((l) => JSON.parse(l)), [{ cmd: 'cutover' }], 'migrate-vm asked the source for one cutover');
  t.same(
    control.observed,
    [{ vm: 'finish-migrate', running: false, migration: 'pre-switchover' }],
    'during the cutover the source VM was stopped, its migration paused before switch-over',
  );
  t.equal(r.report?.cutover, 'source');
  reportFigures(t, 'shared disk', r);
  const check = await checkFinalImage(r, image, initial);
  assertNoLoss(t, r, check);
});

t.test('ferry wire: a source that tracks writes, cut over at switch-over', { skip: skip ?? false }, async (t) => {
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
  const source = await startFerry(t, [
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
  ]);
  let dest: FerryDaemon | null = null;
  const r = await runScenario(t, {
    dir,
    guest: guest!,
    sourceDiskUri: `nbd://127.0.0.1:${port(source, 'nbd')}/source.img`,
    destDiskUri: () => `nbd://127.0.0.1:${port(dest!, 'address')}/dest.img`,
    migrateArgs: ['--source-control', sourceControl, '--dest-control', destControl],
    writesBefore: 50,
    writesAfter: 20,
    beforeMigration: async (vm) => {
      dest = await startFerry(t, [
        'dest',
        '--source',
        `ferry://127.0.0.1:${port(source, 'address')}/source.img`,
        '--image',
        destImage,
        '--listen',
        '127.0.0.1:0',
        '--control',
        destControl,
        '--insecure',
      ]);
      // Let the warm-up copy every block, so the writes that follow overwrite blocks the destination holds.
      await waitUntil(async () => {
        const s = await ctlStatus(destControl);
        return s.blocksHeld === s.blocksTotal;
      }, 120_000);
      const from = vm.lines.length;
      vm.send('write 100');
      await vm.waitFor(/^FERRY WROTE seq=\d+ errors=0$/, 240_000, from);
    },
  });
  t.equal(r.report?.cutover, 'source');
  t.equal((r.report?.destination as { state?: string } | null)?.state, 'complete', 'the destination completed');
  reportFigures(t, 'ferry wire', r);
  const check = await checkFinalImage(r, destImage, initial, async () => {
    await dest?.stop();
    await source.stop();
  });
  assertNoLoss(t, r, check);
});

t.test('QEMU dirty bitmap: the destination cuts over at its first write', { skip: skip ?? false }, async (t) => {
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
    guest: guest!,
    sourceDiskUri: `nbd://127.0.0.1:${nbdPort}/source`,
    destDiskUri: () => `nbd://127.0.0.1:${port(dest!, 'address')}/dest.img`,
    migrateArgs: ['--dest-control', destControl],
    writesBefore: 50,
    writesAfter: 20,
    beforeMigration: async (vm) => {
      dest = await startFerry(t, [
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
      ]);
      await waitUntil(async () => {
        const s = await ctlStatus(destControl);
        return s.blocksHeld === s.blocksTotal;
      }, 120_000);
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
});

/** qemu-storage-daemon exporting the image over NBD (writable) with dirty bitmap `bitmap` recording since before any write. */
async function startBitmapExport(t: Test, dir: string, image: string, bitmap: string): Promise<number> {
  const qmpPath = path.join(dir, 'qsd.qmp');
  const nbdPort = await freePort();
  const qsd = spawn(
    'qemu-storage-daemon',
    [
      '--blockdev',
      `driver=file,filename=${image},node-name=file0`,
      '--blockdev',
      'driver=raw,file=file0,node-name=disk0',
      '--chardev',
      `socket,id=qmp0,path=${qmpPath},server=on,wait=off`,
      '--monitor',
      'chardev=qmp0',
      '--nbd-server',
      `addr.type=inet,addr.host=127.0.0.1,addr.port=${nbdPort}`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  qsd.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise((resolve) => qsd.on('close', resolve));
  t.teardown(async () => {
    qsd.kill('SIGKILL');
    await exited;
  });
  await waitUntil(async () => fs.existsSync(qmpPath) || qsd.exitCode !== null, 30_000);
  if (qsd.exitCode !== null) throw new Error(`qemu-storage-daemon exited: ${stderr}`);
  const qmp = await QmpClient.connect(qmpPath);
  try {
    await qmp.execute('block-dirty-bitmap-add', { node: 'disk0', name: bitmap });
    await qmp.execute('block-export-add', {
      type: 'nbd',
      id: 'export0',
      'node-name': 'disk0',
      name: 'source',
      writable: true,
      bitmaps: [bitmap],
    });
  } finally {
    qmp.close();
  }
  return nbdPort;
}

/** Asks `done` until it says yes (each answer is a round trip to a daemon, so this waits on them, not on a clock). */
async function waitUntil(done: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await done())) {
    if (Date.now() > end) throw new Error(`not done within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
