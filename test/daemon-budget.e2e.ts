/**
 * The host budget of `ferry daemon` as operators drive it: copy slots and
 * max_rate from the config file, weights, a reload (SIGHUP) that changes
 * them at once, and metrics labelled by migration and disk.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { freePort } from './helpers/ferry-daemon';
import { ctl, ferrydConfig, sha256, startFerryd, status, untilState } from './helpers/ferryd';
import { startNbdkit } from './helpers/nbdkit';
import { tempDir, writePatternFile } from './helpers/temp-dir';

t.test('copy slots, max_rate by weight, SIGHUP, metrics', async (t) => {
  const dir = tempDir(t, 'ferryd-budget-');
  const names = ['a', 'b', 'c'];
  for (const [i, m] of names.entries()) writePatternFile(path.join(dir, `${m}.img`), 8 << 20, 40 + i);
  const port = await startNbdkit(t, ['file', `dir=${dir}`]);
  const metricsPort = await freePort();
  const keys = { max_concurrent_copies: 1, max_rate: 256 << 10, metrics: `127.0.0.1:${metricsPort}` };
  const d = ferrydConfig(dir, keys);
  const daemon = await startFerryd(t, d);
  for (const [i, m] of names.entries())
    await ctl(d, {
      cmd: 'create',
      spec: {
        name: m,
        weight: i === 1 ? 3 : 1,
        start: true,
        cutover: 'at-start',
        disk: [{ name: 'vda', source: `nbd://127.0.0.1:${port}/${m}.img`, image: path.join(dir, `${m}-dest.img`) }],
      },
    });
  const first = await Promise.all(names.map((m) => status(d, m)));
  t.same(
    first.map((s) => [s.queued, s.allocatedRate]),
    [
      [false, 256 << 10],
      [true, null],
      [true, null],
    ],
    'one copy slot: the first migration copies at the whole max_rate, the others wait',
  );

  // A reload opens every slot and raises the cap: shared by weight 1:3:1, at once.
  ferrydConfig(dir, { ...keys, max_concurrent_copies: 0, max_rate: 5 << 20 });
  daemon.child.kill('SIGHUP');
  await daemon.waitForLog('config reloaded');
  const second = await Promise.all(names.map((m) => status(d, m)));
  t.same(
    second.map((s) => [s.queued, s.allocatedRate]),
    [
      [false, 1 << 20],
      [false, 3 << 20],
      [false, 1 << 20],
    ],
  );
  t.same(
    second.map((s) => s.disks[0].status?.rateLimitBytesPerSecond),
    [1 << 20, 3 << 20, 1 << 20],
    "each disk's copy runs at its share",
  );

  // A config with an error is not applied; the running settings stay.
  fs.writeFileSync(d.config, fs.readFileSync(d.config, 'utf8').replace('max_rate =', 'max_rat ='));
  await t.rejects(ctl(d, { cmd: 'reload' }), /config not reloaded: config: unknown key daemon.max_rat/);
  t.equal((await status(d, 'b')).allocatedRate, 3 << 20);

  const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  t.match(metrics, /ferry_blocks_total\{migration="a",disk="vda"\} 2048/);
  t.match(metrics, /ferry_migration_allocated_rate_bytes_per_second\{migration="b"\} 3145728/);
  t.match(metrics, /ferry_migration_state\{migration="c",state="post-copy"\} 1/);

  for (const m of names) await untilState(d, m, 'complete');
  for (const m of names) t.equal(sha256(path.join(dir, `${m}-dest.img`)), sha256(path.join(dir, `${m}.img`)));
});
