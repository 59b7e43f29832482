/** `ferry migrate-vm` as a process: flags, the source cutover over its control socket, the report. */
import net from 'node:net';
import path from 'node:path';
import pino from 'pino';
import t, { Test } from 'tap';
import { ControlServer } from '../src/control/control-server';
import { FakeQmp } from './helpers/fake-qmp';
import { FakeSourceQemu } from './helpers/fake-source-qemu';
import { run } from './helpers/run';
import { SimulatedMigration } from './helpers/simulated-migration';
import { tempDir } from './helpers/temp-dir';

const FERRY_BIN = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');

function migrateVm(...args: string[]) {
  return run(process.execPath, [FERRY_BIN, 'migrate-vm', ...args], { timeoutMs: 30_000 });
}

async function fakeSource(t: Test, dir: string): Promise<{ qemu: FakeSourceQemu; fake: FakeQmp; qmpPath: string }> {
  const qmpPath = path.join(dir, 'qmp.sock');
  const qemu = new FakeSourceQemu({});
  const fake = await FakeQmp.start(t, qmpPath, (cmd) => qemu.handle(cmd));
  qemu.qmp = fake;
  return { qemu, fake, qmpPath };
}

/** A control socket that answers every request with `response` and records the requests. */
async function answeringControl(t: Test, socketPath: string, response: object): Promise<string[]> {
  const requests: string[] = [];
  const server = net.createServer((socket) => {
    socket.setEncoding('utf8');
    socket.on('data', (line: string) => {
      requests.push(line.trim());
      socket.end(JSON.stringify(response) + '\n');
    });
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return requests;
}

t.test('usage errors exit 2 and name the flag', async (t) => {
  const noQmp = await migrateVm('--to', 'tcp:127.0.0.1:1');
  t.equal(noQmp.code, 2);
  t.match(noQmp.stderr, /--qmp <path>/);
  const badRate = await migrateVm('--qmp', '/x', '--to', 'tcp:h:1', '--max-bandwidth', 'fast');
  t.equal(badRate.code, 2);
  t.match(badRate.stderr, /rate must be bytes per second .*got "fast"/);
});

t.test('cuts the source over at switch-over and reports downtime and the destination', async (t) => {
  const dir = tempDir(t);
  const { fake, qmpPath } = await fakeSource(t, dir);
  const sourceControl = path.join(dir, 'source.sock');
  const cutovers = await answeringControl(t, sourceControl, { ok: true, status: { state: 'fenced', blocksTotal: 0 } });
  const destControl = path.join(dir, 'dest.sock');
  const simulated = new SimulatedMigration({ blocksTotal: 64 });
  simulated.advance(64);
  const control = new ControlServer(simulated, pino({ level: 'silent' }));
  await control.listen(destControl);
  t.teardown(() => control.close());

  const r = await migrateVm(
    '--qmp',
    qmpPath,
    '--to',
    'tcp:127.0.0.1:4444',
    '--source-control',
    sourceControl,
    '--dest-control',
    destControl,
    '--json',
    '--interval-ms',
    '50',
  );
  t.equal(r.code, 0, r.stderr);
  t.same(cutovers, ['{"cmd":"cutover"}'], 'one cutover request, as ferry ctl sends it');
  t.ok(fake.commands.includes('migrate-continue'));
  const report = JSON.parse(r.stdout);
  t.equal(report.memory.downtimeMs, 42);
  t.equal(report.cutover, 'source');
  t.equal(report.destination.state, 'complete');
  t.type(report.cutoverToCompleteMs, 'number');
  t.match(r.stderr, /memory downtime 42 ms/);
});

t.test('a source control socket that is not there: the migration is cancelled, the VM runs on', async (t) => {
  const dir = tempDir(t);
  const { qemu, fake, qmpPath } = await fakeSource(t, dir);
  const r = await migrateVm(
    '--qmp',
    qmpPath,
    '--to',
    'tcp:127.0.0.1:4444',
    '--source-control',
    path.join(dir, 'none.sock'),
  );
  t.equal(r.code, 1);
  t.match(
    r.stderr,
    /disk cutover did not run: ferry source control .*none\.sock: .*ENOENT.*the migration was cancelled and the source VM runs on \[source VM: running\]/,
  );
  t.ok(fake.commands.includes('migrate_cancel'));
  t.notOk(fake.commands.includes('migrate-continue'));
  t.equal(qemu.vm, 'running');
});

t.test('a source that refuses the cutover: cancelled, and the refusal is shown', async (t) => {
  const dir = tempDir(t);
  const { qemu, qmpPath } = await fakeSource(t, dir);
  const sourceControl = path.join(dir, 'source.sock');
  await answeringControl(t, sourceControl, { ok: false, error: 'cutover: no destination session' });
  const r = await migrateVm('--qmp', qmpPath, '--to', 'tcp:127.0.0.1:4444', '--source-control', sourceControl);
  t.equal(r.code, 1);
  t.match(r.stderr, /ferry source refused the cutover: cutover: no destination session/);
  t.equal(qemu.migration, 'cancelled');
});

t.test('no QMP socket: a clear error, nothing started', async (t) => {
  const dir = tempDir(t);
  const r = await migrateVm('--qmp', path.join(dir, 'qmp.sock'), '--to', 'tcp:127.0.0.1:4444');
  t.equal(r.code, 1);
  t.match(r.stderr, /no QMP socket at .*qmp\.sock \(ENOENT\)/);
});
