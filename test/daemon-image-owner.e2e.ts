/**
 * One image, one owner, between daemons: daemon A migrates into one image
 * and sources another as a tracked export, its VMs writing both through A's
 * NBD listener. A second daemon declaring either image (as a source export
 * or a migration), creating a migration into either, and a `ferry dest` on
 * either are refused with an error naming the image and A's pid; A keeps
 * serving, and every write its VMs flushed, before and after, is in the
 * images byte for byte.
 */
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { NbdClient } from '../src/nbd/client';
import type { SourcesReport } from '../src/daemon/daemon-sources';
import { freePort } from './helpers/ferry-daemon';
import { ctl, ferrydConfig, nbdPort, startFerryd, status, untilState } from './helpers/ferryd';
import { run } from './helpers/run';
import { tempDir, writePatternFile } from './helpers/temp-dir';
import { until } from './helpers/until';

const FERRY = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');
const DISK_BYTES = 2 << 20;
const BS = 4096;

t.test('a second daemon or destination cannot take a running daemon image', async (t) => {
  const dir = tempDir(t, 'ferryd-owner-');
  const sourced = path.join(dir, 'vm1.img'); // A sources it, tracked: its VM runs on A
  const sourcedContent = writePatternFile(sourced, DISK_BYTES, 21);
  const seed = path.join(dir, 'seed.img'); // what A's migration copies from (A's own read-only export)
  const migratedContent = writePatternFile(seed, DISK_BYTES, 22);
  const migrated = path.join(dir, 'm1-vda.img'); // A migrates into it

  const aDir = path.join(dir, 'a');
  fs.mkdirSync(aDir);
  const wirePort = await freePort();
  const wire = `127.0.0.1:${wirePort}`;
  const a = ferrydConfig(
    aDir,
    {},
    `[source]\nlisten = "${wire}"\ninsecure = true\n\n` +
      `[[source.export]]\nname = "vm1"\nimage = ${JSON.stringify(sourced)}\nwrites = "tracked"\n\n` +
      `[[source.export]]\nname = "seed"\nimage = ${JSON.stringify(seed)}\n`,
  );
  const daemonA = await startFerryd(t, a);
  const pidA = daemonA.child.pid!;
  // Slow, so that it is still copying while the others try; its VM runs here at once (cut over at start).
  await ctl(a, {
    cmd: 'create',
    spec: {
      name: 'm1',
      rate: 64 << 10,
      start: true,
      cutover: 'at-start',
      disk: [{ name: 'vda', source: `ferry://${wire}/seed`, image: migrated }],
    },
  });
  const vms = await Promise.all(
    ['vm1', 'm1/vda'].map(async (exportName) => {
      const vm = await NbdClient.connect({ host: '127.0.0.1', port: nbdPort(daemonA) }, { exportName });
      t.teardown(() => vm.close().catch(() => undefined));
      return vm;
    }),
  );
  const expected = [sourcedContent, migratedContent];
  const written: Array<{ which: number; block: number }> = [];
  const write = async (which: number, block: number): Promise<void> => {
    const data = crypto.randomBytes(BS);
    await vms[which].write(block * BS, data);
    await vms[which].flush();
    data.copy(expected[which], block * BS);
    written.push({ which, block });
  };
  for (const block of [2, 300]) for (const which of [0, 1]) await write(which, block);
  t.ok((await status(a, 'm1')).total.percent < 100, 'A is still migrating into its image');

  const holder = (image: string): RegExp =>
    new RegExp(`${image.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is in use by pid ${pidA}\\b`);

  await t.test('a second daemon: its exports and migrations on those images are refused', async (t) => {
    const bDir = path.join(dir, 'b');
    fs.mkdirSync(bDir);
    const b = ferrydConfig(
      bDir,
      {},
      `[source]\nlisten = "127.0.0.1:0"\ninsecure = true\nopen_retry_min_ms = 50\nopen_retry_max_ms = 200\n\n` +
        `[[source.export]]\nname = "vm1-again"\nimage = ${JSON.stringify(sourced)}\nwrites = "tracked"\n\n` +
        `[[source.export]]\nname = "m1-copy"\nimage = ${JSON.stringify(migrated)}\n`,
    );
    const daemonB = await startFerryd(t, b);
    t.equal(daemonB.serving.sourceExports, 0, 'B serves neither image');
    const sources = (await ctl(b, { cmd: 'sources' })) as unknown as SourcesReport;
    const reasons = Object.fromEntries(sources.failed.map((f) => [f.export, f.reason]));
    t.match(reasons['vm1-again'], holder(sourced), 'the tracked export names the image and A');
    t.match(reasons['m1-copy'], holder(migrated), 'the read-only export names the image and A');
    for (const image of [migrated, sourced])
      await t.rejects(
        ctl(b, {
          cmd: 'create',
          spec: { name: 'm2', disk: [{ name: 'vda', source: `ferry://${wire}/seed`, image }] },
        }),
        holder(image),
        `create into ${path.basename(image)} is refused naming A`,
      );
    // A keeps writing while B keeps trying its exports.
    await until(
      async () => ((await ctl(b, { cmd: 'sources' })) as unknown as SourcesReport).failed.every((f) => f.attempts >= 3),
      'B tried again',
      30_000,
      50,
    );
    for (const which of [0, 1]) await write(which, 301);
    await daemonB.stop();
  });

  await t.test('a ferry dest on either image is refused', async (t) => {
    for (const image of [migrated, sourced]) {
      const dest = await run(
        process.execPath,
        [
          ...[FERRY, 'dest', '--source', `ferry://${wire}/seed`, '--image', image],
          ...['--listen', '127.0.0.1:0', '--insecure', '--control', path.join(dir, 'x.sock')],
        ],
        { timeoutMs: 60_000 },
      );
      t.not(dest.code, 0, `${path.basename(image)}: the dest exits non-zero`);
      t.match(dest.stderr, holder(image), 'naming the image and A');
    }
  });

  t.equal(daemonA.child.exitCode, null, 'A is still running');
  for (const block of [3, 511]) for (const which of [0, 1]) await write(which, block);
  for (const { which, block } of written)
    t.same(await vms[which].read(block * BS, BS), expected[which].subarray(block * BS, (block + 1) * BS));
  const aSources = (await ctl(a, { cmd: 'sources' })) as unknown as SourcesReport;
  t.same(
    aSources.exports.map((e) => e.export),
    ['vm1', 'seed'],
    'A still serves its exports',
  );
  t.same(aSources.failed, []);

  await ctl(a, { cmd: 'rate', name: 'm1', bytesPerSecond: null });
  await untilState(a, 'm1', 'complete');
  await Promise.all(vms.map((vm) => vm.close()));
  t.equal(await daemonA.stop(), 0, 'A stops cleanly');
  t.ok(fs.readFileSync(sourced).equals(expected[0]), 'the sourced image holds every flushed write');
  t.ok(fs.readFileSync(migrated).equals(expected[1]), 'the migrated image holds the source and every flushed write');
});
