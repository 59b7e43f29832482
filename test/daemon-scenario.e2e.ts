/**
 * One `ferry daemon`, six migrations of two disks each from different
 * sources at once (one declared in the config file, the others created over
 * the control socket; ferry wire and plain NBD sources): one paused, one
 * rate-capped, one aborted before cutover, one cut over while the others
 * copy. Every final image is compared with its source.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { startFerry } from './helpers/ferry-daemon';
import { ctl, ferrydConfig, nbdPort, sha256, startFerryd, status, untilState } from './helpers/ferryd';
import { startNbdkit } from './helpers/nbdkit';
import { run } from './helpers/run';
import { tempDir, writePatternFile } from './helpers/temp-dir';
import { until } from './helpers/until';

const FERRY = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');
const DISK_BYTES = 4 << 20;

t.test('six migrations of two disks at once', async (t) => {
  const dir = tempDir(t, 'ferryd-scenario-');
  const sources = path.join(dir, 'sources');
  const images = path.join(dir, 'images');
  fs.mkdirSync(sources);
  fs.mkdirSync(images);
  const names = ['m1', 'm2', 'm3', 'm4', 'm5', 'm6'];
  let seed = 1;
  for (const m of names)
    for (const disk of ['vda', 'vdb']) {
      const file = path.join(sources, `${m}-${disk}.img`);
      writePatternFile(file, DISK_BYTES, seed++);
      // Half of every disk is zeros: a hole the copy may skip, which must read back as zeros.
      const fd = fs.openSync(file, 'r+');
      fs.writeSync(fd, Buffer.alloc(DISK_BYTES / 2), 0, DISK_BYTES / 2, DISK_BYTES / 4);
      fs.closeSync(fd);
    }
  const before = Object.fromEntries(fs.readdirSync(sources).map((f) => [f, sha256(path.join(sources, f))]));

  // m1..m5 from one nbdkit serving each file as its own export; m6 from two ferry sources over the wire.
  const nbdkitPort = await startNbdkit(t, ['file', `dir=${sources}`]);
  const nbd = (m: string, disk: string): string => `nbd://127.0.0.1:${nbdkitPort}/${m}-${disk}.img`;
  const wireSources = await Promise.all(
    ['vda', 'vdb'].map((disk) =>
      startFerry(t, [
        'source',
        '--image',
        path.join(sources, `m6-${disk}.img`),
        '--listen',
        '127.0.0.1:0',
        '--insecure',
      ]),
    ),
  );
  const wire = (i: number, disk: string): string => `ferry://${String(wireSources[i].serving.address)}/m6-${disk}.img`;
  const diskSpec = (m: string, url: (disk: string) => string) =>
    ['vda', 'vdb'].map((disk) => ({ name: disk, source: url(disk), image: path.join(images, `${m}-${disk}.img`) }));

  // m1 is declared in the config file: created and started (cut over at start) when the daemon starts.
  const declared =
    `[[migration]]\nname = "m1"\nstart = true\ncutover = "at-start"\n` +
    diskSpec('m1', (d) => nbd('m1', d))
      .map((d) => `[[migration.disk]]\nname = "${d.name}"\nsource = "${d.source}"\nimage = "${d.image}"\n`)
      .join('');
  const d = ferrydConfig(dir, {}, declared);
  const daemon = await startFerryd(t, d);
  t.equal((await status(d, 'm1')).stage, 'cutover', 'the declared migration exists at start');

  // m2 is paused before it starts copying; m3 is capped at 1 MiB/s; m4 and m5 wait for a manual cutover.
  await ctl(d, { cmd: 'create', spec: { name: 'm2', disk: diskSpec('m2', (x) => nbd('m2', x)) } });
  await ctl(d, { cmd: 'pause', name: 'm2' });
  await ctl(d, { cmd: 'cutover', name: 'm2' });
  const capped = await ctl(d, {
    cmd: 'create',
    spec: { name: 'm3', rate: 1 << 20, start: true, cutover: 'at-start', disk: diskSpec('m3', (x) => nbd('m3', x)) },
  });
  t.equal(capped.allocatedRate, 1 << 20, 'the cap is its budget');
  for (const m of ['m4', 'm5']) {
    await ctl(d, { cmd: 'create', spec: { name: m, disk: diskSpec(m, (x) => nbd(m, x)) } });
    await ctl(d, { cmd: 'start', name: m });
  }
  // create is idempotent: the same spec again is the same migration; another spec under that name is refused.
  const again = await ctl(d, { cmd: 'create', spec: { name: 'm4', disk: diskSpec('m4', (x) => nbd('m4', x)) } });
  t.equal(again.name, 'm4');
  await t.rejects(
    ctl(d, { cmd: 'create', spec: { name: 'm4', disk: diskSpec('m4', (x) => nbd('m5', x)) } }),
    /exists with other disks/,
  );
  await t.rejects(
    ctl(d, { cmd: 'create', spec: { name: 'm7', disk: diskSpec('m4', (x) => nbd('m4', x)) } }),
    /belongs to migration m4/,
  );
  const m3 = await status(d, 'm3');
  t.same(
    m3.disks.map((x) => x.status?.rateLimitBytesPerSecond),
    [1 << 19, 1 << 19],
    "the migration's rate is shared by its two disks",
  );
  // m6 through the ferry CLI: create with --json, the disks over the wire.
  const created = await run(process.execPath, [
    FERRY,
    'ctl',
    '--control',
    d.control,
    'create',
    'm6',
    ...diskSpec('m6', (x) => wire(x === 'vda' ? 0 : 1, x)).flatMap((x) => [
      '--disk',
      `name=${x.name},source=${x.source},image=${x.image}`,
    ]),
    '--start',
    '--cutover-at-start',
    '--json',
  ]);
  t.equal(created.code, 0, created.stderr);
  t.equal((JSON.parse(created.stdout) as { name: string }).name, 'm6');

  // Every disk of every migration behind the one NBD listener.
  const listed = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${nbdPort(daemon)}`]);
  const exportNames = (JSON.parse(listed.stdout) as { exports: Array<{ 'export-name': string }> }).exports
    .map((e) => e['export-name'])
    .sort();
  t.same(exportNames, names.flatMap((m) => [`${m}/vda`, `${m}/vdb`]).sort());

  // m4 is aborted before its cutover: images and state go, its sources stay as they were.
  await ctl(d, { cmd: 'abort', name: 'm4' });
  t.notOk(fs.existsSync(path.join(images, 'm4-vda.img')) || fs.existsSync(path.join(images, 'm4-vdb.img')));
  t.notOk(fs.existsSync(path.join(d.stateDir, 'migrations', 'm4')));
  await t.rejects(status(d, 'm4'), /no migration named "m4": it was aborted at/);
  const abortCli = await run(process.execPath, [FERRY, 'ctl', '--control', d.control, 'abort', 'm4', '--json']);
  t.equal(abortCli.code, 0, 'abort again: the same yes');
  t.match(JSON.parse(abortCli.stdout), { name: 'm4', state: 'aborted' });
  await t.rejects(ctl(d, { cmd: 'start', name: 'm4' }), /it was aborted/);

  // m5 is cut over while the others copy; both its disks at once.
  const m5 = (await ctl(d, { cmd: 'cutover', name: 'm5' })) as unknown as {
    disks: Array<{ status: { phase: string } }>;
  };
  t.ok(
    m5.disks.every((x) => ['post-copy', 'complete'].includes(x.status.phase)),
    'every disk of m5 cut over',
  );
  await t.rejects(ctl(d, { cmd: 'abort', name: 'm5' }), /cutover has happened/);

  // The paused migration holds nothing more while the others finish; resumed, it finishes too.
  const heldPaused = (await status(d, 'm2')).total.bytesHeld;
  for (const m of ['m1', 'm5', 'm6']) await untilState(d, m, 'complete');
  const m2 = await status(d, 'm2');
  t.equal(m2.state, 'paused');
  t.equal(m2.total.bytesHeld, heldPaused, 'a paused migration copies nothing in the background');
  await ctl(d, { cmd: 'resume', name: 'm2' });
  await ctl(d, { cmd: 'rate', name: 'm3', bytesPerSecond: null });
  for (const m of ['m2', 'm3']) await untilState(d, m, 'complete');

  const list = (await ctl(d, { cmd: 'list' })) as { migrations: Array<{ name: string; state: string }> };
  t.same(
    list.migrations.map((m) => [m.name, m.state]),
    ['m1', 'm2', 'm3', 'm5', 'm6'].map((m) => [m, 'complete']),
  );
  for (const m of ['m1', 'm2', 'm3', 'm5', 'm6'])
    for (const disk of ['vda', 'vdb'])
      t.equal(sha256(path.join(images, `${m}-${disk}.img`)), before[`${m}-${disk}.img`], `${m} ${disk} is its source`);
  t.same(
    Object.fromEntries(fs.readdirSync(sources).map((f) => [f, sha256(path.join(sources, f))])),
    before,
    'no source was written',
  );

  // forget: the record goes, the images stay; the declared m1 is not created again by a reload.
  await ctl(d, { cmd: 'forget', name: 'm1' });
  await t.rejects(status(d, 'm1'), /no migration named/);
  t.ok(fs.existsSync(path.join(images, 'm1-vda.img')));
  daemon.child.kill('SIGHUP');
  await daemon.waitForLog('config reloaded');
  await t.rejects(status(d, 'm1'), /no migration named/, 'a forgotten declared migration stays forgotten');

  // Metrics and logs carry the migration's name.
  t.match(daemon.stderr(), /"migration":"m5","disk":"vdb"/);
  await until(() => daemon.logCount('cutover done on every disk') >= 4, 'cutover logs', 10_000);
});
