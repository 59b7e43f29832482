/**
 * `ferry ctl` verbs for `ferry daemon`: each names the migration it acts on
 * (create, start, list, status NAME, pause NAME, resume NAME, rate NAME RATE,
 * cutover NAME, abort NAME, forget NAME), and the images it sources
 * (sources, source-cutover NAME, source-unfence NAME). With --json the daemon's answer is
 * printed as it came; exit 1 when the daemon refused or cannot be reached.
 */
import { InvalidArgumentError, type Command } from 'commander';
import { formatBytes, formatDuration, formatRate, parseByteRate } from '../control/byte-rate';
import { sendControl } from '../control/control-client';
import { parseDaemonResponseLine, type DaemonRequest, type DaemonResponse } from '../control/daemon-protocol';

/** Where a packaged ferryd listens (daemon.control's default). */
export const DEFAULT_DAEMON_CONTROL = '/run/ferry/ferryd.sock';

interface DaemonCtlFlags {
  control?: string;
  timeoutMs: number;
}

export interface DaemonAnswerOptions {
  json?: boolean;
}

function fail(message: string): null {
  process.stderr.write(`ferry ctl: ${message}\n`);
  process.exitCode = 1;
  return null;
}

/** Sends one request to the daemon; prints the refusal and returns null when it said no. */
export async function daemonRequest(cmd: Command, request: DaemonRequest): Promise<Record<string, unknown> | null> {
  const flags = cmd.optsWithGlobals<DaemonCtlFlags>();
  const control = flags.control ?? DEFAULT_DAEMON_CONTROL;
  let response: DaemonResponse;
  try {
    // A create or cutover waits for sources and fences: give it more than a status does.
    const slow = ['create', 'cutover', 'abort', 'forget', 'source-cutover'].includes(request.cmd);
    response = await sendControl(
      control,
      request,
      slow ? Math.max(flags.timeoutMs, 120_000) : flags.timeoutMs,
      parseDaemonResponseLine,
    );
  } catch (err) {
    return fail((err as Error).message);
  }
  if (!response.ok) return fail(response.error);
  return response.status;
}

/** Prints the answer: JSON, or the migration's report as text. */
export function printAnswer(answer: Record<string, unknown>, opts: DaemonAnswerOptions, headline?: string): void {
  if (opts.json) {
    process.stdout.write(JSON.stringify(answer, null, 2) + '\n');
    return;
  }
  if (headline) process.stdout.write(headline + '\n');
  if (Array.isArray(answer.disks)) process.stdout.write(formatReport(answer as unknown as ReportText));
}

interface ReportText {
  name: string;
  state: string;
  error: string | null;
  queued: boolean;
  allocatedRate: number | null;
  total: {
    bytesTotal: number;
    bytesHeld: number;
    percent: number;
    backgroundBytesPerSecond: number;
    etaSeconds: number | null;
  };
  disks: Array<{
    name: string;
    export: string;
    status: {
      phase: string;
      state: string;
      blocksHeld: number;
      blocksTotal: number;
      blockSize: number;
      backgroundBytesPerSecond: number;
      etaSeconds: number | null;
    } | null;
  }>;
}

function formatReport(r: ReportText): string {
  const t = r.total;
  const lines = [
    `${r.name}: ${r.state}${r.queued ? ' (waiting for a copy slot)' : ''} — ${t.percent}% of ${formatBytes(t.bytesTotal)} held, ` +
      `${formatRate(t.backgroundBytesPerSecond)}, ETA ${formatDuration(t.etaSeconds)}` +
      (r.allocatedRate ? `, budget ${formatRate(r.allocatedRate)}` : ''),
  ];
  if (r.error) lines.push(`  error: ${r.error}`);
  for (const d of r.disks) {
    const s = d.status;
    lines.push(
      s
        ? `  ${d.name} (${d.export}): ${s.phase}/${s.state} ${s.blocksHeld}/${s.blocksTotal} blocks, ` +
            `${formatRate(s.backgroundBytesPerSecond)}, ETA ${formatDuration(s.etaSeconds)}`
        : `  ${d.name} (${d.export}): not open`,
    );
  }
  return lines.join('\n') + '\n';
}

/** `--disk name=vda,source=URL,image=PATH[,export=NAME][,block_size=N][,dirty_bitmap=B]`. */
function parseDisk(value: string, previous: Array<Record<string, unknown>> = []): Array<Record<string, unknown>> {
  const disk: Record<string, unknown> = {};
  for (const part of value.split(',')) {
    const eq = part.indexOf('=');
    if (eq <= 0) throw new InvalidArgumentError(`--disk takes key=value pairs separated by commas (got "${part}")`);
    const key = part.slice(0, eq).trim();
    const v = part.slice(eq + 1);
    disk[key] = key === 'block_size' ? Number(v) : v;
  }
  return [...previous, disk];
}

function parseRate(value: string): number | null {
  try {
    return parseByteRate(value);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

export function registerDaemonVerbs(ctl: Command): void {
  ctl
    .command('create')
    .description('ferry daemon: create a migration (checks its sources, creates images and state; copies nothing yet)')
    .argument('<name>', 'migration name (the VM)')
    .requiredOption(
      '--disk <spec>',
      'name=vda,source=URL,image=PATH[,export=NAME,block_size=N,dirty_bitmap=B]; once per disk',
      parseDisk,
    )
    .option('--rate <bytes/s>', "the migration's background cap, e.g. 50M", parseRate)
    .option('--weight <n>', 'share of the host max_rate against other migrations', Number)
    .option('--start', 'start copying at once')
    .option('--cutover-at-start', 'the sources are no longer written: cut over at once')
    .option('--json', 'print the answer as JSON')
    .action(
      async (
        name: string,
        opts: {
          disk: Array<Record<string, unknown>>;
          rate?: number | null;
          weight?: number;
          start?: boolean;
          cutoverAtStart?: boolean;
          json?: boolean;
        },
        cmd: Command,
      ) => {
        const spec: Record<string, unknown> = { name, disk: opts.disk };
        if (opts.rate !== undefined) spec.rate = opts.rate ?? 0;
        if (opts.weight !== undefined) spec.weight = opts.weight;
        if (opts.start) spec.start = true;
        if (opts.cutoverAtStart) spec.cutover = 'at-start';
        const answer = await daemonRequest(cmd, { cmd: 'create', spec });
        if (answer) printAnswer(answer, opts, `created ${name}`);
      },
    );

  for (const verb of ['start', 'forget'] as const)
    ctl
      .command(verb)
      .description(
        verb === 'start'
          ? 'ferry daemon: start copying a created migration'
          : 'ferry daemon: drop a complete migration from the registry (its images stay; its exports are no longer served)',
      )
      .argument('<name>', 'migration name')
      .option('--json', 'print the answer as JSON')
      .action(async (name: string, opts: DaemonAnswerOptions, cmd: Command) => {
        const answer = await daemonRequest(cmd, { cmd: verb, name });
        if (answer) printAnswer(answer, opts, verb === 'start' ? `started ${name}` : `forgot ${name}; its images stay`);
      });

  ctl
    .command('reload')
    .description(
      'ferry daemon: read the config file again (as SIGHUP does): rates, limits, declared migrations, source exports and listener; names each key not applied',
    )
    .option('--json', 'print the answer as JSON')
    .action(async (opts: DaemonAnswerOptions, cmd: Command) => {
      const answer = await daemonRequest(cmd, { cmd: 'reload' });
      if (!answer) return;
      if (opts.json) return printAnswer(answer, opts);
      const reload = answer.reload as { applied: string[]; notApplied: Array<{ key: string; reason: string }> };
      const lines = ['config reloaded'];
      if (reload.applied.length) lines.push(`applied: ${reload.applied.join(', ')}`);
      for (const n of reload.notApplied) lines.push(`not applied: ${n.key}: ${n.reason}`);
      process.stdout.write(lines.join('\n') + '\n');
    });

  ctl
    .command('list')
    .description('ferry daemon: every migration with its state, progress and ETA, and every source export')
    .option('--json', 'print the answer as JSON')
    .action(async (opts: DaemonAnswerOptions, cmd: Command) => {
      const answer = await daemonRequest(cmd, { cmd: 'list' });
      if (!answer) return;
      if (opts.json) return printAnswer(answer, opts);
      const rows = answer.migrations as Array<{
        name: string;
        state: string;
        disks: number;
        percent: number;
        backgroundBytesPerSecond: number;
        etaSeconds: number | null;
      }>;
      if (rows.length === 0) process.stdout.write('no migrations\n');
      const sources = answer.sources as {
        exports: Array<{
          export: string;
          writes: string;
          destinationsConnected: number;
          bytesSent: number;
          fenced: boolean;
        }>;
      };
      for (const e of sources.exports)
        process.stdout.write(
          `source ${e.export}\t${e.writes}${e.fenced ? ' (fenced)' : ''}\t${e.destinationsConnected} destination(s)\t${formatBytes(e.bytesSent)} sent\n`,
        );
      for (const r of rows)
        process.stdout.write(
          `${r.name}\t${r.state}\t${r.disks} disk(s)\t${r.percent}%\t${formatRate(r.backgroundBytesPerSecond)}\tETA ${formatDuration(r.etaSeconds)}\n`,
        );
    });

  ctl
    .command('sources')
    .description('ferry daemon: the images it sources: each export with its sessions, bytes sent and destinations')
    .option('--json', 'print the answer as JSON')
    .action(async (opts: DaemonAnswerOptions, cmd: Command) => {
      const answer = await daemonRequest(cmd, { cmd: 'sources' });
      if (!answer) return;
      if (opts.json) return printAnswer(answer, opts);
      process.stdout.write(formatSources(answer as unknown as SourcesText));
    });

  ctl
    .command('source-cutover')
    .description(
      'ferry daemon: fence a tracked source export (its VM writes no more) and hand its final write set to every destination',
    )
    .argument('<name>', 'source export name')
    .option('--json', 'print the answer as JSON')
    .action(async (name: string, opts: DaemonAnswerOptions, cmd: Command) => {
      const answer = await daemonRequest(cmd, { cmd: 'source-cutover', name });
      if (!answer) return;
      if (opts.json) return printAnswer(answer, opts);
      const sessions = answer.sessions as Array<{ id: string; cutover: { ranges: number; acked: boolean } | null }>;
      const lines = [`${name}: fenced; its VM's writes are refused from now on`];
      for (const s of sessions)
        lines.push(
          `  session ${s.id}: final write set of ${s.cutover?.ranges ?? 0} range(s)` +
            (s.cutover?.acked ? ', acknowledged' : ', sent when the destination is connected'),
        );
      process.stdout.write(lines.join('\n') + '\n');
    });

  ctl
    .command('source-unfence')
    .description(
      'ferry daemon: give a source export back to its VM after an abandoned cutover (refused once a destination took over)',
    )
    .argument('<name>', 'source export name')
    .option('--json', 'print the answer as JSON')
    .action(async (name: string, opts: DaemonAnswerOptions, cmd: Command) => {
      const answer = await daemonRequest(cmd, { cmd: 'source-unfence', name });
      if (answer) printAnswer(answer, opts, `${name}: unfenced; its VM writes again and the cutover is void`);
    });
}

interface SourcesText {
  listen: string | null;
  exports: Array<{
    export: string;
    image: string;
    writes: string;
    fenced: boolean;
    wireConnections: number;
    destinationsConnected: number;
    bytesSent: number;
    sessions: Array<{ id: string; connections: number; pendingBlocks: number; cutover: { acked: boolean } | null }>;
  }>;
  failed: Array<{ export: string; image: string; reason: string; attempts: number; nextAttemptAt: string }>;
  removalRefused: Array<{ export: string; reason: string }>;
}

function formatSources(r: SourcesText): string {
  const lines = [r.listen ? `source listener ${r.listen}` : 'no source listener (source.listen is not set)'];
  for (const e of r.exports) {
    lines.push(
      `${e.export}\t${e.image}\t${e.writes}${e.fenced ? ' (fenced)' : ''}\t${e.destinationsConnected} destination(s) connected\t` +
        `${formatBytes(e.bytesSent)} sent`,
    );
    for (const s of e.sessions)
      lines.push(
        `  session ${s.id}: ${s.connections} connection(s), ${s.pendingBlocks} block(s) to report` +
          (s.cutover ? `, cut over${s.cutover.acked ? ' (acknowledged)' : ''}` : ''),
      );
  }
  for (const f of r.failed)
    lines.push(
      `${f.export}\t${f.image}\tnot open (retrying): ${f.reason}; ${f.attempts} attempt(s), next at ${f.nextAttemptAt}`,
    );
  for (const f of r.removalRefused) lines.push(`${f.export}: still served: ${f.reason}`);
  return lines.join('\n') + '\n';
}
