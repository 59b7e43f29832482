/**
 * What the guest tests share: whether a guest can run here, the guest image,
 * and the checks and figures every migration of it ends with.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import { QmpClient } from '../../../src/qemu/qmp';
import { sendControl } from '../../../src/control/control-client';
import type { MigrationStatus } from '../../../src/migrate/status';
import { freePort, startFerry, type FerryDaemon } from '../../helpers/ferry-daemon';
import { runOk } from '../../helpers/run';
import { tempDir } from '../../helpers/temp-dir';
import { hasTool } from '../../helpers/tools';
import { buildGuestImage, guestUnavailable, type GuestImage } from './guest-image';
import type { ImageCheck } from './guest-records';
import type { Vm } from './qemu-vm';
import { checkFinalImage, type ScenarioResult } from './scenario';

const FERRY_BIN = path.resolve(__dirname, '..', '..', '..', '..', 'bin', 'ferry.js');
export const MiB = 1 << 20;
/** The guest's disk: 64 MiB, or FERRY_VM_DISK_MIB (the benchmark figure runs with 1024). */
export const DISK_BYTES = Number(process.env.FERRY_VM_DISK_MIB ?? 64) * MiB;
/** How long a ferry daemon may take to start: the guest tests run beside busy TCG guests. */
export const DAEMON_START_MS = 60_000;

/** Why no guest can run here (the reason a test skips with), or null. */
export function vmUnavailable(): string | null {
  if (!hasTool('qemu-system-x86_64')) return 'qemu-system-x86_64 is not installed (qemu-system-x86)';
  return guestUnavailable();
}

/** The guest image, built once per test file into a directory removed at the end. */
export function guestFor(t: Test): GuestImage {
  return buildGuestImage(tempDir(t, 'ferry-vm-guest-'));
}

/** Whether a ferry command has a flag, from its --help. */
export async function hasFlag(command: string, flag: string): Promise<boolean> {
  const help = await runOk(process.execPath, [FERRY_BIN, command, '--help']);
  return help.includes(flag);
}

/** The port of an address field (host:port) of a daemon's `serving` record. */
export function servingPortOf(daemon: FerryDaemon, field: string): number {
  const address = String(daemon.serving[field]);
  return Number(address.slice(address.lastIndexOf(':') + 1));
}

/** The figures worth recording, and the status fields about writes the source took. */
export function reportFigures(t: Test, name: string, r: ScenarioResult): void {
  const memory = (r.report?.memory ?? {}) as Record<string, number>;
  const dest = (r.report?.destination ?? null) as Record<string, unknown> | null;
  const dirtyFields = dest
    ? Object.entries(dest).filter(([k, v]) => typeof v === 'number' && /dirty|invalidat|passThrough|refetch/i.test(k))
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

/** The guest's own checks and the final image: every acknowledged write is there, nothing else changed. */
export function assertNoLoss(t: Test, r: ScenarioResult, image: ImageCheck): void {
  // The guest's console holds only its answers, unless its shell failed (a fork, a read): say what it said.
  const other = [...r.source.lines, ...r.dest.lines].filter((l) => l.trim() !== '' && !l.startsWith('FERRY '));
  if (other.length) t.comment(`guest console, other than its answers:\n${other.slice(0, 40).join('\n')}`);
  t.equal(r.writes.errors, 0, 'the guest saw no write error');
  t.same(r.errorLines, [], 'no write failed at the source or at the destination');
  t.equal(r.verify.bad, 0, `the guest read back every record it wrote ${r.verify.badLines.join('; ')}`);
  t.equal(r.verify.ok, r.table.size, 'the guest checked every slot of its table');
  t.ok(r.writes.atSourceDuring > 0, 'the guest wrote at the source while its memory migrated');
  t.same(image.lostWrites, [], 'the final image holds every acknowledged write (0 lost)');
  t.equal(image.recordsMatched, r.table.size, 'every record of the guest table is on the final image');
  t.same(image.strayChanges, [], 'nothing else on the image changed');
}

/** After a migration: the VM runs at the destination only, and wrote there. */
export function assertMigrated(t: Test, r: ScenarioResult): void {
  t.ok(r.writes.atDestination > 0, 'the guest wrote at the destination');
  t.equal(r.sourceStatus, 'postmigrate', 'the source VM is stopped after the migration');
  t.equal(r.destStatus, 'running', 'the VM runs at the destination');
}

/** qemu-storage-daemon exporting the image over NBD (writable) with dirty bitmap `bitmap` recording since before any write. */
export async function startBitmapExport(t: Test, dir: string, image: string, bitmap: string): Promise<number> {
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
export async function waitUntil(done: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await done())) {
    if (Date.now() > end) throw new Error(`not done within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Waits (a bounded time) for the destination's warm-up to hold every block, so
 * the writes that follow overwrite blocks it already copied: those must come
 * back through the write tracking, or be served stale. Asks the control socket
 * in-process: a `ferry ctl` process per question is slow beside busy guests.
 */
export async function warmUp(t: Test, destControl: string): Promise<void> {
  let last: MigrationStatus | null = null;
  const warm = async (): Promise<boolean> => {
    const response = await sendControl(destControl, { cmd: 'status' }, 10_000).catch(() => null);
    if (response?.ok) last = response.status as MigrationStatus;
    return last !== null && last.blocksHeld === last.blocksTotal;
  };
  try {
    await waitUntil(warm, 120_000);
  } catch {
    const s = last as MigrationStatus | null;
    t.comment(`the warm-up held ${s?.blocksHeld ?? '?'} of ${s?.blocksTotal ?? '?'} blocks after 120 s; going on`);
  }
}

/** `ferry dest` from `sourceUrl` into `image`, its NBD on a free loopback port and its control socket at `control`. */
export async function startDest(
  t: Test,
  sourceUrl: string,
  image: string,
  control: string,
  extra: string[] = [],
): Promise<FerryDaemon> {
  return startFerry(
    t,
    ['dest', '--source', sourceUrl, '--image', image, '--listen', '127.0.0.1:0', '--control', control, ...extra],
    DAEMON_START_MS,
  );
}

/** The NBD URI of a destination's image. */
export function destUri(dest: FerryDaemon, image: string): string {
  return `nbd://127.0.0.1:${servingPortOf(dest, 'address')}/${path.basename(image)}`;
}

/** Lets the destination copy everything, then has the source guest overwrite 100 of its blocks. */
export async function warmThenWrite(t: Test, destControl: string, vm: Vm): Promise<void> {
  await warmUp(t, destControl);
  const from = vm.lines.length;
  vm.send('write 100');
  await vm.waitFor(/^FERRY WROTE seq=\d+ errors=0$/, 240_000, from);
}

/** How every migration that should have moved the guest ends: figures, the final image against the guest's table. */
export async function assertFinished(
  t: Test,
  name: string,
  r: ScenarioResult,
  image: string,
  initial: Buffer,
  stopDaemons?: () => Promise<void>,
): Promise<void> {
  reportFigures(t, name, r);
  const check = await checkFinalImage(r, image, initial, stopDaemons);
  assertNoLoss(t, r, check);
  assertMigrated(t, r);
}
