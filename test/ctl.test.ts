import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import t from 'tap';
import { formatDuration, parseByteRate } from '../src/control/byte-rate';
import { ControlServer } from '../src/control/control-server';
import { SimulatedMigration } from './helpers/simulated-migration';
import { formatStatusSummary } from '../src/control/status-text';

const log = pino({ level: 'silent' });
const BIN = path.resolve(__dirname, '../../bin/ferry.js');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `ferry ...` asynchronously, so the control server in this process keeps answering. */
function ferry(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  const cleanEnv = { ...process.env, ...env };
  if (!('FERRY_CONTROL' in env)) delete cleanEnv.FERRY_CONTROL;
  // tap's coverage and process-info hooks are not wanted in the child, and cost ~0.5 s a start.
  delete cleanEnv.NODE_OPTIONS;
  return new Promise((resolve) => {
    // A bound for a hung command; a loaded machine can take tens of seconds to start node.
    execFile(process.execPath, [BIN, ...args], { env: cleanEnv, timeout: 120_000 }, (err, stdout, stderr) => {
      const code = err ? ((err as { code?: unknown }).code as number | null) : 0;
      resolve({ code: typeof code === 'number' ? code : null, stdout, stderr });
    });
  });
}

async function daemon(
  t: { teardown(fn: () => unknown): void },
  sim: SimulatedMigration,
): Promise<{ socketPath: string; server: ControlServer }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-ctl-'));
  const socketPath = path.join(dir, 'control.sock');
  const server = new ControlServer(sim, log);
  await server.listen(socketPath);
  t.teardown(async () => {
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { socketPath, server };
}

t.test('rate values: suffixes, off, and clear errors', async (t) => {
  const table: Array<[string, number | null]> = [
    ['500000', 500000],
    ['512k', 512 * 1024],
    ['512K', 512 * 1024],
    ['10M', 10 * 1024 ** 2],
    ['10MB/s', 10 * 1024 ** 2],
    ['1.5G', 1.5 * 1024 ** 3],
    ['64Mi', 64 * 1024 ** 2],
    ['1Ki', 1024],
    ['off', null],
    ['OFF', null],
    ['none', null],
  ];
  for (const [text, bytes] of table) t.equal(parseByteRate(text), bytes, text);
  t.throws(() => parseByteRate('0'), /rate 0 would stop the copy.*\(got "0"\)/);
  t.throws(() => parseByteRate('0.0001'), /at least 1 byte per second \(got "0.0001"/);
  t.throws(() => parseByteRate('0.5'), /at least 1 byte per second \(got "0.5" = 0.5 bytes\/s\)/);
  t.throws(() => parseByteRate('0.5 B/s'), /at least 1 byte per second/);
  t.equal(parseByteRate('0.5k'), 512, 'a fraction of a larger unit is fine');
  t.equal(parseByteRate('1.4'), 1, 'whole bytes per second from 1 up');
  t.throws(() => parseByteRate('ten'), /rate must be bytes per second.*\(got "ten"\)/);
  t.throws(() => parseByteRate('-5M'), /\(got "-5M"\)/);
  t.throws(() => parseByteRate('5X'), /\(got "5X"\)/);
  t.throws(() => parseByteRate('99999999T'), /too large/);
});

t.test('status summary text', async (t) => {
  const sim = new SimulatedMigration({
    blocksHeld: 512,
    onDemandFetches: 9,
    onDemandLatencyMs: { p50: 3.25, p99: 41, count: 9 },
    backgroundBytesPerSecond: 2.5 * 1024 ** 2,
    etaSeconds: 125,
    rateLimitBytesPerSecond: 10 * 1024 ** 2,
    reconnects: 1,
  });
  const text = formatStatusSummary(sim.status());
  t.match(text, /^state:\s+migrating$/m);
  t.match(text, /^held:\s+512 \/ 1024 blocks of 64\.0 KiB \(50\.0%\), 32\.0 MiB of 64\.0 MiB$/m);
  t.match(text, /^rate:\s+2\.50 MiB\/s background \(limit 10\.0 MiB\/s\), 0 B in flight of a 0 B window$/m);
  t.match(text, /^fetched:\s+0 B, 0 B skipped \(zeros at the source\)$/m);
  t.match(text, /^on-demand:\s+9 fetches, latency p50 3\.3 ms, p99 41\.0 ms$/m);
  t.match(text, /^eta:\s+2m 5s$/m);
  t.match(text, /^connected:\s+yes \(reconnects 1, fetch errors 0\)$/m);
  t.equal(formatDuration(null), 'unknown');
  t.equal(formatDuration(3725), '1h 2m 5s');
});

t.test('ferry ctl status, --json', async (t) => {
  const sim = new SimulatedMigration({ blocksHeld: 256, etaSeconds: 30 });
  const { socketPath } = await daemon(t, sim);
  const human = await ferry(['ctl', '--control', socketPath, 'status']);
  t.equal(human.code, 0, human.stderr);
  t.equal(human.stdout, formatStatusSummary(sim.status()));
  t.match(human.stdout, /256 \/ 1024 blocks of 64\.0 KiB \(25\.0%\)/);
  const json = await ferry(['ctl', '--control', socketPath, 'status', '--json']);
  t.equal(json.code, 0, json.stderr);
  const { diagnostics, ...status } = JSON.parse(json.stdout) as {
    diagnostics: { activeResources: Record<string, number> };
  };
  t.same(status, sim.status());
  const kinds = Object.keys(diagnostics.activeResources);
  t.ok(
    kinds.some((k) => k.startsWith('Pipe')),
    `what the daemon holds open, by kind, its control socket among them: ${kinds.join(', ')}`,
  );
  t.ok(
    Object.values(diagnostics.activeResources).every((n) => Number.isInteger(n) && n > 0),
    'each a count',
  );
  const viaEnv = await ferry(['ctl', 'status', '--json'], { FERRY_CONTROL: socketPath });
  t.equal(viaEnv.code, 0, 'FERRY_CONTROL names the socket');
});

t.test('ferry ctl pause, resume, rate, reconnect, detach', async (t) => {
  const sim = new SimulatedMigration({ blocksTotal: 8 });
  const { socketPath } = await daemon(t, sim);
  const ctl = (...args: string[]): Promise<Run> => ferry(['ctl', '--control', socketPath, ...args]);

  let r = await ctl('pause');
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /^paused: background copy stopped/);
  r = await ctl('resume');
  t.equal(r.stdout, 'resumed: state migrating\n');
  r = await ctl('rate', '10M');
  t.equal(r.stdout, 'background copy limited to 10.0 MiB/s (10485760 bytes/s)\n');
  r = await ctl('rate', '1.5G');
  t.equal(r.code, 0);
  r = await ctl('rate', 'off');
  t.equal(r.stdout, 'background copy rate limit removed\n');
  r = await ctl('reconnect', 'nbd://new-source:10809/disk');
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /^reconnected to nbd:\/\/new-source:10809\/disk \(connected, 1 reconnects\)/);
  r = await ctl('reconnect', 'gopher://x');
  t.equal(r.code, 1, 'the daemon said no');
  t.match(r.stderr, /reconnect refused: reconnect: url must start with nbd:\/\//);

  r = await ctl('detach');
  t.equal(r.code, 1, 'detach before complete is refused');
  t.equal(r.stdout, '');
  t.equal(r.stderr, 'ferry ctl: detach refused: cannot detach: 8 of 8 blocks are not held yet\n');
  sim.advance(8);
  r = await ctl('detach');
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, 'detached from nbd://new-source:10809/disk: every block is held, the source can go\n');

  t.same(sim.calls, [
    'pause',
    'resume',
    'rate 10485760',
    'rate 1610612736',
    'rate null',
    'reconnect nbd://new-source:10809/disk',
    'reconnect gopher://x',
    'detach',
    'detach',
  ]);
});

t.test('ferry ctl usage errors exit 2 and reach no daemon', async (t) => {
  const sim = new SimulatedMigration();
  const { socketPath } = await daemon(t, sim);
  const cases: Array<[string[], RegExp]> = [
    [['ctl', '--control', socketPath, 'rate', '0'], /rate 0 would stop the copy/],
    [['ctl', '--control', socketPath, 'rate', 'fast'], /\(got "fast"\)/],
    [['ctl', '--control', socketPath, 'rate', '0.5'], /rate must be at least 1 byte per second \(got "0.5"/],
    [['ctl', '--control', socketPath, 'rate'], /missing required argument/],
    [
      ['ctl', '--control', socketPath, 'watch', '--interval-ms', 'soon'],
      /--interval-ms must be a positive integer \(got "soon"\)/,
    ],
    [['ctl', '--control', socketPath, 'explode'], /unknown command 'explode'/],
    [['ctl', 'status'], /ctl: give --control PATH \(or FERRY_CONTROL\), or --image IMAGE/],
  ];
  // One after another: several at once under tap lost their output on a loaded machine.
  const runs: Run[] = [];
  for (const [args] of cases) runs.push(await ferry(args));
  cases.forEach(([args, message], i) => {
    t.equal(runs[i].code, 2, args.join(' '));
    t.match(runs[i].stderr, message);
  });
  t.same(sim.calls, []);
});

t.test('ferry ctl with no daemon exits 1 naming the socket', async (t) => {
  const socketPath = path.join(os.tmpdir(), `ferry-absent-${process.pid}.sock`);
  const r = await ferry(['ctl', '--control', socketPath, 'status']);
  t.equal(r.code, 1);
  t.equal(r.stderr, `ferry ctl: no ferry dest is listening on ${socketPath} (ENOENT)\n`);
});

t.test('ferry ctl watch without a TTY prints lines until complete', async (t) => {
  const sim = new SimulatedMigration({ blocksTotal: 100, backgroundBytesPerSecond: 1024 ** 2, etaSeconds: 3 });
  const { socketPath } = await daemon(t, sim);
  // Each status request after the first moves the migration on, so the test does not race the clock.
  const status = sim.status.bind(sim);
  let requests = 0;
  sim.status = () => {
    if (requests++ > 0) sim.advance(25);
    return status();
  };
  const r = await ferry(['ctl', '--control', socketPath, 'watch', '--interval-ms', '50']);
  t.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trimEnd().split('\n');
  t.equal(lines.length, 6, 'one line per status, then the end');
  t.equal(lines[0], 'migrating post-copy 0/100 blocks (0.0%) rate 1.00 MiB/s eta 3s on-demand 0 p99 0.0 ms connected');
  t.match(lines[1], /^migrating post-copy 25\/100 blocks \(25\.0%\)/);
  t.match(lines.at(-2), /^complete \S+ 100\/100 blocks \(100\.0%\)/);
  t.equal(lines.at(-1), 'migration complete: 100 blocks held');
  t.notOk(r.stdout.includes('\u001b['), 'no terminal escapes without a TTY');
});

t.test('ferry ctl watch exits 1 when the control socket goes away', async (t) => {
  const sim = new SimulatedMigration();
  const { socketPath, server } = await daemon(t, sim);
  const status = sim.status.bind(sim);
  let requests = 0;
  sim.status = () => {
    if (++requests === 3) setImmediate(() => void server.close());
    return status();
  };
  const r = await ferry(['ctl', '--control', socketPath, 'watch', '--interval-ms', '50']);
  t.equal(r.code, 1);
  t.equal(r.stdout.trimEnd().split('\n').length, 3, 'it printed progress before');
  t.match(r.stderr, new RegExp(`^ferry ctl: lost the control socket: no ferry dest is listening on ${socketPath}`));
});
