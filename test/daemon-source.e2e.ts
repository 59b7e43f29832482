/**
 * `ferry daemon` as a source: daemon A serves two images over its one
 * ferry-wire listener (PSK), their VMs writing through A's NBD listener; a
 * `ferry dest` and a second daemon copy them at once, the VMs write during
 * the copy, both cut over, and each final image equals its source with every
 * write, byte for byte. A wrong key and an unknown export name are refused
 * with a clear error; an export in use is not removed by a reload; A's
 * status and metrics show each export.
 */
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { NbdClient, NbdError } from '../src/nbd/client';
import { CodecPool } from '../src/pool';
import { readPsk } from '../src/wire/auth';
import type { SourcesReport } from '../src/daemon/daemon-sources';
import { ctlStatus, ferryCtl, freePort, startFerry } from './helpers/ferry-daemon';
import { ctl, ferrydConfig, nbdPort, startFerryd, status, untilState } from './helpers/ferryd';
import { run } from './helpers/run';
import { tempDir, writePatternFile } from './helpers/temp-dir';
import { until } from './helpers/until';
import { openWireUpstream } from './helpers/wire-source';

const FERRY = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');
const DISK_BYTES = 8 << 20;
const BS = 4096;

t.test('a daemon sources two images to a ferry dest and a daemon at once', async (t) => {
  const dir = tempDir(t, 'ferryd-source-');
  const key = path.join(dir, 'wire.psk');
  const other = path.join(dir, 'other.psk');
  for (const k of [key, other]) t.equal((await run(process.execPath, [FERRY, 'keygen', '--psk', k])).code, 0);
  const images = ['web1-vda', 'web2-vda'].map((name, i) => {
    const file = path.join(dir, `${name}.img`);
    return { name, file, content: writePatternFile(file, DISK_BYTES, 11 + i) };
  });

  // Daemon A: the source host. Both VMs run here: their writes go through A's NBD listener and are tracked.
  const aDir = path.join(dir, 'a');
  fs.mkdirSync(aDir);
  const metricsPort = await freePort();
  const sourceSection = (exports: typeof images): string =>
    `[source]\nlisten = "127.0.0.1:0"\npsk_file = ${JSON.stringify(key)}\n\n` +
    exports
      .map((i) => `[[source.export]]\nname = "${i.name}"\nimage = ${JSON.stringify(i.file)}\nwrites = "tracked"\n`)
      .join('\n');
  const a = ferrydConfig(aDir, { metrics: `127.0.0.1:${metricsPort}` }, sourceSection(images));
  const daemonA = await startFerryd(t, a);
  const wireAt = String(daemonA.serving.source);
  t.equal(daemonA.serving.sourceExports, 2, 'both exports are served at start');
  const url = (name: string): string => `ferry://${wireAt}/${name}`;

  const vms = await Promise.all(
    images.map(async (i) => {
      const vm = await NbdClient.connect({ host: '127.0.0.1', port: nbdPort(daemonA) }, { exportName: i.name });
      t.teardown(() => vm.close().catch(() => undefined));
      return vm;
    }),
  );
  /** The VM writes a block of fresh bytes (flushed); the expected image follows. */
  const vmWrite = async (which: number, block: number): Promise<void> => {
    const data = crypto.randomBytes(BS);
    await vms[which].write(block * BS, data);
    await vms[which].flush();
    data.copy(images[which].content, block * BS);
  };

  t.test('an unknown export name and a wrong key are refused, with the reason', async (t) => {
    const pool = new CodecPool({ workers: 1 });
    t.teardown(() => pool.close());
    const open = (u: string, file: string) =>
      openWireUpstream(u, { kind: 'psk', key: readPsk(file).key, source: file, openFile: false }, pool, {
        blockSize: BS,
        maxAttempts: 2,
      });
    await t.rejects(
      open(url('web3-vda'), key),
      /unknown export "web3-vda" \(this source serves "web1-vda", "web2-vda"\)/,
    );
    await t.rejects(open(url('web1-vda'), other), /the source refused the pre-shared key/);
    await daemonA.waitForLog('refused a connection that failed authentication');
  });

  // Destination 1: a ferry dest copying web1-vda, slowly (32 s for the image) until the VM has written.
  const destImage = path.join(dir, 'dest-web1.img');
  const destControl = path.join(dir, 'dest.sock');
  await startFerry(t, [
    ...['dest', '--source', url('web1-vda'), '--image', destImage, '--listen', '127.0.0.1:0'],
    ...['--control', destControl, '--psk-file', key, '--rate', '256k'],
  ]);
  // Destination 2: daemon B copying web2-vda as migration m2.
  const bDir = path.join(dir, 'b');
  fs.mkdirSync(bDir);
  const b = ferrydConfig(bDir, {}, '', { psk_file: key });
  await startFerryd(t, b);
  const bImage = path.join(bDir, 'web2-vda.img');
  await ctl(b, {
    cmd: 'create',
    spec: { name: 'm2', rate: 256 << 10, start: true, disk: [{ name: 'vda', source: url('web2-vda'), image: bImage }] },
  });

  // The VMs write while both copies run: blocks early and late in each image, some written twice.
  for (let round = 0; round < 3; round++)
    for (const which of [0, 1])
      for (const block of [round, 1000 + round * 7, 2047 - round, 1]) await vmWrite(which, block);
  const midCopy = (await ctlStatus(destControl)).blocksHeld;
  t.ok(midCopy < DISK_BYTES / BS, `the VM wrote while the ferry dest copied (${midCopy} blocks held)`);
  const midB = (await status(b, 'm2')).total.percent;
  t.ok(midB < 100, `the VM wrote while daemon B copied (${midB}% held)`);

  t.test('status: each export with its destinations and bytes sent', async (t) => {
    await until(
      async () => {
        const r = (await ctl(a, { cmd: 'sources' })) as unknown as SourcesReport;
        return r.exports.every((e) => e.destinationsConnected === 1 && e.bytesSent > 0);
      },
      'both exports have a destination and sent bytes',
      60_000,
      100,
    );
    const text = await ferryCtl(a.control, 'sources');
    t.equal(text.code, 0, text.stderr);
    t.match(text.stdout, /web1-vda\t.*web1-vda\.img\ttracked\t1 destination\(s\) connected/);
    const json = JSON.parse((await ferryCtl(a.control, 'sources', '--json')).stdout) as SourcesReport;
    t.same(
      json.exports.map((e) => [e.export, e.writes, e.sessions.length]),
      [
        ['web1-vda', 'tracked', 1],
        ['web2-vda', 'tracked', 1],
      ],
    );
    const list = await ctl(a, { cmd: 'list' });
    t.equal((list.sources as { exports: unknown[] }).exports.length, 2, 'list names the source exports');
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    t.match(metrics, /ferry_source_bytes_sent_total\{export="web1-vda"\} [1-9]/);
    t.match(metrics, /ferry_source_destinations_connected\{export="web2-vda"\} 1/);
  });

  t.test('a reload does not remove an export in use, and says why', async (t) => {
    fs.writeFileSync(
      a.config,
      fs.readFileSync(a.config, 'utf8').replace(/\[\[source\.export\]\][^[]*web2-vda[^[]*/, ''),
    );
    const answer = await ctl(a, { cmd: 'reload' });
    const sources = answer.sources as SourcesReport;
    t.same(
      sources.removalRefused.map((r) => r.export),
      ['web2-vda'],
      'the removal is refused while its destination and VM are connected',
    );
    t.match(
      sources.removalRefused[0].reason,
      /in use by (\d+ destination connection\(s\)|\d+ NBD client\(s\) \(its VM\))/,
    );
    t.equal(sources.exports.length, 2, 'both are still served');
  });

  // Both copies at full speed now; more writes once the ferry dest holds every block: still reported.
  t.equal((await ferryCtl(destControl, 'rate', 'off')).code, 0);
  await ctl(b, { cmd: 'rate', name: 'm2', bytesPerSecond: null });
  await until(async () => (await ctlStatus(destControl)).blocksHeld === DISK_BYTES / BS, 'dest copied', 120_000, 200);
  for (const which of [0, 1]) for (const block of [5, 1500]) await vmWrite(which, block);

  // Cutover: each destination asks the source; A fences that image and hands over its final write set.
  const cut = await ferryCtl(destControl, 'cutover');
  t.equal(cut.code, 0, cut.stderr);
  await ctl(b, { cmd: 'cutover', name: 'm2' });
  const refused = await vms[0].write(0, Buffer.alloc(BS, 1)).then(
    () => 'written',
    (e: NbdError) => e.errnoName,
  );
  t.equal(refused, 'EPERM', 'a fenced export refuses its VM');
  await until(async () => (await ctlStatus(destControl)).phase === 'complete', 'ferry dest complete', 120_000, 200);
  await untilState(b, 'm2', 'complete');
  t.equal((await status(b, 'm2')).state, 'complete');

  t.ok(fs.readFileSync(images[0].file).equals(images[0].content), 'the source image holds every VM write');
  t.ok(fs.readFileSync(destImage).equals(images[0].content), 'ferry dest: source content and every VM write');
  t.ok(fs.readFileSync(bImage).equals(images[1].content), 'daemon B: source content and every VM write');
  const after = (await ctl(a, { cmd: 'sources' })) as unknown as SourcesReport;
  t.same(
    after.exports.map((e) => [e.export, e.fenced, e.sessions.every((s) => s.cutover?.acked === true)]),
    [
      ['web1-vda', true, true],
      ['web2-vda', true, true],
    ],
    'both exports are fenced and their destinations acknowledged the final sets',
  );
});
