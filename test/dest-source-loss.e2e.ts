/**
 * The source goes away mid-migration and comes back: held blocks are served
 * meanwhile, reads of missing blocks wait and then succeed, the copy resumes.
 */
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import { freePort, servingPort, startFerry } from './helpers/ferry-daemon';
import { NbdClient } from '../src/nbd/client';
import { until } from './helpers/until';

const SIZE = 8 << 20;

t.test('source stopped and restarted mid-migration', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-loss-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sourcePath = path.join(dir, 'source.img');
  const source = crypto.randomBytes(SIZE);
  fs.writeFileSync(sourcePath, source);
  const port = await freePort();
  const serveArgs = ['serve', '--image', sourcePath, '--read-only', '--listen', `127.0.0.1:${port}`];
  let src = await startFerry(t, serveArgs);
  const image = path.join(dir, 'dest.img');
  const dest = await startFerry(t, [
    'dest',
    '--cutover-at-start',
    ...['--source', `nbd://127.0.0.1:${port}/source.img`, '--image', image, '--listen', '127.0.0.1:0'],
    ...['--rate', '512k', '--log-level', 'info'],
  ]);
  const vm = await NbdClient.connect({ host: '127.0.0.1', port: servingPort(dest) }, { exportName: 'dest.img' });
  // Reads before the cutover are answered by the source and not kept: this one comes after it.
  await dest.waitForLog(/^cutover complete/, 30_000);
  const heldBlock = await vm.read(0, 4096); // fetched now, held from here on
  t.ok(heldBlock.equals(source.subarray(0, 4096)));

  t.equal(await src.stop('SIGKILL'), null, 'source killed');
  await dest.waitForLog('source connection lost; reconnecting', 10_000);
  // The source stays down until restarted below: a read that waited for it would fail with EIO.
  t.ok((await vm.read(0, 4096)).equals(heldBlock), 'a held block is served while the source is down');

  const far = SIZE - 64 * 1024; // beyond what the rate-limited copy has reached
  const failedBefore = dest.logCount('source unreachable');
  const waiting = vm.read(far, 8192);
  let settled = false;
  void waiting.finally(() => (settled = true));
  // Two more failed reconnects (backoff timers) after the read was sent: the destination had it meanwhile.
  await until(() => dest.logCount('source unreachable') >= failedBefore + 2, 'two more reconnects failed');
  t.notOk(settled, 'a read of a missing block waits while the source is down');

  src = await startFerry(t, serveArgs);
  const got = await waiting;
  t.ok(got.equals(source.subarray(far, far + 8192)), 'and then succeeds with the source content');
  await dest.waitForLog('source reconnected', 10_000);

  const write = crypto.randomBytes(10000);
  await vm.write(12345, write, true);
  await vm.close();
  // Lift the limit by restarting without it; the copy resumes where it stopped.
  t.equal(await dest.stop(), 0);
  const resumed = await startFerry(t, ['dest', '--image', image, '--listen', '127.0.0.1:0']);
  const resumedLog = await resumed.waitForLog(/migration (resumed|complete)/, 10_000);
  t.ok(Number(resumedLog.held ?? 0) > 0, 'resumed with blocks already held');
  await resumed.waitForLog('migration complete: every block held, source disconnected', 60_000);
  t.equal(await resumed.stop(), 0);
  const expected = Buffer.from(source);
  write.copy(expected, 12345);
  t.ok(fs.readFileSync(image).equals(expected), 'final image equals the source plus the write');
  await src.stop();

  // A completed destination restarts without any source.
  const alone = await startFerry(t, ['dest', '--image', image, '--listen', '127.0.0.1:0']);
  await alone.waitForLog('migration already complete; serving locally without a source', 10_000);
  const local = await NbdClient.connect({ host: '127.0.0.1', port: servingPort(alone) }, { exportName: 'dest.img' });
  t.ok((await local.read(12345, 10000)).equals(write), 'served locally after completion');
  await local.close();
  t.equal(await alone.stop(), 0);
});
