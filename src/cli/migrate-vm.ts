/**
 * `ferry migrate-vm`: live-migrates a QEMU VM whose disk ferry moves, on the source host.
 * QEMU moves the memory; at switch-over, with the source VM stopped, the ferry source
 * is cut over (fenced) so the destination becomes the disk's authority.
 */
import { CommanderError, InvalidArgumentError, Option, type Command } from 'commander';
import { formatBytes, parseByteRate } from '../control/byte-rate';
import { ControlUnreachableError, sendControl } from '../control/control-client';
import type { ControlRequest } from '../control/protocol';
import type { MigrationStatus } from '../migrate/status';
import { CutoverNotRunError, LiveMigrationError, migrateVm, type LiveMigrationResult } from '../qemu/live-migration';
import { QmpClient } from '../qemu/qmp';

const EXIT_FAILED = 1;
const EXIT_USAGE = 2;

interface MigrateVmFlags {
  qmp: string;
  to: string;
  sourceControl?: string;
  destControl?: string;
  maxBandwidth?: number;
  downtimeLimit?: number;
  timeout?: number;
  controlTimeoutMs: number;
  intervalMs: number;
  json?: boolean;
}

/** What migrate-vm prints at the end (`--json`), and the figures an operator records. */
export interface MigrateVmReport {
  memory: LiveMigrationResult;
  /** Where the disk cutover ran: at the source before switch-over, or left to the destination. */
  cutover: 'source' | 'destination';
  /** From the cutover (or the end of the memory migration) to the destination reporting complete; null unless watched. */
  cutoverToCompleteMs: number | null;
  /** The destination's last status (`ferry ctl status --json`), when watched. */
  destination: MigrationStatus | null;
}

function positiveInt(name: string): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n <= 0)
      throw new InvalidArgumentError(`${name} must be a positive integer (got "${value}")`);
    return n;
  };
}

function byteRate(value: string): number {
  try {
    const rate = parseByteRate(value);
    if (rate === null) throw new Error(`--max-bandwidth needs a rate, not "${value}"`);
    return rate;
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

/** The request `ferry ctl --control PATH cutover` sends: at a source, fence and push the final write set. */
const CUTOVER_REQUEST: ControlRequest = { cmd: 'cutover' };

/** Cuts the ferry source over; CutoverNotRunError when it surely did not happen. */
async function cutoverSource(socketPath: string, timeoutMs: number): Promise<void> {
  let response;
  try {
    response = await sendControl(socketPath, CUTOVER_REQUEST, timeoutMs);
  } catch (err) {
    // Unreachable before the request went out: the source did nothing.
    if (err instanceof ControlUnreachableError && ['ENOENT', 'ECONNREFUSED', 'EACCES'].includes(err.code ?? ''))
      throw new CutoverNotRunError(`ferry source control ${socketPath}: ${err.message}`);
    throw new Error(`ferry source control ${socketPath}: ${(err as Error).message}`, { cause: err });
  }
  if (!response.ok) throw new CutoverNotRunError(`ferry source refused the cutover: ${response.error}`);
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls the destination until it reports complete; returns its last status. */
async function watchDestination(
  socketPath: string,
  flags: MigrateVmFlags,
  say: (line: string) => void,
): Promise<MigrationStatus> {
  let lastLine = '';
  for (;;) {
    const response = await sendControl(socketPath, { cmd: 'status' }, flags.controlTimeoutMs);
    if (!response.ok) throw new Error(`ferry dest ${socketPath} refused status: ${response.error}`);
    // A ferry source's control socket answers status too, with another shape.
    const s = response.status as MigrationStatus;
    if (typeof s.blocksHeld !== 'number') throw new Error(`${socketPath} is not a ferry dest's control socket`);
    const line = `destination: ${s.blocksHeld}/${s.blocksTotal} blocks held, ${s.state} (${s.phase})`;
    if (line !== lastLine) say(line);
    lastLine = line;
    if (s.state === 'complete') return s;
    await sleep(flags.intervalMs);
  }
}

async function run(flags: MigrateVmFlags): Promise<void> {
  const say = (line: string): void => void process.stderr.write(`ferry migrate-vm: ${line}\n`);
  const qmp = await QmpClient.connect(flags.qmp);
  // Interrupted before switch-over, the migration is cancelled: left alone, QEMU would stop
  // the VM at pre-switchover and wait there for a migrate-continue nobody sends.
  const interrupt = new AbortController();
  const onSignal = (signal: string): void => {
    say(`${signal}: cancelling unless the switch-over has begun`);
    interrupt.abort();
  };
  process.on('SIGINT', onSignal).on('SIGTERM', onSignal);
  let result: LiveMigrationResult;
  try {
    say(`QEMU ${qmp.version.major}.${qmp.version.minor}.${qmp.version.micro} on ${flags.qmp}`);
    const sourceControl = flags.sourceControl;
    result = await migrateVm(qmp, {
      signal: interrupt.signal,
      to: flags.to,
      cutover: sourceControl ? () => cutoverSource(sourceControl, flags.controlTimeoutMs) : undefined,
      maxBandwidth: flags.maxBandwidth,
      downtimeLimitMs: flags.downtimeLimit,
      timeoutMs: flags.timeout === undefined ? undefined : flags.timeout * 1000,
      progressIntervalMs: flags.intervalMs,
      onStep: say,
      onProgress: (p) =>
        say(
          `memory: ${p.status}, ${formatBytes(p.ramTransferredBytes)} sent, ${formatBytes(p.ramRemainingBytes)} to go`,
        ),
    });
  } finally {
    process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
    qmp.close();
  }
  say(
    `memory downtime ${result.downtimeMs} ms (disk cutover ${result.cutoverMs} ms of it), total ${result.totalTimeMs} ms, ${formatBytes(result.ramTransferredBytes)} of memory sent`,
  );
  if (!flags.sourceControl)
    say('no --source-control: the destination cuts over at the VM\'s first write there (or "ferry ctl cutover")');
  const memoryDoneAt = Date.now();
  let destination: MigrationStatus | null = null;
  let cutoverToCompleteMs: number | null = null;
  if (flags.destControl) {
    try {
      destination = await watchDestination(flags.destControl, flags, say);
    } catch (err) {
      throw new Error(
        `the VM runs at the destination, but its disk's progress could not be followed: ${(err as Error).message}`,
        { cause: err },
      );
    }
    cutoverToCompleteMs = Date.now() - (result.cutoverAt ?? memoryDoneAt);
    say(
      `destination complete ${cutoverToCompleteMs} ms after the cutover; ` +
        `${destination.blocksInvalidated} copied blocks fetched again because the source VM wrote them`,
    );
  }
  const report: MigrateVmReport = {
    memory: result,
    cutover: flags.sourceControl ? 'source' : 'destination',
    cutoverToCompleteMs,
    destination,
  };
  process.stdout.write(
    flags.json
      ? JSON.stringify(report, null, 2) + '\n'
      : `migrated: downtime ${result.downtimeMs} ms` +
          (cutoverToCompleteMs === null ? '' : `, disk complete ${cutoverToCompleteMs} ms after cutover`) +
          '\n',
  );
}

export function registerMigrateVm(program: Command): void {
  program
    .command('migrate-vm')
    .description(
      'live-migrate a QEMU VM whose disk ferry serves: memory by QEMU, the disk cut over at the source while the VM is stopped at switch-over',
    )
    .addOption(
      new Option('--qmp <path>', "the source QEMU's QMP socket (-qmp unix:PATH,server=on)").makeOptionMandatory(),
    )
    .addOption(
      new Option('--to <uri>', "the destination QEMU's -incoming URI, e.g. tcp:HOST:PORT").makeOptionMandatory(),
    )
    .option(
      '--source-control <path>',
      "the ferry source's control socket: fence it at switch-over (without it the destination cuts over at its first write)",
    )
    .option('--dest-control <path>', "a ferry dest's control socket (same host): follow the disk until complete")
    .option('--max-bandwidth <bytes/s>', 'memory migration bandwidth cap, e.g. 100M (QEMU max-bandwidth)', byteRate)
    .option('--downtime-limit <ms>', 'QEMU downtime-limit for the memory switch-over', positiveInt('--downtime-limit'))
    .option('--timeout <seconds>', 'cancel if memory has not converged by then', positiveInt('--timeout'))
    .option(
      '--control-timeout-ms <ms>',
      'how long to wait for a control socket',
      positiveInt('--control-timeout-ms'),
      30_000,
    )
    .option('--interval-ms <ms>', 'how often to report progress', positiveInt('--interval-ms'), 1000)
    .option('--json', 'print the final report as JSON')
    .exitOverride((err) => {
      throw err.exitCode === 0 ? err : new CommanderError(EXIT_USAGE, err.code, err.message);
    })
    .action(async (flags: MigrateVmFlags) => {
      try {
        await run(flags);
      } catch (err) {
        const where = err instanceof LiveMigrationError ? ` [source VM: ${err.sourceVm}]` : '';
        process.stderr.write(`ferry migrate-vm: ${(err as Error).message}${where}\n`);
        process.exitCode = EXIT_FAILED;
      }
    });
}
