/**
 * `ferry ctl source-cutover NAME`: the source host ends a tracked export's
 * migration itself. Its VM's writes are refused from then on, the final
 * write set goes to the destination, which becomes the authority and ends
 * with every write the VM made; asking again answers the same. A read-only
 * export has nothing to fence and is refused, saying so.
 */
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { NbdClient, NbdError } from '../src/nbd/client';
import type { SourceImageStatus } from '../src/wire/source-image';
import { ctlStatus, ferryCtl, startFerry } from './helpers/ferry-daemon';
import { ferrydConfig, nbdPort, startFerryd } from './helpers/ferryd';
import { tempDir, writePatternFile } from './helpers/temp-dir';
import { until } from './helpers/until';

const DISK_BYTES = 4 << 20;
const BS = 4096;

t.test('a source-initiated cutover of a tracked export', async (t) => {
  const dir = tempDir(t, 'ferryd-source-cutover-');
  const vmImage = path.join(dir, 'vm.img');
  const content = writePatternFile(vmImage, DISK_BYTES, 5);
  const roImage = path.join(dir, 'ro.img');
  writePatternFile(roImage, DISK_BYTES, 6);
  const d = ferrydConfig(
    dir,
    {},
    `[source]\nlisten = "127.0.0.1:0"\ninsecure = true\n\n` +
      `[[source.export]]\nname = "vm"\nimage = ${JSON.stringify(vmImage)}\nwrites = "tracked"\n\n` +
      `[[source.export]]\nname = "ro"\nimage = ${JSON.stringify(roImage)}\n`,
  );
  const daemon = await startFerryd(t, d);
  const vm = await NbdClient.connect({ host: '127.0.0.1', port: nbdPort(daemon) }, { exportName: 'vm' });
  t.teardown(() => vm.close().catch(() => undefined));

  const destImage = path.join(dir, 'dest.img');
  const destControl = path.join(dir, 'dest.sock');
  await startFerry(t, [
    ...['dest', '--source', `ferry://${String(daemon.serving.source)}/vm`, '--image', destImage],
    ...['--listen', '127.0.0.1:0', '--control', destControl, '--insecure', '--rate', '32k'],
  ]);
  await until(async () => (await ctlStatus(destControl)).blocksHeld > 0, 'the destination copies', 60_000, 100);
  for (const block of [0, 9, 700, 1023]) {
    const data = crypto.randomBytes(BS);
    await vm.write(block * BS, data);
    await vm.flush();
    data.copy(content, block * BS);
  }
  t.equal((await ctlStatus(destControl)).phase, 'warming', 'the destination warms until the cutover');

  const first = await ferryCtl(d.control, 'source-cutover', 'vm', '--json');
  t.equal(first.code, 0, first.stderr);
  const status = JSON.parse(first.stdout) as SourceImageStatus;
  t.equal(status.fenced, true, 'the export is fenced');
  t.equal(status.sessions.length, 1);
  t.ok(status.sessions[0].cutover, 'the session has its final write set');
  const again = JSON.parse((await ferryCtl(d.control, 'source-cutover', 'vm', '--json')).stdout) as SourceImageStatus;
  t.equal(again.sessions[0].cutover?.seq, status.sessions[0].cutover?.seq, 'asking again gives the same set');
  const text = await ferryCtl(d.control, 'source-cutover', 'vm');
  t.match(
    text.stdout,
    /^vm: fenced; its VM's writes are refused from now on\n {2}session \S+: final write set of \d+ range/,
  );

  const refused = await vm.write(0, Buffer.alloc(BS, 1)).then(
    () => 'written',
    (e: NbdError) => e.errnoName,
  );
  t.equal(refused, 'EPERM', "the VM's writes are refused after the source's cutover");
  await until(
    async () => (await ctlStatus(destControl)).phase !== 'warming',
    'the destination took the cutover',
    60_000,
    100,
  );

  t.equal((await ferryCtl(destControl, 'rate', 'off')).code, 0);
  await until(async () => (await ctlStatus(destControl)).phase === 'complete', 'the copy is complete', 120_000, 100);
  t.ok(fs.readFileSync(destImage).equals(content), 'the destination holds the image with every VM write');
  const unfence = await ferryCtl(d.control, 'source-unfence', 'vm');
  t.not(unfence.code, 0, 'and the export cannot be given back to its VM');
  t.match(unfence.stderr, /acknowledged the cutover and is the authority now/);

  const ro = await ferryCtl(d.control, 'source-cutover', 'ro');
  t.equal(ro.code, 1);
  t.match(ro.stderr, /source-cutover ro: source export "ro" is read-only: nothing here writes its image/);
  const unknown = await ferryCtl(d.control, 'source-cutover', 'nope', '--json');
  t.equal(unknown.code, 1);
  t.match(unknown.stderr, /no source export named "nope"/);
});
