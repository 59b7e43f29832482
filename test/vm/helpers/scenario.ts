/**
 * One live migration of the test guest, end to end: the guest writes before,
 * during and after `ferry migrate-vm`, then checks every record it wrote, and
 * the final image is checked against the guest's own table of writes.
 * The disk arrangement (shared export, ferry source + dest, QEMU bitmap export)
 * is the caller's; this file knows only QEMU, the guest and migrate-vm.
 */
import fs from 'node:fs';
import path from 'node:path';
import { QmpClient } from '../../../src/qemu/qmp';
import { freePort } from '../../helpers/ferry-daemon';
import { run, type RunResult } from '../../helpers/run';
import type { GuestImage } from './guest-image';
import { checkImage, parseDump, type ImageCheck } from './guest-records';
import { startVm, waitForSocket, type Vm } from './qemu-vm';

const FERRY_BIN = path.resolve(__dirname, '..', '..', '..', '..', 'bin', 'ferry.js');

export const GUEST_MEMORY_MIB = 128;
/** Generous: under TCG on a busy host a boot takes tens of seconds. */
const BOOT_MS = 180_000;
const GUEST_STEP_MS = 240_000;

interface Teardownable {
  teardown(fn: () => void | Promise<void>): void;
  comment(...args: unknown[]): void;
}

export interface Scenario {
  dir: string;
  guest: GuestImage;
  /** The source VM's disk and the destination VM's disk (the same URI for a shared disk). */
  sourceDiskUri: string;
  /** Asked after beforeMigration, so it may name a server that hook started. */
  destDiskUri(): string;
  /** Extra flags for ferry migrate-vm (--source-control, --dest-control ...). */
  migrateArgs: string[];
  /** Records the guest writes at the source before the migration starts. */
  writesBefore: number;
  /** Runs once the source guest is up and has written writesBefore records (start the destination's ferry here). */
  beforeMigration?(source: Vm): Promise<void>;
  /** Records the guest must have written after migrate-vm returned (at the destination, or at the source if it stayed there) before it is stopped. */
  writesAfter: number;
  /** What migrate-vm must do: migrate the VM (exit 0), or fail and leave it running at the source (exit 1). */
  expect?: 'migrated' | 'stays-at-source';
  /** What the disk daemons logged, shown when the migration fails. */
  daemonLogs?: () => string;
}

export interface ScenarioResult {
  migrate: RunResult;
  report: Record<string, unknown> | null;
  writes: { total: number; atSourceBefore: number; atSourceDuring: number; atDestination: number; errors: number };
  verify: { ok: number; bad: number; badLines: string[] };
  table: ReturnType<typeof parseDump>;
  sourceStatus: string;
  destStatus: string;
  errorLines: string[];
  source: Vm;
  dest: Vm;
}

/** The VM's run state, or "unreachable: why" when its QMP socket does not answer (QEMU is gone). */
async function queryStatus(qmpPath: string): Promise<string> {
  let qmp: QmpClient;
  try {
    qmp = await QmpClient.connect(qmpPath, 60_000);
  } catch (err) {
    return `unreachable: ${(err as Error).message}`;
  }
  try {
    return (await qmp.execute<{ status: string }>('query-status')).status;
  } finally {
    qmp.close();
  }
}

/** Runs the migration and the guest's checks; the caller checks the image with checkFinalImage. */
export async function runScenario(t: Teardownable, s: Scenario): Promise<ScenarioResult> {
  const source = startVm(t, {
    name: 'source',
    dir: s.dir,
    guest: s.guest,
    diskUri: s.sourceDiskUri,
    memoryMiB: GUEST_MEMORY_MIB,
  });
  await source.waitFor(/^FERRY READY slots=(\d+)/, BOOT_MS);
  source.send(`write ${s.writesBefore}`);
  await source.waitFor(/^FERRY WROTE seq=\d+ errors=0$/, GUEST_STEP_MS);
  await s.beforeMigration?.(source);

  const migrationPort = await freePort();
  const dest = startVm(t, {
    name: 'dest',
    dir: s.dir,
    guest: s.guest,
    diskUri: s.destDiskUri(),
    memoryMiB: GUEST_MEMORY_MIB,
    incoming: `tcp:127.0.0.1:${migrationPort}`,
  });
  await waitForSocket(dest.testQmpPath, dest);
  // QMP answers once QEMU is in its main loop, and the -incoming listener is open by then.
  const incoming = await queryStatus(dest.testQmpPath);
  if (incoming !== 'inmigrate')
    throw new Error(`the destination QEMU is ${incoming}, not waiting for a migration; its stderr:\n${dest.stderr()}`);

  source.send('start');
  const started = source.lines.length;
  await source.waitFor(/^FERRY STARTED$/, GUEST_STEP_MS);
  // The writer is under way before memory moves: the migration then races it.
  await source.waitForCount(/^FERRY W /, 2, GUEST_STEP_MS, started);

  const migrate = await run(
    process.execPath,
    [
      FERRY_BIN,
      'migrate-vm',
      '--qmp',
      source.qmpPath,
      '--to',
      `tcp:127.0.0.1:${migrationPort}`,
      '--max-bandwidth',
      '1G',
      '--json',
      ...s.migrateArgs,
    ],
    { timeoutMs: 600_000 },
  );
  t.comment(`ferry migrate-vm exited ${migrate.code}:\n${migrate.stderr}`);
  const expect = s.expect ?? 'migrated';
  if (migrate.code !== (expect === 'migrated' ? 0 : 1))
    throw new Error(
      `ferry migrate-vm exited ${migrate.code}, expected the VM ${expect}:\n${migrate.stderr}\n` +
        `destination guest's last lines:\n${dest.lines.slice(-10).join('\n')}\n` +
        `source guest's last lines:\n${source.lines.slice(-10).join('\n')}\n` +
        `disk daemons' last log lines:\n${(s.daemonLogs?.() ?? '').split('\n').slice(-40).join('\n')}`,
    );
  const afterMigrate = source.lines.length;
  let report: Record<string, unknown> | null;
  try {
    report = JSON.parse(migrate.stdout) as Record<string, unknown>;
  } catch {
    report = null; // migrate-vm failed: it printed no report
  }
  const sourceStatus = await queryStatus(source.testQmpPath);
  const destStatus = await queryStatus(dest.testQmpPath);

  // The guest goes on writing where it runs now; wait for enough of them there.
  const vm = expect === 'migrated' ? dest : source;
  try {
    await vm.waitForCount(/^FERRY (W |ERR )/, s.writesAfter, GUEST_STEP_MS, expect === 'migrated' ? 0 : afterMigrate);
  } catch (e) {
    // A guest that stops writing after the switch-over: say where each QEMU stood and what the disks' daemons saw.
    const now = await queryStatus(vm.testQmpPath).catch((q: Error) => q.message);
    const logs = (s.daemonLogs?.() ?? '').split('\n').slice(-40).join('\n');
    throw new Error(
      `${(e as Error).message}\nafter ferry migrate-vm: source QEMU ${sourceStatus}, destination QEMU ${destStatus} ` +
        `(now: ${now})\ndisk daemons' last log lines:\n${logs}`,
      { cause: e },
    );
  }
  vm.send('stop');
  const stopped = await vm.waitFor(/^FERRY STOPPED seq=(\d+) errors=(\d+)$/, GUEST_STEP_MS);
  const verifyFrom = vm.lines.length;
  vm.send('verify');
  const verified = await vm.waitFor(/^FERRY VERIFIED ok=(\d+) bad=(\d+)$/, GUEST_STEP_MS, verifyFrom);
  const dumpFrom = vm.lines.length;
  vm.send('dump');
  const dumped = await vm.waitFor(/^FERRY DUMPED (\d+)$/, GUEST_STEP_MS, dumpFrom);
  const dumpLines = vm.lines.slice(dumpFrom).filter((l) => l.startsWith('FERRY REC '));
  const table = parseDump(dumpLines);
  if (table.size !== Number(dumped[1])) throw new Error(`the guest dumped ${dumped[1]} records, ${table.size} arrived`);

  const count = (vm: Vm, re: RegExp, from = 0): number => vm.lines.slice(from).filter((l) => re.test(l)).length;
  return {
    migrate,
    report,
    writes: {
      total: Number(stopped[1]),
      atSourceBefore: s.writesBefore,
      atSourceDuring: count(source, /^FERRY W /),
      atDestination: count(dest, /^FERRY W /),
      errors: Number(stopped[2]),
    },
    verify: {
      ok: Number(verified[1]),
      bad: Number(verified[2]),
      badLines: vm.lines.slice(verifyFrom).filter((l) => l.startsWith('FERRY BAD ')),
    },
    table,
    sourceStatus,
    destStatus,
    errorLines: [...source.lines, ...dest.lines].filter((l) => l.startsWith('FERRY ERR ')),
    source,
    dest,
  };
}

/** Powers both guests off (every acknowledged write was flushed) and checks the image file against the table. */
export async function checkFinalImage(
  r: ScenarioResult,
  imagePath: string,
  initial: Buffer,
  beforeRead?: () => Promise<void>,
): Promise<ImageCheck> {
  await r.dest.kill();
  await r.source.kill();
  await beforeRead?.();
  return checkImage(fs.readFileSync(imagePath), initial, r.table);
}
