/**
 * A declared source export whose image cannot be opened is tried again by
 * the daemon itself, with no reload: one image appears later, another is
 * released by the process that held it. Meanwhile `ferry ctl sources` (text
 * and JSON) and the metrics show each one not open with its last error, a
 * HELLO for it is refused saying so, and each failure is logged once, not
 * at every attempt. Once open, each is served: one copied by a ferry dest,
 * the other written by its VM through the daemon's NBD listener.
 */
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { NbdClient } from '../src/nbd/client';
import { CodecPool } from '../src/pool';
import type { SourcesReport } from '../src/daemon/daemon-sources';
import { ctlStatus, ferryCtl, freePort, startFerry } from './helpers/ferry-daemon';
import { ctl, ferrydConfig, nbdPort, startFerryd } from './helpers/ferryd';
import { tempDir, writePatternFile } from './helpers/temp-dir';
import { until } from './helpers/until';
import { openWireUpstream } from './helpers/wire-source';

const DISK_BYTES = 1 << 20;
const BS = 4096;

t.test('an export not open is retried by itself, and shows why meanwhile', async (t) => {
  const dir = tempDir(t, 'ferryd-retry-');
  const late = path.join(dir, 'late.img'); // does not exist yet
  const held = path.join(dir, 'held.img');
  const heldContent = writePatternFile(held, DISK_BYTES, 7);
  // Another process holds the second image exclusively: a writable `ferry serve`.
  const holder = await startFerry(t, ['serve', '--image', held, '--listen', '127.0.0.1:0']);
  const holderPid = holder.child.pid!;

  const metricsPort = await freePort();
  const source =
    `[source]\nlisten = "127.0.0.1:0"\ninsecure = true\nopen_retry_min_ms = 50\nopen_retry_max_ms = 400\n\n` +
    `[[source.export]]\nname = "late"\nimage = ${JSON.stringify(late)}\n\n` +
    `[[source.export]]\nname = "held"\nimage = ${JSON.stringify(held)}\nwrites = "tracked"\n`;
  const d = ferrydConfig(dir, { metrics: `127.0.0.1:${metricsPort}` }, source);
  const daemon = await startFerryd(t, d);
  t.equal(daemon.serving.sourceExports, 0, 'neither export is open at start');
  const sources = async (): Promise<SourcesReport> => (await ctl(d, { cmd: 'sources' })) as unknown as SourcesReport;

  // Several attempts each, and still one log line per export (its error has not changed).
  await until(
    async () => (await sources()).failed.every((f) => f.attempts >= 4),
    'both exports were tried four times',
    60_000,
    50,
  );
  t.equal(daemon.logCount('cannot source: the export is not open; trying again'), 2, 'one line per export');
  const report = await sources();
  const byName = Object.fromEntries(report.failed.map((f) => [f.export, f]));
  t.equal(byName.late.state, 'retrying');
  t.match(byName.late.reason, /ENOENT|no such file/);
  t.match(byName.held.reason, `${held} is in use by pid ${holderPid}`, 'the holder is named');
  t.ok(Date.parse(byName.held.nextAttemptAt) > 0, 'the next attempt is given');

  const text = await ferryCtl(d.control, 'sources');
  t.equal(text.code, 0, text.stderr);
  t.match(text.stdout, /^late\t.*late\.img\tnot open \(retrying\): .*ENOENT/m);
  t.match(text.stdout, new RegExp(`^held\\t.*not open \\(retrying\\): .*in use by pid ${holderPid}`, 'm'));
  const metrics = async (): Promise<string> => (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  t.match(await metrics(), /ferry_source_export_open\{export="late"\} 0/);
  t.match(await metrics(), /ferry_source_export_open_failures\{export="held"\} ([4-9]|[1-9]\d+)\n/);

  // A destination asking for it now hears why, not "unknown export".
  const pool = new CodecPool({ workers: 1 });
  t.teardown(() => pool.close());
  const wireAt = String(daemon.serving.source);
  await t.rejects(
    openWireUpstream(`ferry://${wireAt}/late`, { kind: 'insecure' }, pool, { blockSize: BS, maxAttempts: 2 }),
    /export "late" is declared but its image is not open \(.*ENOENT.*\); the source keeps trying/,
  );

  await t.test('the image appears: served without a reload', async (t) => {
    const content = crypto.randomBytes(DISK_BYTES);
    fs.writeFileSync(late + '.tmp', content);
    fs.renameSync(late + '.tmp', late);
    await until(async () => (await sources()).exports.some((e) => e.export === 'late'), 'late is open', 30_000, 50);
    const opened = await daemon.waitForLog('source export open after retrying');
    t.equal(opened.export, 'late', 'its opening is logged');
    t.match(await metrics(), /ferry_source_export_open\{export="late"\} 1/);
    const image = path.join(dir, 'copy-of-late.img');
    const control = path.join(dir, 'dest.sock');
    await startFerry(t, [
      ...['dest', '--source', `ferry://${wireAt}/late`, '--image', image, '--listen', '127.0.0.1:0'],
      ...['--control', control, '--insecure', '--cutover-at-start'],
    ]);
    await until(async () => (await ctlStatus(control)).phase === 'complete', 'the copy is complete', 60_000, 100);
    t.ok(fs.readFileSync(image).equals(content), 'the destination holds the image that appeared');
  });

  await t.test('the lock is released: served without a reload, and its VM writes', async (t) => {
    await holder.stop();
    await until(async () => (await sources()).exports.some((e) => e.export === 'held'), 'held is open', 30_000, 50);
    t.same((await sources()).failed, [], 'nothing is waiting any more');
    const vm = await NbdClient.connect({ host: '127.0.0.1', port: nbdPort(daemon) }, { exportName: 'held' });
    t.teardown(() => vm.close().catch(() => undefined));
    const data = crypto.randomBytes(BS);
    await vm.write(3 * BS, data);
    await vm.flush();
    data.copy(heldContent, 3 * BS);
    t.ok(fs.readFileSync(held).equals(heldContent), 'the flushed write is in the image');
  });
});
