/** `ferry ctl`: talks to a running `ferry dest` (or `ferry source`) over its control socket. */
import cliProgress from 'cli-progress';
import { CommanderError, InvalidArgumentError, Option, type Command } from 'commander';
import { formatDuration, formatRate, parseByteRate } from '../control/byte-rate';
import { ControlUnreachableError, sendControl } from '../control/control-client';
import type { ControlRequest } from '../control/protocol';
import { formatStatusLine, formatStatusSummary } from '../control/status-text';
import { formatSourceStatus, isSourceStatus } from '../control/source-status-text';
import type { MigrationStatus } from '../migrate/status';
import type { SourceStatus } from '../wire/source-sessions';
import { destControlPath, destStatePath } from './state-dir';
import { UsageError } from './usage-error';
import { daemonRequest, printAnswer, registerDaemonVerbs } from './ctl-daemon';

/** Exit codes: the daemon refused (or could not be reached), and the command line was wrong. */
const EXIT_REFUSED = 1;
const EXIT_USAGE = 2;

interface CtlFlags {
  control: string;
  timeoutMs: number;
}

interface CtlGlobalFlags {
  control?: string;
  image?: string;
  state?: string;
  timeoutMs: number;
}

function parsePositiveInt(name: string): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n <= 0)
      throw new InvalidArgumentError(`${name} must be a positive integer (got "${value}")`);
    return n;
  };
}

/** A rate read inside an action (its position depends on the verb's form): a bad one is a usage error. */
function rateOrUsage(value: string): number | null {
  try {
    return parseByteRate(value);
  } catch (err) {
    throw new UsageError(`ctl rate: ${(err as Error).message}`);
  }
}

function fail(message: string): void {
  process.stderr.write(`ferry ctl: ${message}\n`);
  process.exitCode = EXIT_REFUSED;
}

/** Sends one request; prints the failure and returns null when the daemon said no or is unreachable. */
async function requestAny(flags: CtlFlags, req: ControlRequest): Promise<MigrationStatus | SourceStatus | null> {
  try {
    const response = await sendControl(flags.control, req, flags.timeoutMs);
    if (response.ok) return response.status;
    fail(`${req.cmd} refused: ${response.error}`);
  } catch (err) {
    fail((err as Error).message);
  }
  return null;
}

/** A request only a ferry dest answers. */
async function request(flags: CtlFlags, req: ControlRequest): Promise<MigrationStatus | null> {
  const status = await requestAny(flags, req);
  if (status && isSourceStatus(status)) {
    fail(`${req.cmd}: ${flags.control} is a ferry source's control socket`);
    return null;
  }
  return status;
}

/** A request only a ferry source answers. */
async function requestSource(flags: CtlFlags, req: ControlRequest): Promise<SourceStatus | null> {
  const status = await requestAny(flags, req);
  if (status && !isSourceStatus(status)) {
    fail(`${req.cmd}: ${flags.control} is a ferry dest's control socket`);
    return null;
  }
  return status;
}

/** The control socket: --control, else the one `ferry dest` makes beside the state of --image (or --state). */
function ctlFlags(cmd: Command): CtlFlags {
  const flags = cmd.optsWithGlobals<CtlGlobalFlags>();
  if (flags.control) return { control: flags.control, timeoutMs: flags.timeoutMs };
  if (flags.state || flags.image) {
    const state = flags.state ?? destStatePath(flags.image!, undefined);
    return { control: destControlPath(state), timeoutMs: flags.timeoutMs };
  }
  throw new UsageError(
    'ctl: give --control PATH (or FERRY_CONTROL), or --image IMAGE (and --state FILE if the destination was given one)',
  );
}

export function registerCtl(program: Command): void {
  const ctl = program
    .command('ctl')
    .description('control a running ferry dest (or ferry source) through its control socket')
    .addOption(new Option('--control <path>', 'control socket of the ferry dest or source').env('FERRY_CONTROL'))
    .option(
      '--image <path>',
      "the ferry dest's image: its default control socket (IMAGE.ferry-ctl, or in the state directory for a block device)",
    )
    .option('--state <file>', "the ferry dest's state file, when it was given one: the control socket is beside it")
    .option('--timeout-ms <ms>', 'how long to wait for an answer', parsePositiveInt('--timeout-ms'), 5000)
    // Usage errors exit 2 so scripts can tell them from a refusal (1).
    .exitOverride((err) => {
      throw err.exitCode === 0 ? err : new CommanderError(EXIT_USAGE, err.code, err.message);
    });

  registerDaemonVerbs(ctl);

  ctl
    .command('status')
    .description(
      'print the migration status (a source: its sessions, fence and unacknowledged reports; ferry daemon: name the migration)',
    )
    .argument('[name]', 'ferry daemon: the migration (per disk and total, with ETA)')
    .option('--json', 'print the status as JSON')
    .action(async (name: string | undefined, opts: { json?: boolean }, cmd: Command) => {
      if (name !== undefined) {
        const answer = await daemonRequest(cmd, { cmd: 'status', name });
        if (answer) printAnswer(answer, opts);
        return;
      }
      const status = await requestAny(ctlFlags(cmd), { cmd: 'status' });
      if (!status) return;
      if (opts.json) process.stdout.write(JSON.stringify(status, null, 2) + '\n');
      else process.stdout.write(isSourceStatus(status) ? formatSourceStatus(status) : formatStatusSummary(status));
    });

  ctl
    .command('unfence')
    .description(
      'at a ferry source: abandon a cutover and take writes again; refused once a destination acknowledged its final set',
    )
    .action(async (_opts: unknown, cmd: Command) => {
      const status = await requestSource(ctlFlags(cmd), { cmd: 'unfence' });
      if (status) process.stdout.write('unfenced: the source takes writes again; the cutover is void\n');
    });

  ctl
    .command('watch')
    .description(
      'show live progress until the migration completes (a progress bar on a terminal, else one line per interval)',
    )
    .option('--interval-ms <ms>', 'how often to ask for the status', parsePositiveInt('--interval-ms'), 1000)
    .action(async (opts: { intervalMs: number }, cmd: Command) => {
      await watch(ctlFlags(cmd), opts.intervalMs);
    });

  ctl
    .command('pause')
    .description('stop the background copy; on-demand fetches go on')
    .argument('[name]', 'ferry daemon: the migration')
    .option('--json', 'ferry daemon: print the answer as JSON')
    .action(async (name: string | undefined, opts: { json?: boolean }, cmd: Command) => {
      if (name !== undefined) return daemonVerb(cmd, 'pause', name, opts, `paused ${name}`);
      const status = await request(ctlFlags(cmd), { cmd: 'pause' });
      if (status)
        process.stdout.write(
          `paused: background copy stopped, on-demand fetches go on (${status.blocksHeld}/${status.blocksTotal} blocks held)\n`,
        );
    });

  ctl
    .command('resume')
    .description('restart the background copy')
    .argument('[name]', 'ferry daemon: the migration')
    .option('--json', 'ferry daemon: print the answer as JSON')
    .action(async (name: string | undefined, opts: { json?: boolean }, cmd: Command) => {
      if (name !== undefined) return daemonVerb(cmd, 'resume', name, opts, `resumed ${name}`);
      const status = await request(ctlFlags(cmd), { cmd: 'resume' });
      if (status) process.stdout.write(`resumed: state ${status.state}\n`);
    });

  ctl
    .command('rate')
    .description('limit the background copy: bytes/s with optional k, M, G (x1024); "off" removes the limit')
    .argument('<bytes-per-second>', 'e.g. 500000, 512k, 10M, 1.5G, off (ferry daemon: NAME first)')
    .argument('[rate]', 'ferry daemon: `rate NAME RATE` caps that migration (all its disks together)')
    .option('--json', 'ferry daemon: print the answer as JSON')
    .action(async (first: string, second: string | undefined, opts: { json?: boolean }, cmd: Command) => {
      if (second !== undefined) {
        const rate = rateOrUsage(second);
        const answer = await daemonRequest(cmd, { cmd: 'rate', name: first, bytesPerSecond: rate });
        if (answer)
          printAnswer(
            answer,
            opts,
            rate === null ? `${first}: own rate limit removed` : `${first}: limited to ${formatRate(rate)}`,
          );
        return;
      }
      const bytesPerSecond = rateOrUsage(first);
      const status = await request(ctlFlags(cmd), { cmd: 'rate', bytesPerSecond });
      if (!status) return;
      const limit = status.rateLimitBytesPerSecond;
      process.stdout.write(
        limit === null
          ? 'background copy rate limit removed\n'
          : `background copy limited to ${formatRate(limit)} (${limit} bytes/s)\n`,
      );
    });

  ctl
    .command('detach')
    .description('close the link to the source for good; refused until every block is held')
    .action(async (_opts: unknown, cmd: Command) => {
      const status = await request(ctlFlags(cmd), { cmd: 'detach' });
      if (status) process.stdout.write(`detached from ${status.source}: every block is held, the source can go\n`);
    });

  ctl
    .command('cutover')
    .description(
      'make the destination the authority now: fence the source, apply its final write set (the VM runs here); ' +
        'at a ferry source: fence the image (NBD writes fail with EPERM) and send every destination its final write set; ' +
        'ferry daemon: every disk of the named migration at once',
    )
    .argument('[name]', 'ferry daemon: the migration')
    .option('--json', 'ferry daemon: print the answer as JSON')
    .action(async (name: string | undefined, opts: { json?: boolean }, cmd: Command) => {
      if (name !== undefined) return daemonVerb(cmd, 'cutover', name, opts, `${name}: every disk cut over`);
      const status = await requestAny(ctlFlags(cmd), { cmd: 'cutover' });
      if (!status) return;
      if (isSourceStatus(status))
        process.stdout.write(
          `fenced; final write sets recorded in ${status.cutoverRecord}\n` + formatSourceStatus(status),
        );
      else
        process.stdout.write(
          `cut over: phase ${status.phase}, ${status.blocksInvalidated} blocks written at the source are fetched again\n`,
        );
    });

  ctl
    .command('abort')
    .description('before cutover only: stop, remove the image and its state; the source is untouched')
    .argument('[name]', 'ferry daemon: the migration (every disk)')
    .option('--json', 'ferry daemon: print the answer as JSON')
    .action(async (name: string | undefined, opts: { json?: boolean }, cmd: Command) => {
      if (name !== undefined)
        return daemonVerb(
          cmd,
          'abort',
          name,
          opts,
          `${name} aborted: images and state removed; the sources are untouched`,
        );
      const status = await request(ctlFlags(cmd), { cmd: 'abort' });
      if (status) process.stdout.write('aborted: image and state removed; the source and its VM are untouched\n');
    });

  ctl
    .command('reconnect')
    .description('drop and re-open the upstream connection, optionally at a new URL of the same image')
    .argument('[url]', 'new source URL (default: the current one)')
    .action(async (url: string | undefined, _opts: unknown, cmd: Command) => {
      const req: ControlRequest = url === undefined ? { cmd: 'reconnect' } : { cmd: 'reconnect', url };
      const status = await request(ctlFlags(cmd), req);
      if (status)
        process.stdout.write(
          `reconnected to ${status.source} (${status.connected ? 'connected' : 'not connected yet'}, ${status.reconnects} reconnects)\n`,
        );
    });
}

async function daemonVerb(
  cmd: Command,
  verb: 'pause' | 'resume' | 'cutover' | 'abort',
  name: string,
  opts: { json?: boolean },
  headline: string,
): Promise<void> {
  const answer = await daemonRequest(cmd, { cmd: verb, name });
  if (answer) printAnswer(answer, opts, headline);
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls the status until the migration completes (exit 0) or the socket goes away (exit 1). */
async function watch(flags: CtlFlags, intervalMs: number): Promise<void> {
  const tty = process.stdout.isTTY === true;
  const bar = tty
    ? new cliProgress.SingleBar(
        {
          format: '{bar} {percentage}% | {value}/{total} blocks | {rate} | ETA {etaText} | {state}',
          hideCursor: true,
          stopOnComplete: false,
        },
        cliProgress.Presets.shades_classic,
      )
    : null;
  let started = false;
  const stopBar = (): void => {
    if (bar && started) bar.stop();
    started = false;
  };
  const onSigint = (): void => {
    stopBar();
    process.exit(130);
  };
  process.once('SIGINT', onSigint);
  try {
    for (;;) {
      let status: MigrationStatus;
      try {
        const response = await sendControl(flags.control, { cmd: 'status' }, flags.timeoutMs);
        if (!response.ok) {
          stopBar();
          return fail(`status refused: ${response.error}`);
        }
        if (isSourceStatus(response.status)) {
          stopBar();
          return fail(`watch: ${flags.control} is a ferry source's control socket (use status)`);
        }
        status = response.status;
      } catch (err) {
        stopBar();
        const lost = err instanceof ControlUnreachableError ? 'lost the control socket: ' : '';
        return fail(lost + (err as Error).message);
      }
      const payload = {
        rate: formatRate(status.backgroundBytesPerSecond),
        etaText: formatDuration(status.etaSeconds),
        state: status.state,
      };
      if (bar) {
        if (!started) bar.start(status.blocksTotal, status.blocksHeld, payload);
        else bar.update(status.blocksHeld, payload);
        started = true;
      } else {
        process.stdout.write(formatStatusLine(status) + '\n');
      }
      if (status.state === 'complete') {
        stopBar();
        process.stdout.write(`migration complete: ${status.blocksTotal} blocks held\n`);
        return;
      }
      await sleep(intervalMs);
    }
  } finally {
    process.off('SIGINT', onSigint);
  }
}
